"""Which docker-config entries serve an image: the kubelet's keyring rules, ported.

A `.dockerconfigjson` / `.dockercfg` Secret, a Docker `config.json`, a containers
`auth.json` and a credential provider's `auth` map all key logins by a pattern: a host,
an optional port, an optional path prefix, `*` globs in host parts. Users write those
keys for the kubelet, so we must read them exactly as it does (k8s.io/kubernetes
pkg/credentialprovider/keyring.go, `BasicDockerKeyring.Add`/`Lookup`, `URLsMatch`):

- a scheme (`https://`) is dropped, a leading `/v1/` or `/v2/` of the path is ignored;
- a key matches an image when the ports are equal, the hosts have as many dot-separated
  parts and each matches its glob (`*.azurecr.io`, `k8s.*.io`; one part per `*`), and
  the key's path is a string prefix of the image's path;
- matching keys are tried in reverse lexical order (longer before shorter with the same
  prefix, plain before wildcard), every login of every match, in order;
- with no match, `index.docker.io` serves images of Docker Hub.

Pure: no I/O, nothing here knows where the entries came from.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from image_cloner.oci.options import Credentials

__all__ = [
    "DockerConfigError",
    "Keyring",
    "is_default_registry_match",
    "parse_docker_config",
    "urls_match",
]

_DEFAULT_REGISTRY_HOST = "index.docker.io"


class DockerConfigError(ValueError):
    """A docker config cannot be read; the message never holds any of its content."""


def _schemeless(text: str) -> tuple[str, str]:
    """(host[:port], path) of a schemeless URL, as Go's url.Parse("https://" + text) has them."""
    parts = urlsplit("https://" + text)
    return parts.netloc, parts.path


def _split(netloc: str) -> tuple[list[str], str]:
    host, sep, port = netloc.rpartition(":")
    if not sep:  # no port: net.SplitHostPort fails and the kubelet takes it all as the host
        host, port = netloc, ""
    return host.split("."), port


def urls_match(glob: str, target: str) -> bool:
    """Whether the key `glob` (schemeless) serves the image `target` (`host/path`)."""
    glob_netloc, glob_path = _schemeless(glob)
    target_netloc, target_path = _schemeless(target)
    glob_parts, glob_port = _split(glob_netloc)
    target_parts, target_port = _split(target_netloc)
    if glob_port != target_port or len(glob_parts) != len(target_parts):
        return False
    if not target_path.startswith(glob_path):
        return False
    return all(fnmatch.fnmatchcase(t, g) for g, t in zip(glob_parts, target_parts, strict=True))


def is_default_registry_match(image: str) -> bool:
    """Whether `image` (as written, or normalized) is pulled from Docker Hub."""
    first, sep, _ = image.partition("/")
    if not first:
        return False
    if not sep or first in ("docker.io", _DEFAULT_REGISTRY_HOST):
        return True
    return not any(c in first for c in ".:") and first != "localhost"


def _key(location: str) -> str:
    value = location if location.startswith(("https://", "http://")) else "https://" + location
    parts = urlsplit(value)
    path = parts.path
    if path.startswith(("/v2/", "/v1/")):
        path = path[3:]
    return parts.netloc + path if path and path != "/" else parts.netloc


@dataclass(frozen=True)
class Keyring:
    """Logins by key, looked up the kubelet's way."""

    entries: tuple[tuple[str, Credentials], ...] = ()
    """(key as written, login), in the order they were added."""

    @classmethod
    def of(cls, entries: Iterable[tuple[str, Credentials]]) -> Keyring:
        return cls(tuple(entries))

    def lookup(self, image: str) -> list[Credentials]:
        """Every login that may serve `image` (`host/path`, no tag), to be tried in order."""
        creds: dict[str, list[Credentials]] = {}
        for location, login in self.entries:
            creds.setdefault(_key(location), []).append(login)
        found = [
            login
            for key in sorted(creds, reverse=True)
            if urls_match(key, image)
            for login in creds[key]
        ]
        if not found and is_default_registry_match(image):
            found = list(creds.get(_DEFAULT_REGISTRY_HOST, ()))
        return found


def _entry(value: object) -> Credentials | None:
    """One docker config entry's login; `auth` (base64 `user:password`) wins, as for the kubelet."""
    if not isinstance(value, Mapping):
        return None
    username, password = value.get("username"), value.get("password")
    if isinstance(auth := value.get("auth"), str) and auth:
        try:
            username, _, password = base64.b64decode(auth, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
    if isinstance(username, str) and isinstance(password, str) and (username or password):
        return Credentials(username, password)
    return None


def parse_docker_config(data: bytes, *, what: str) -> list[tuple[str, Credentials]]:
    """(key, login) pairs of a `config.json`/`auth.json` (`{"auths": {...}}`) or a
    `.dockercfg` (the entries at top level); raises `DockerConfigError` naming `what` only."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise DockerConfigError(f"{what}: not a JSON docker config") from None
    if not isinstance(document, Mapping):
        raise DockerConfigError(f"{what}: not a JSON object")
    auths = document.get("auths", document)
    if not isinstance(auths, Mapping):
        raise DockerConfigError(f"{what}: `auths` is not an object")
    return [
        (str(key), login) for key, value in auths.items() if (login := _entry(value)) is not None
    ]
