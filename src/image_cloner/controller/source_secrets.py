"""Credentials found in a workload's namespace: its pull Secrets, and its ServiceAccount's.

The kubelet pulls a pod's images with the pod's `imagePullSecrets`, then those of its
ServiceAccount (`serviceAccountName`, default `default`). We look in the same places, in
the same order, so a workload we rewrite is one whose own namespace could pull its images.
What we find there serves that namespace only (`SourceCredential.namespace`).

Reading users' Secrets is opt-in (`IMAGE_CLONER_READ_PULL_SECRETS`, with
examples/rbac-source-secrets.yml: `get` on secrets and serviceaccounts, never list or
watch). A Secret is read when a copy needs it, parsed at once into logins kept in memory
for `READ_FOR` seconds (then read again: rotation), never logged, never put in an Event, a
metric or an exception; only its namespace/name and what went wrong ("not found",
"forbidden") are ever told. `forget(namespace)` drops what we keep of a namespace when the
registry refused it all, so a Secret fixed by its owner is used at the next attempt.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from image_cloner.controller.kube import JsonObject, KubeCalls
from image_cloner.controller.kube_errors import KubeApiError
from image_cloner.keyring import DockerConfigError, Keyring, parse_docker_config
from image_cloner.oci.references import Reference
from image_cloner.source_credentials import SourceCredential, image_key

__all__ = ["READ_FOR", "SecretReader", "ServiceAccountSecrets", "TemplateSecrets"]

READ_FOR = 300.0
"""Seconds a Secret's logins (or a ServiceAccount's list of Secrets) are kept in memory."""

_DOCKER_KEYS = {
    "kubernetes.io/dockerconfigjson": ".dockerconfigjson",
    "kubernetes.io/dockercfg": ".dockercfg",
}

_Kind = Literal["secrets", "serviceaccounts"]


@dataclass(frozen=True)
class _Read:
    keyring: Keyring = field(default_factory=Keyring)
    names: tuple[str, ...] = ()
    """A ServiceAccount's `imagePullSecrets` names."""
    problem: str | None = None
    """Why nothing usable was found (`not found`, `forbidden`, ...): for the Event."""


def _keyring(secret: JsonObject) -> _Read:
    key = _DOCKER_KEYS.get(str(secret.get("type", "")))
    encoded = (secret.get("data") or {}).get(key) if key else None
    if not encoded:
        return _Read(problem="not a docker-registry Secret")
    try:
        entries = parse_docker_config(base64.b64decode(encoded, validate=True), what="the Secret")
    except (binascii.Error, DockerConfigError):
        return _Read(problem="not a readable docker config")
    return _Read(keyring=Keyring.of(entries))


def _service_account(account: JsonObject) -> _Read:
    refs = account.get("imagePullSecrets") or []
    names = tuple(str(r["name"]) for r in refs if isinstance(r, dict) and r.get("name"))
    return _Read(names=names)


class SecretReader:
    """Reads Secrets and ServiceAccounts by name, keeping what they say for `READ_FOR` s."""

    def __init__(
        self, kube: KubeCalls, *, clock: Callable[[], float] = time.monotonic, ttl: float = READ_FOR
    ) -> None:
        self._kube = kube
        self._clock = clock
        self._ttl = ttl
        self._kept: dict[tuple[_Kind, str, str], tuple[float, _Read]] = {}

    def forget(self, namespace: str) -> None:
        for key in [k for k in self._kept if k[1] == namespace]:
            del self._kept[key]

    async def secret(self, namespace: str, name: str) -> _Read:
        return await self._read("secrets", namespace, name)

    async def service_account(self, namespace: str, name: str) -> _Read:
        return await self._read("serviceaccounts", namespace, name)

    async def _read(self, kind: _Kind, namespace: str, name: str) -> _Read:
        now = self._clock()
        self._kept = {k: v for k, v in self._kept.items() if v[0] > now}
        if (kept := self._kept.get((kind, namespace, name))) is not None:
            return kept[1]
        try:
            obj = await self._kube.read_object(kind, namespace, name)
        except KubeApiError as error:
            # Not kept: RBAC granted later, or an outage over, works at the next attempt.
            reason = "forbidden" if error.status == 403 else f"cannot be read ({error.status})"
            return _Read(problem=reason)
        if obj is None:
            read = _Read(problem="not found")
        else:
            read = _keyring(obj) if kind == "secrets" else _service_account(obj)
        self._kept[(kind, namespace, name)] = (now + self._ttl, read)
        return read


async def _from_secrets(
    reader: SecretReader,
    reference: Reference,
    namespace: str,
    names: tuple[str, ...],
    *,
    where: str,
    notes: list[str],
) -> list[SourceCredential]:
    found: list[SourceCredential] = []
    for name in names:
        read = await reader.secret(namespace, name)
        origin = f"Secret {namespace}/{name} ({where})"
        if read.problem is not None:
            notes.append(f"{origin}: {read.problem}")
            continue
        found.extend(
            SourceCredential(c, origin, namespace)
            for c in read.keyring.lookup(image_key(reference))
        )
    return found


@dataclass
class TemplateSecrets:
    """(1) The pod template's `imagePullSecrets`."""

    reader: SecretReader
    names: tuple[str, ...]
    notes: list[str]
    """Secrets tried and why they gave nothing, for the Event (names only)."""

    async def for_image(self, reference: Reference, namespace: str) -> list[SourceCredential]:
        return await _from_secrets(
            self.reader,
            reference,
            namespace,
            self.names,
            where="imagePullSecrets",
            notes=self.notes,
        )


@dataclass
class ServiceAccountSecrets:
    """(2) The `imagePullSecrets` of the pod template's ServiceAccount."""

    reader: SecretReader
    account: str
    notes: list[str]

    async def for_image(self, reference: Reference, namespace: str) -> list[SourceCredential]:
        read = await self.reader.service_account(namespace, self.account)
        if read.problem is not None:
            self.notes.append(f"ServiceAccount {namespace}/{self.account}: {read.problem}")
            return []
        return await _from_secrets(
            self.reader,
            reference,
            namespace,
            read.names,
            where=f"ServiceAccount {self.account}",
            notes=self.notes,
        )
