"""Image references, parsed and normalised the way Docker and Kubernetes read them.

A workload says `nginx:1.21.4-alpine`; the registry API needs `docker.io`,
`library/nginx` and `1.21.4-alpine`. Getting this wrong copies the wrong image
or writes a name back into a workload that Docker reads differently, so we follow
the grammar of distribution's `reference` package (`ParseNormalizedNamed` plus
the default tag) to the letter:

    reference  := name [ ":" tag ] [ "@" digest ]
    name       := [ host [ ":" port ] "/" ] path
    host       := domain-name | "[" IPv6 "]"      ; the first component is a host only
                                                   ; if it has "." or ":", is "localhost",
                                                   ; or has uppercase letters
    path       := component [ "/" component ]*    ; lowercase, 255 characters at most
    component  := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
    tag        := [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
    digest     := algorithm ":" hex               ; sha256 (64), sha384 (96), sha512 (128)

Defaults: registry `docker.io` (`index.docker.io` is the same), `library/` before
single-component Docker Hub names, tag `latest` when neither tag nor digest is
given. With `name:tag@digest` the digest is what gets fetched; the tag is kept.

Two deliberate additions to Docker's rules: registry hosts are lowercased (DNS
is case-insensitive, and credentials, mirrors and backup names must match
however the user spelt the host; IPv6 addresses get their compressed form), and
an IPv6 host must be a real address and a port must be 1-65535, so nonsense
fails here rather than deep in a connection.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field, replace

__all__ = [
    "DEFAULT_TAG",
    "DOCKER_HUB",
    "DOCKER_HUB_API",
    "MAX_PATH_LENGTH",
    "InvalidReference",
    "Reference",
    "Registry",
    "Repository",
    "digest_problem",
    "looks_like_host",
    "parse_digest",
    "parse_reference",
]

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
DEFAULT_TAG = "latest"
MAX_PATH_LENGTH = 255
"""Longest repository path (the name without its host) a registry accepts."""

_LEGACY_DOCKER_HUB = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
_LOCALHOST = "localhost"
_DIGEST_HEX_LENGTHS = {"sha256": 64, "sha384": 96, "sha512": 128}

_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST_RE = re.compile(
    rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?", re.ASCII
)
_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*", re.ASCII)
_TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", re.ASCII)
_ALGORITHM_RE = re.compile(r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*", re.ASCII)
_HEX_RE = re.compile(r"[0-9a-fA-F]+", re.ASCII)
_IMAGE_ID_RE = re.compile(r"[a-f0-9]{64}", re.ASCII)


class InvalidReference(ValueError):
    """A reference, host, tag or digest that does not follow the grammar; the message says why."""


def _shown(text: str) -> str:
    """`text` quoted for an error message, cut short: messages end up in Events and logs."""
    return repr(text if len(text) <= 120 else text[:100] + "…")


def looks_like_host(component: str) -> bool:
    """Docker's test for "is this first component a registry host or a Docker Hub namespace":
    `localhost`, or a dot, a port or an uppercase letter in it."""
    return (
        component == _LOCALHOST
        or "." in component
        or ":" in component
        or component.lower() != component
    )


def _split_port(host: str) -> tuple[str, str | None]:
    if host.startswith("["):
        end = host.find("]")
        rest = host[end + 1 :]
        return host[: end + 1], (rest[1:] if rest else None)
    hostname, colon, port = host.partition(":")
    return hostname, (port if colon else None)


def _host_problem(host: str) -> str | None:
    if not _HOST_RE.fullmatch(host):
        return "not a host name, IPv4 address or [IPv6] address with an optional :port"
    hostname, port = _split_port(host)
    # len() first: int() of a thousand digits is slow and of 4300 refused.
    if port is not None and (len(port) > 5 or not 0 < int(port) <= 65535):
        return f"port {port} is outside 1-65535"
    if hostname.startswith("["):
        try:
            ipaddress.IPv6Address(hostname[1:-1])
        except ValueError:
            return f"{hostname} is not an IPv6 address"
    return None


def _normalise_host(host: str) -> str:
    lowered = host.lower()
    if lowered == _LEGACY_DOCKER_HUB:
        return DOCKER_HUB
    if lowered.startswith("["):
        # One spelling per address, so [0:0::1] and [::1] are the same registry.
        hostname, port = _split_port(lowered)
        address = ipaddress.IPv6Address(hostname[1:-1]).compressed
        return f"[{address}]" + (f":{port}" if port is not None else "")
    # A single uppercase label ("Foo/bar") is a host only because of its case;
    # lowercasing it would turn it into a Docker Hub namespace.
    return lowered if looks_like_host(lowered) else host


def _path_problem(path: str) -> str | None:
    if not path:
        return "repository path is missing"
    for component in path.split("/"):
        if not component:
            return "repository path has an empty component (a leading, trailing or double '/')"
        if not _COMPONENT_RE.fullmatch(component):
            if _COMPONENT_RE.fullmatch(component.lower()):
                return "repository name must be lowercase"
            return (
                f"invalid path component {_shown(component)}: use lowercase letters and digits,"
                " joined by '.', '_', '__' or dashes"
            )
    if len(path) > MAX_PATH_LENGTH:
        return f"repository name must not be more than {MAX_PATH_LENGTH} characters"
    return None


def _tag_problem(tag: str) -> str | None:
    if not tag:
        return "tag is empty"
    if len(tag) > 128:
        return f"tag must not be more than 128 characters (has {len(tag)})"
    if not _TAG_RE.fullmatch(tag):
        return (
            f"invalid tag {_shown(tag)}: use letters, digits, '_', '.' and '-',"
            " not starting with '.' or '-'"
        )
    return None


def digest_problem(digest: str) -> str | None:
    """Why `digest` is not a well-formed sha256/384/512 digest (lowercase hex of the right
    length), or None. The one digest rule; callers raise the error that fits their input."""
    algorithm, colon, encoded = digest.partition(":")
    if not colon or not _ALGORITHM_RE.fullmatch(algorithm) or not encoded:
        return f"invalid digest {_shown(digest)}: expected '<algorithm>:<hex>', e.g. 'sha256:…'"
    if not _HEX_RE.fullmatch(encoded):
        return f"invalid digest {_shown(digest)}: the value after ':' must be hexadecimal"
    expected = _DIGEST_HEX_LENGTHS.get(algorithm)
    if expected is None:
        supported = ", ".join(_DIGEST_HEX_LENGTHS)
        return f"unsupported digest algorithm {_shown(algorithm)} (supported: {supported})"
    if len(encoded) != expected:
        return f"a {algorithm} digest has {expected} hex characters, not {len(encoded)}"
    if encoded != encoded.lower():
        return "digest hex must be lowercase"
    return None


def _split_docker_domain(text: str) -> tuple[str, str]:
    """Split `text` into host and the rest (path, tag, digest), with Docker's defaults."""
    first, slash, rest = text.partition("/")
    if not slash or not looks_like_host(first):
        host, rest = DOCKER_HUB, text
    elif first == _LEGACY_DOCKER_HUB:
        host = DOCKER_HUB
    else:
        host = first
    if host == DOCKER_HUB and "/" not in rest:
        rest = _OFFICIAL_PREFIX + rest
    return host, rest


