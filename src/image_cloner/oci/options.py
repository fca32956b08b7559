"""How to reach registries (credentials, trust, plain-HTTP hosts, mirrors), and what to copy.

The `oci` package cannot import `settings` (imports only go down), so the
settings layer builds one of these from the environment and hands it down.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

__all__ = ["Credentials", "ReferrersPolicy", "RegistryOptions", "RequestListener"]

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


@dataclass(frozen=True)
class ReferrersPolicy:
    """Which referrers travel with an image (`IMAGE_CLONER_REFERRERS`, `copy --referrers`).

    `all` (the default), `none`, or a comma-separated list of artifact types; the item
    `optional` added to any of them lets an image's backup succeed when a referrer fails."""

    enabled: bool = True
    artifact_types: frozenset[str] = frozenset()
    """Empty: every type."""
    optional: bool = False

    @classmethod
    def parse(cls, text: str) -> ReferrersPolicy:
        items = {item.strip() for item in text.split(",") if item.strip()}
        optional = "optional" in items
        items.discard("optional")
        if items in ({"all"}, set()):
            return cls(optional=optional)
        if items == {"none"}:
            return cls(enabled=False)
        if items & {"all", "none"}:
            raise ValueError("`all` and `none` do not combine with artifact types")
        if any("/" not in item for item in items):
            raise ValueError("expected all, none, or artifact types like application/spdx+json")
        return cls(artifact_types=frozenset(items), optional=optional)

    def wants(self, kind: str) -> bool:
        return self.enabled and (not self.artifact_types or kind in self.artifact_types)


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

    referrers: ReferrersPolicy = ReferrersPolicy()
    """Which signatures, SBOMs and attestations travel with each image (`oci.referrers`)."""
