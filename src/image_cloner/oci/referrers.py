"""Signatures, SBOMs and attestations: the manifests that refer to an image, found and listed.

A cluster that enforces signatures (Kyverno `verifyImages`, policy-controller) rejects a backup
that lost them, so the copy takes along, for every manifest it copies, what refers to it:

- OCI 1.1 referrers, from the source's referrers API (`GET /v2/<name>/referrers/<digest>`), or
  where it has none (404) from the referrers tag schema (a `sha256-<hex>` tag holding an index);
- cosign's tag conventions, `sha256-<hex>.sig`, `.att` and `.sbom`.

In a target without a referrers API the tag-schema index is kept as the spec says: read,
add the entry if missing, write back. Two copies in this process that add to the same subject
take turns (a lock per target repository and subject), and each re-reads the tag before it
writes, so neither loses the other's entry. Two processes writing the same subject's tag at
the same instant can still lose one entry (the spec's schema has no compare-and-swap); the
next copy of that image, which finds the entry missing, adds it again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from image_cloner.oci.client import RegistryClient
from image_cloner.oci.manifests import OCI_INDEX, Manifest, digest_of

__all__ = [
    "COSIGN_SUFFIXES",
    "TagSchema",
    "artifact_type",
    "cosign_tags",
    "find_referrers",
    "schema_tag",
]

logger = logging.getLogger(__name__)

COSIGN_SUFFIXES = (".sig", ".att", ".sbom")
"""cosign's tags next to an image: signature, attestations, SBOM (before OCI 1.1 referrers)."""


def schema_tag(digest: str) -> str:
    """`sha256:abc…` → `sha256-abc…`: the tag of the referrers tag schema."""
    return digest.replace(":", "-", 1)


def artifact_type(manifest: Manifest) -> str:
    """The spec's rule: `artifactType`, else the config's media type (else the media type)."""
    document = json.loads(manifest.raw)
    declared = document.get("artifactType")
    config = document.get("config")
    if isinstance(declared, str) and declared:
        return declared
    if isinstance(config, dict) and isinstance(config.get("mediaType"), str):
        return str(config["mediaType"])
    return manifest.media_type


def _entries(index: bytes | None) -> list[dict[str, Any]]:
    """The descriptors of a referrers index; malformed entries are left out."""
    if index is None:
        return []
    document = json.loads(index)
    manifests = document.get("manifests") if isinstance(document, dict) else None
    return [m for m in manifests or [] if isinstance(m, dict) and isinstance(m.get("digest"), str)]


async def find_referrers(client: RegistryClient, digest: str) -> list[dict[str, Any]]:
    """The referrers of `digest` in the client's repository: the API's answer, or (404) the
    tag schema's index; each a descriptor as the registry listed it."""
    listed = await client.referrers(digest)
    if listed is None:
        tagged = await client.find_manifest(schema_tag(digest))
        listed = None if tagged is None else tagged.raw
    return _entries(listed)


async def cosign_tags(client: RegistryClient, digest: str) -> list[tuple[str, Manifest]]:
    """cosign's `.sig`/`.att`/`.sbom` tags of `digest` that exist, with their manifests
    (looked up concurrently: three round trips cost one)."""
    tags = [schema_tag(digest) + suffix for suffix in COSIGN_SUFFIXES]
    manifests = await asyncio.gather(*(client.find_manifest(tag) for tag in tags))
    found = zip(tags, manifests, strict=True)
    return [(tag, manifest) for tag, manifest in found if manifest is not None]


class TagSchema:
    """Keeps the referrers tag schema in targets without a referrers API (one per Copier)."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str, str], tuple[asyncio.Lock, int]] = {}
        self._api: dict[str, bool] = {}

    async def add(self, target: RegistryClient, subject: str, entry: dict[str, Any]) -> None:
        """Make `entry` (a referrer already pushed) findable as a referrer of `subject`."""
        if await self._has_api(target, subject):
            return
        key = (target.authority, target.repository.path, subject)
        with self._lock(key) as lock:
            async with lock:
                await self._merge(target, subject, entry)

    async def _has_api(self, target: RegistryClient, subject: str) -> bool:
        # Asked after a referrer was pushed (so the repository exists: ggcr answers 404 for a
        # repository it has never seen); 200 means the registry lists referrers itself.
        known = self._api.get(target.authority)
        if known is None:
            known = self._api[target.authority] = await target.referrers(subject) is not None
        return known

    @contextmanager
    def _lock(self, key: tuple[str, str, str]) -> Iterator[asyncio.Lock]:
        """The subject's lock, counted so that it is dropped when its last user leaves."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            yield lock
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _merge(self, target: RegistryClient, subject: str, entry: dict[str, Any]) -> None:
        tag = schema_tag(subject)
        current = await target.find_manifest(tag)
        entries = _entries(None if current is None else current.raw)
        if any(e["digest"] == entry["digest"] for e in entries):
            return
        document = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [*entries, entry]}
        raw = json.dumps(document, indent=2).encode()
        await target.put_manifest(
            tag, Manifest(raw=raw, media_type=OCI_INDEX, digest=digest_of(raw))
        )
        logger.debug("listed %s as a referrer of %s in %s", entry["digest"], subject, tag)
