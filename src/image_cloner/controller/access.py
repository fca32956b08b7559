"""A workload's own right to its images: proven before we copy or rewrite, never borrowed.

The backup registry holds one copy of an image for everybody, and the pull Secret we put
next to a rewritten workload opens it to its whole namespace. So a private image copied
for namespace A must not reach namespace B unless B could pull it itself (a confused
deputy otherwise). A Ready pod is no proof: its node may have the image cached.

Before each image's copy (even one the backup already holds) `SourceAccess` asks the
credential chain for the workload's candidates (its pull Secrets, its ServiceAccount's,
then the controller-wide auth file and credential plugins), and proves one with a single
HEAD of the source manifest on the source registry (anonymously when there is no
candidate, as the kubelet pulls). A proof is kept per (namespace, image, login) for
`PROVEN_FOR` seconds. The copy then runs with that login (`SourceLogins.using`): joining a
copy already under way is fine then, as every waiter has proven its own access.
When nothing is accepted the workload is not rewritten, and `AccessRefused` says what was
tried (Secrets by namespace/name, never content) and what setting would add a source.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Protocol, TypeVar

from image_cloner.controller.copies import ImageCopies
from image_cloner.controller.kube import JsonObject
from image_cloner.controller.source_secrets import (
    SecretReader,
    ServiceAccountSecrets,
    TemplateSecrets,
)
from image_cloner.oci.copying import CopyResult
from image_cloner.oci.errors import AuthenticationError, RegistryError
from image_cloner.oci.options import Credentials
from image_cloner.oci.references import Reference
from image_cloner.singleflight import SingleFlight
from image_cloner.source_credentials import (
    CredentialChain,
    CredentialProvider,
    SourceCredential,
    SourceLogins,
)
from image_cloner.workloads import kind_of

__all__ = ["PROVEN_FOR", "READ_PULL_SECRETS_HINT", "AccessRefused", "SourceAccess", "SourceProbe"]

PROVEN_FOR = 600.0
"""Seconds a namespace's proven access to an image is trusted without asking again."""

READ_PULL_SECRETS_HINT = (
    "pull Secrets are not read: set IMAGE_CLONER_READ_PULL_SECRETS=true and apply "
    "examples/rbac-source-secrets.yml, or give the controller IMAGE_CLONER_SOURCE_AUTH_FILE"
)


class AccessRefused(AuthenticationError):
    """The source registry accepts none of the credentials this workload may use."""


class SourceProbe(Protocol):
    """What access proofs need of `oci.copying.Copier`."""

    async def source_digest(self, reference: Reference) -> str | None: ...


_ProofKey = tuple[str, str, Credentials | None]
T = TypeVar("T")


class SourceAccess:
    """Proves each workload's access to its source images, then copies with that login."""

    def __init__(
        self,
        *,
        probe: SourceProbe,
        controller_wide: Sequence[CredentialProvider] = (),
        secrets: SecretReader | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self._controller_wide = tuple(controller_wide)
        self._secrets = secrets
        self._clock = clock
        self._proven: dict[_ProofKey, float] = {}
        self._probes: SingleFlight[str | None] = SingleFlight()

    def _chain(self, obj: JsonObject, notes: list[str]) -> CredentialChain:
        providers: list[CredentialProvider] = []
        if self._secrets is not None:
            spec = kind_of(obj).pod_spec(obj) or {}
            names = tuple(
                str(r["name"])
                for r in spec.get("imagePullSecrets") or []
                if isinstance(r, dict) and r.get("name")
            )
            account = str(spec.get("serviceAccountName") or "default")
            providers.append(TemplateSecrets(self._secrets, names, notes))
            providers.append(ServiceAccountSecrets(self._secrets, account, notes))
        return CredentialChain((*providers, *self._controller_wide))

    async def start(
        self, copies: ImageCopies, obj: JsonObject, source: Reference, target: Reference
    ) -> CopyResult | asyncio.Task[CopyResult]:
        """`copies.start` for the workload `obj`, once its access is proven: even a copy
        verified earlier (for another namespace) is only handed to a workload that may pull."""
        namespace = str(obj["metadata"]["namespace"])
        login = await self.prove(obj, namespace, source)
        with SourceLogins.using(source.repository.registry.host, login):
            return copies.start(source, target)

    async def reading(
        self, obj: JsonObject, source: Reference, work: Callable[[], Awaitable[T]]
    ) -> T:
        """`work` (which reads `source`) with the login the workload `obj` proved for it."""
        namespace = str(obj["metadata"]["namespace"])
        login = await self.prove(obj, namespace, source)
        with SourceLogins.using(source.repository.registry.host, login):
            return await work()

    async def prove(self, obj: JsonObject, namespace: str, source: Reference) -> Credentials | None:
        """The login (None: anonymous) the source accepts for `source` in `namespace`;
        raises `AccessRefused`, or `RegistryError` when the registry cannot be asked."""
        notes: list[str] = []
        candidates: list[SourceCredential | None] = [
            *await self._chain(obj, notes).for_image(source, namespace)
        ]
        now = self._clock()
        self._proven = {k: until for k, until in self._proven.items() if until > now}
        refusals: list[str] = []
        for candidate in candidates or [None]:
            login = candidate.credentials if candidate is not None else None
            key = (namespace, source.name, login)
            if key in self._proven:
                return login
            what = candidate.origin if candidate is not None else "anonymous access"
            try:
                # Workloads sharing an image (and a login) in a namespace share one HEAD.
                found = await self._probes.run(key, partial(self._ask, source, login))
            except RegistryError as error:
                if error.status not in (401, 403):
                    raise
                refusals.append(f"{what}: refused ({error.status})")
                continue
            if found is None:
                refusals.append(f"{what}: not found")
                continue
            self._proven[key] = now + PROVEN_FOR
            return login
        if self._secrets is not None:
            # A Secret fixed by its owner is read again at the next attempt, not in 5 minutes.
            self._secrets.forget(namespace)
        raise AccessRefused(self._refusal(source, namespace, refusals, notes))

    async def _ask(self, source: Reference, login: Credentials | None) -> str | None:
        with SourceLogins.using(source.repository.registry.host, login):
            return await self._probe.source_digest(source)

    def _refusal(
        self, source: Reference, namespace: str, refusals: list[str], notes: list[str]
    ) -> str:
        parts = [f"{source.name} is not pullable by namespace {namespace}: ", "; ".join(refusals)]
        if notes:
            parts.append("; also tried " + "; ".join(notes))
        if self._secrets is None:
            parts.append("; " + READ_PULL_SECRETS_HINT)
        parts.append("; not rewritten")
        return "".join(parts)