@dataclass(frozen=True)
class Registry:
    """A registry host as references spell it: `docker.io`, `localhost:5000`, `[::1]:5000`."""

    host: str

    def __post_init__(self) -> None:
        problem = _host_problem(self.host)
        if problem:
            raise InvalidReference(f"invalid registry host {_shown(self.host)}: {problem}")
        object.__setattr__(self, "host", _normalise_host(self.host))

    @property
    def api_host(self) -> str:
        """Where the registry API answers: Docker Hub's names and its API host differ."""
        return DOCKER_HUB_API if self.host == DOCKER_HUB else self.host

    @property
    def hostname(self) -> str:
        """The host without its port (IPv6 keeps its brackets, as in a URL)."""
        return _split_port(self.host)[0]

    @property
    def port(self) -> int | None:
        port = _split_port(self.host)[1]
        return int(port) if port is not None else None

    @property
    def is_loopback(self) -> bool:
        """localhost, 127.0.0.0/8 or ::1, on any port: Docker allows plain HTTP to these."""
        hostname = self.hostname.strip("[]")
        if hostname == _LOCALHOST:
            return True
        try:
            return ipaddress.ip_address(hostname).is_loopback
        except ValueError:
            return False

    def __str__(self) -> str:
        return self.host


@dataclass(frozen=True)
class Repository:
    """A repository in a registry; `path` is what goes into `/v2/<path>/...`.

    On Docker Hub a single-component path gets `library/` in front, as when parsed.
    """

    registry: Registry
    path: str

    def __post_init__(self) -> None:
        path = self.path
        if self.registry.host == DOCKER_HUB and "/" not in path:
            path = _OFFICIAL_PREFIX + path
        problem = _path_problem(path)
        if problem:
            raise InvalidReference(f"invalid repository {_shown(self.path)}: {problem}")
        object.__setattr__(self, "path", path)

    @property
    def name(self) -> str:
        """Fully qualified: `docker.io/library/nginx`."""
        return f"{self.registry.host}/{self.path}"

    @property
    def familiar(self) -> str:
        """As Docker shows it: `nginx`, `bitnami/redis`, `localhost:5000/nginx`."""
        if self.registry.host != DOCKER_HUB:
            return self.name
        short = self.path.removeprefix(_OFFICIAL_PREFIX)
        return short if "/" not in short else self.path

    def __str__(self) -> str:
        return self.familiar


