"""A fake of what the reconciler needs of `Copier`: copies recorded, a source registry as rules.

For the fast reconciler and pinning tests; the integration and e2e suites use real registries.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import replace

from image_cloner.oci.copying import CopyResult, TagOutcome
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.references import Reference

__all__ = ["FakeCopier", "digest", "pinned"]


def digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def pinned(image: str) -> str:
    """`image` (a tag reference) pinned to what the fake source's tag names."""
    return f"{image}@{digest(image)}"


class FakeCopier:
    """Copies nothing; records what it was asked, fails the images it is told to.

    Its source registry: every tag names `digest(familiar name)`, an image manifest
    unless `indexes` gives its children; `gone` digests it no longer has.
    """

    def __init__(self) -> None:
        self.copied: list[tuple[str, str]] = []
        self.failing: dict[str, RegistryError] = {}
        self.indexes: dict[str, tuple[str, ...]] = {}
        self.gone: set[str] = set()
        self.backup_tags: dict[str, str] = {}
        """Backup tag references (familiar) that already hold other digests."""
        self.synced: list[tuple[str, str]] = []
        """(source, backup) pairs whose referrers were synced again."""
        self.gate: asyncio.Event | None = None
        """When set, copies wait for it: lets several workloads ask at the same time."""

    async def current_digest(self, ref: Reference) -> str:
        return ref.digest or digest(replace(ref, digest=None, text=None).familiar)

    async def children(self, ref: Reference) -> tuple[str, ...]:
        name = replace(ref, digest=None, text=None).familiar
        return self.indexes.get(name, ()) if ref.digest == digest(name) else ()

    async def has_manifest(self, ref: Reference) -> bool:
        return ref.digest not in self.gone

    async def sync_referrers(self, source: Reference, target: Reference) -> int:
        self.synced.append((str(source), str(target)))
        return 0

    async def copy_image(self, source: Reference, target: Reference) -> CopyResult:
        if self.gate is not None:
            await self.gate.wait()
        self.copied.append((str(source), str(target)))
        source_tag = replace(source, digest=None, text=None).familiar
        if source_tag in self.failing:
            raise self.failing[source_tag]
        wanted = target.digest or "sha256:" + "0" * 64
        held = self.backup_tags.get(replace(target, digest=None, text=None).familiar)
        tag = TagOutcome.KEPT if held not in (None, wanted) else TagOutcome.PUSHED
        return CopyResult(
            source, target, wanted, already_present=False, tag=tag, tag_digest=held or wanted
        )
