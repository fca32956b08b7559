"""How to reach registries: credentials, trust, plain-HTTP hosts and mirrors.

The `oci` package cannot import `settings` (imports only go down), so the
settings layer builds one of these from the environment and hands it down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

__all__ = ["Credentials", "RegistryOptions", "RequestListener"]

DEFAULT_MAX_CONCURRENT_TRANSFERS = 4


@dataclass(frozen=True)
class Credentials:
    """A username and password for one registry host."""

    username: str
    password: str = field(repr=False)

    def __repr__(self) -> str:
        # Never let a password reach a log line or a traceback through repr().
        return f"Credentials(username={self.username!r}, password='***')"


RequestListener = Callable[[str, int | None], None]
"""Told of each request sent to a registry: the URL's host (`host[:port]`) and the response
status, or None when no response came (refused, reset, timed out). See `oci.observing`."""


def _empty() -> Mapping[str, object]:
    return MappingProxyType({})


@dataclass(frozen=True, kw_only=True)
class RegistryOptions:
    """Everything the registry client needs to know about the registries it talks to."""

    credentials: Mapping[str, Credentials] = field(default_factory=_empty)  # type: ignore[arg-type]
    """Registry host, as `Registry.host` spells it (`docker.io`, `localhost:5000`) → credentials.

    Looked up at every request, never copied: a mapping whose values change (a rotated
    login, `credentials.BackupCredentials`) is followed from the next request on."""

    ca_file: Path | None = None
    """PEM bundle trusted in addition to the system's CAs."""

    insecure_hosts: frozenset[str] = frozenset()
    """Hosts reached over plain HTTP. Loopback hosts always may be, as Docker allows."""

    mirrors: Mapping[str, tuple[str, ...]] = field(default_factory=_empty)  # type: ignore[arg-type]
    """Registry host → mirror endpoint URLs (`https://mirror.local:5001`), tried in order
    before the registry itself for pulls; image names stay unchanged."""

    max_concurrent_transfers: int = DEFAULT_MAX_CONCURRENT_TRANSFERS
    """Blob transfers running at once per registry host."""

    request_listener: RequestListener | None = field(default=None, compare=False)
    """Called for every request sent (the controller's metrics); None: nobody listens."""