@dataclass(frozen=True)
class Reference:
    """An image: a repository plus a tag, a digest, or both (then the digest is fetched)."""

    repository: Repository
    tag: str | None = None
    """`latest` when neither tag nor digest was given; None only for `name@digest`."""
    digest: str | None = None
    text: str | None = field(default=None, compare=False, repr=False)
    """The text this was parsed from, given back by `str()`; None when built in code."""

    def __post_init__(self) -> None:
        if self.tag is None and self.digest is None:
            object.__setattr__(self, "tag", DEFAULT_TAG)
        problem = (_tag_problem(self.tag) if self.tag is not None else None) or (
            digest_problem(self.digest) if self.digest is not None else None
        )
        if problem:
            raise InvalidReference(f"invalid reference {self.repository.name}: {problem}")

    @property
    def identifier(self) -> str:
        """What goes into `/v2/<path>/manifests/<identifier>`: the digest if any, else the tag."""
        if self.digest is not None:
            return self.digest
        assert self.tag is not None  # __post_init__ guarantees a tag or a digest
        return self.tag

    @property
    def name(self) -> str:
        """Fully qualified: `docker.io/library/nginx:1.21.4-alpine[@sha256:…]`."""
        return self.repository.name + self._suffix()

    @property
    def familiar(self) -> str:
        """As Docker shows it: `nginx:1.21.4-alpine`, `localhost:5000/nginx:1.21.4-alpine`."""
        return self.repository.familiar + self._suffix()

    def with_digest(self, digest: str) -> Reference:
        """The same repository and tag, pinned to `digest`."""
        return replace(self, digest=parse_digest(digest), text=None)

    def with_tag(self, tag: str) -> Reference:
        """The same repository (and digest, if any) under `tag`."""
        return replace(self, tag=tag, text=None)

    def _suffix(self) -> str:
        tag = f":{self.tag}" if self.tag is not None else ""
        digest = f"@{self.digest}" if self.digest is not None else ""
        return tag + digest

    def __str__(self) -> str:
        return self.text if self.text is not None else self.familiar

    def __repr__(self) -> str:
        return f"Reference({self.name!r})"


def parse_digest(text: str) -> str:
    """Check `algorithm:hex` (sha256, sha384 or sha512, lowercase hex of the right length)."""
    problem = digest_problem(text)
    if problem:
        raise InvalidReference(problem)
    return text


def parse_reference(text: str) -> Reference:
    """Parse an image reference as `docker pull` and the kubelet do; see the module docstring."""

    def invalid(reason: str) -> InvalidReference:
        return InvalidReference(f"invalid reference {_shown(text)}: {reason}")

    if not text:
        raise invalid("reference is empty")
    if _IMAGE_ID_RE.fullmatch(text):
        raise invalid("a 64-character hex string is an image ID, it cannot be a repository name")
    host, rest = _split_docker_domain(text)
    name_tag, at, digest = rest.partition("@")
    path, colon, tag = name_tag.partition(":")
    host_problem = _host_problem(host)
    if host_problem:
        raise invalid(f"invalid registry host {_shown(host)}: {host_problem}")
    problem = (
        _path_problem(path)
        or (_tag_problem(tag) if colon else None)
        or (digest_problem(digest) if at else None)
    )
    if problem:
        raise invalid(problem)
    return Reference(
        Repository(Registry(host), path),
        tag if colon else None,
        digest if at else None,
        text=text,
    )
