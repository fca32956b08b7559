"""Source-registry credentials: where they come from, whom they may serve, how a copy uses them.

Like go-containerregistry's `authn.Keychain` and the kubelet, credentials for an image come
from a chain of providers, each answering one question, "which logins may pull this image
for a workload in this namespace?", with candidates to try in order until the registry
accepts one. The Kubernetes-backed providers (pull Secrets of the pod template and of its
ServiceAccount) live in `controller.source_secrets`; the controller-wide ones live outside
it: the auth file here, kubelet credential provider plugins in `credential_plugins`.

Every candidate carries the namespace it may serve: one found in a namespace serves that
namespace's workloads only, a controller-wide one every namespace (the admin's choice, as
node credentials are). `CredentialChain` drops whatever a provider hands out beyond that.

The copy engine reads credentials per request from a host → login mapping. `SourceLogins`
is that mapping with one twist: inside `using(host, login)` the host's login is the one
given (or none: anonymous), for the current task and the tasks it starts. So each copy
runs with the credentials proven for its own workload, and `oci` stays free of all this.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from image_cloner.keyring import DockerConfigError, Keyring, parse_docker_config
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.oci.options import Credentials
from image_cloner.oci.references import Reference

__all__ = [
    "AuthFile",
    "CredentialChain",
    "CredentialProvider",
    "SourceCredential",
    "SourceLogins",
    "image_key",
]

logger = logging.getLogger(CONTROLLER_LOGGER)


def image_key(reference: Reference) -> str:
    """`host/path` of an image, no tag or digest: what keyring keys are matched against
    (the kubelet matches the normalized name too: `docker.io/library/nginx`)."""
    return reference.repository.name


@dataclass(frozen=True)
class SourceCredential:
    """One candidate login for a source image, where it was found, and whom it may serve."""

    credentials: Credentials
    origin: str
    """Where it was found, for Events and logs (`Secret team-a/regcred`); never the content."""
    namespace: str | None = None
    """The one namespace whose workloads it may serve; None: every namespace."""

    def serves(self, namespace: str) -> bool:
        return self.namespace is None or self.namespace == namespace


class CredentialProvider(Protocol):
    """One source of credentials (a keychain entry)."""

    async def for_image(self, reference: Reference, namespace: str) -> list[SourceCredential]:
        """Candidates for `reference` in `namespace`, best first; [] when it has none."""
        ...


@dataclass(frozen=True)
class CredentialChain:
    """Providers asked in order; their candidates, in order, without repeats."""

    providers: Sequence[CredentialProvider]
    hints: tuple[str, ...] = ()
    """Sources switched off, and what would switch them on: for the Event after a 401."""

    async def for_image(self, reference: Reference, namespace: str) -> list[SourceCredential]:
        found: list[SourceCredential] = []
        seen: set[Credentials] = set()
        for provider in self.providers:
            for candidate in await provider.for_image(reference, namespace):
                # A provider handing out another namespace's login would make us a confused deputy.
                if candidate.serves(namespace) and candidate.credentials not in seen:
                    seen.add(candidate.credentials)
                    found.append(candidate)
        return found


_override: contextvars.ContextVar[tuple[str, Credentials | None] | None] = contextvars.ContextVar(
    "image_cloner_source_login", default=None
)


class SourceLogins(Mapping[str, Credentials]):
    """The copy engine's host → login mapping, with a per-task login for one source host."""

    def __init__(self, base: Mapping[str, Credentials]) -> None:
        self._base = base

    @staticmethod
    @contextmanager
    def using(host: str, credentials: Credentials | None) -> Iterator[None]:
        """Within the block (and tasks started in it) `host` uses `credentials` (None: none)."""
        token = _override.set((host, credentials))
        try:
            yield
        finally:
            _override.reset(token)

    def __getitem__(self, host: str) -> Credentials:
        override = _override.get()
        if override is not None and override[0] == host:
            if override[1] is None:
                raise KeyError(host)
            return override[1]
        return self._base[host]

    def __iter__(self) -> Iterator[str]:
        return iter(self._base)

    def __len__(self) -> int:
        return len(self._base)

    def __repr__(self) -> str:
        return f"SourceLogins(hosts={sorted(self._base)})"


class AuthFile:
    """`IMAGE_CLONER_SOURCE_AUTH_FILE`: a Docker `config.json` / containers `auth.json`
    serving every namespace. Read again when its content changes (a rotated Secret volume)."""

    def __init__(self, path: Path, *, variable: str = "IMAGE_CLONER_SOURCE_AUTH_FILE") -> None:
        self.path = path
        self.variable = variable
        self._seen: bytes | None = None
        self._keyring = Keyring()
        self._problem: str | None = None

    def __repr__(self) -> str:
        return f"AuthFile({str(self.path)!r})"

    async def for_image(self, reference: Reference, namespace: str) -> list[SourceCredential]:
        self._refresh()
        origin = f"{self.variable} ({self.path})"
        return [SourceCredential(c, origin) for c in self._keyring.lookup(image_key(reference))]

    def _refresh(self) -> None:
        try:
            data = self.path.read_bytes()
            if data != self._seen:
                self._keyring = Keyring.of(parse_docker_config(data, what=str(self.path)))
                self._seen = data
            self._problem = None
        except (OSError, DockerConfigError) as error:
            # Keep the last good logins: a half-written file must not log us out.
            problem = str(error) if isinstance(error, DockerConfigError) else "unreadable"
            if problem != self._problem:
                self._problem = problem
                log_event(
                    logger,
                    logging.WARNING,
                    "cannot read the source auth file, keeping the last good one",
                    path=str(self.path),
                    error=problem,
                )
