"""Where a source image is backed up: the naming rules, as one pure function.

The name must be readable by a person (`localhost:5000/nginx:1.21.4-alpine` for
`nginx:1.21.4-alpine`), valid for every registry and Docker, and injective: two
different source repositories never share a backup repository, or one image
would overwrite another.

Rules, for a backup location `<registry>[/<prefix>]` (`IMAGE_CLONER_REGISTRY`):

1. Docker Hub images keep their short path:
   `nginx:1.21.4-alpine` → `<registry>/<prefix>/nginx:1.21.4-alpine`,
   `bitnami/redis:7` → `<registry>/<prefix>/bitnami/redis:7`.
2. Images from any other registry get the source host as the first path
   component: `quay.io/org/app:1` → `<registry>/<prefix>/quay.io/org/app:1`.
   The host is made a valid path component: lowercase; `host:port` →
   `host_port` (`myreg.local:5001` → `myreg.local_5001`); an IPv6 host →
   `ipv6_` + its fully written-out address with `-` for `:` (+ `_port`),
   `[::1]:5000` → `ipv6_0000-0000-0000-0000-0000-0000-0000-0001_5000`.
3. A Docker Hub image whose first path component could be mistaken for such a
   host component (it contains `.` or `_`, or is `localhost`) goes under
   `docker.io/`: `docker.io/foo.bar/app` → `<registry>/<prefix>/docker.io/foo.bar/app`.
4. Tags and digests are kept as they are (`nginx@sha256:…` → `…/nginx@sha256:…`).

Why this is injective: a host name never contains `_`, so `_` only appears in a
host component we made, and never in a way two hosts can share; every host
component contains `.` or `_` or is `localhost`, which rule 3 keeps away from
Docker Hub paths; and a registry that is neither Docker Hub nor written with a
dot, a port or `localhost` is refused (Docker only sees one there when it has
uppercase letters, and lowercased it would read as a Docker Hub namespace).
A target path longer than 255 characters is refused as well.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from image_cloner.oci.references import (
    DOCKER_HUB,
    MAX_PATH_LENGTH,
    InvalidReference,
    Reference,
    Registry,
    Repository,
    looks_like_host,
)

__all__ = ["BackupLocation", "is_backup", "parse_backup_location", "target_for"]

_LOCALHOST = "localhost"


@dataclass(frozen=True)
class BackupLocation:
    """The registry (and optional path prefix) that backups go to."""

    registry: Registry
    prefix: str = ""
    """Path every backup repository starts with, without slashes at either end; may be empty."""

    def __post_init__(self) -> None:
        problem = _location_problem(self.registry, self.prefix)
        if problem:
            raise InvalidReference(f"invalid backup location {str(self)!r}: {problem}")

    def __str__(self) -> str:
        return f"{self.registry.host}/{self.prefix}" if self.prefix else self.registry.host


def _location_problem(registry: Registry, prefix: str) -> str | None:
    host = registry.host
    # Lowercased: a host that is one only by its uppercase letters would not survive
    # normalisation (see the module docstring).
    if not looks_like_host(host.lower()):
        return (
            f"registry host {host!r} would be read as a Docker Hub namespace;"
            " give it a dot, a port, or use localhost"
        )
    if registry.host == DOCKER_HUB and not prefix:
        return "Docker Hub needs a namespace to push to, e.g. docker.io/<your-namespace>"
    if prefix:
        try:
            # Any registry but Docker Hub validates a path without adding `library/`.
            Repository(Registry(_LOCALHOST), prefix)
        except InvalidReference as error:
            return f"path prefix: {str(error).partition(': ')[2]}"
    return None


def parse_backup_location(text: str) -> BackupLocation:
    """Read `IMAGE_CLONER_REGISTRY`: `localhost:5000` or `registry.example.com/backup`."""

    def invalid(reason: str) -> InvalidReference:
        return InvalidReference(f"invalid backup location {text!r}: {reason}")

    if not text:
        raise invalid("it is empty")
    if "://" in text:
        raise invalid(
            "give a registry host and optional path (registry.example.com/backup), not a URL"
        )
    if "@" in text:
        raise invalid("a backup location takes no digest")
    host, _, prefix = text.removesuffix("/").partition("/")
    if ":" in prefix:
        raise invalid("a backup location takes no tag")
    try:
        registry = Registry(host)
    except InvalidReference as error:
        raise invalid(str(error)) from None
    problem = _location_problem(registry, prefix)
    if problem:
        raise invalid(problem)
    return BackupLocation(registry, prefix)


def _host_component(registry: Registry) -> str:
    """The source host as one valid, unambiguous path component."""
    hostname = registry.hostname
    port = registry.host[len(hostname) + 1 :]
    if hostname.startswith("["):
        exploded = ipaddress.IPv6Address(hostname[1:-1]).exploded
        name = "ipv6_" + exploded.replace(":", "-")
    else:
        name = hostname.lower()
        if not port and not looks_like_host(name):
            raise InvalidReference(
                f"cannot name a backup for registry host {registry.host!r}: a host without"
                " a dot or port would read as a Docker Hub namespace once lowercased"
            )
    return f"{name}_{port}" if port else name


def _source_path(repository: Repository) -> str:
    """The source's part of the backup path (rules 1-3 of the module docstring)."""
    if repository.registry.host != DOCKER_HUB:
        return f"{_host_component(repository.registry)}/{repository.path}"
    short = repository.familiar
    if _could_be_host_component(short.partition("/")[0]):
        return f"{DOCKER_HUB}/{short}"
    return short


def _could_be_host_component(component: str) -> bool:
    """Rule 3: could this Docker Hub path component be mistaken for a host component that
    rule 2 makes? Docker's host test plus `_`, which rule 2 puts in for a port (`host_5000`);
    Docker itself never reads `_` as a host sign, hence two rules, not one."""
    return looks_like_host(component) or "_" in component


def target_for(source: Reference, backup: BackupLocation) -> Reference:
    """The backup reference for `source`: same tag and digest, in the backup location."""
    source_path = _source_path(source.repository)
    path = f"{backup.prefix}/{source_path}" if backup.prefix else source_path
    if len(path) > MAX_PATH_LENGTH:
        raise InvalidReference(
            f"cannot name a backup for {source.name!r}: its repository path would be"
            f" {len(path)} characters long, more than {MAX_PATH_LENGTH}"
        )
    return Reference(Repository(backup.registry, path), source.tag, source.digest)


def is_backup(ref: Reference, backup: BackupLocation) -> bool:
    """True when `ref` already points into the backup location (same host, under the prefix)."""
    repository = ref.repository
    if repository.registry != backup.registry:
        return False
    return not backup.prefix or repository.path.startswith(backup.prefix + "/")
