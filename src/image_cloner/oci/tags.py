"""The target's tag in a copy: which digest counts, and a tag never moved to other bits.

A backup tag is a promise: `BACKUP/app:v1` is what ran as `app:v1` when it was backed up.
Upstream tags move, so a later copy of `app:v1` can bring other bits. Then both are kept,
each under its digest, and the tag stays where it was unless the caller asks to move it
(`move_tag`, the CLI's `--force`). The distribution API has no compare-and-swap for tags,
so the tag is asked again right before the PUT: a concurrent push can only win in that
one round trip, not during a whole copy.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from image_cloner.oci.client import RegistryClient
from image_cloner.oci.errors import NotFoundError
from image_cloner.oci.manifests import Manifest
from image_cloner.oci.references import Reference

__all__ = ["Placement", "TagOutcome", "already_there", "current", "place"]


class TagOutcome(enum.StrEnum):
    """What a copy did with the target's tag."""

    PUSHED = "pushed"
    """The tag was absent (or `move_tag` was given): it now names the copied digest."""
    ALREADY = "already"
    """The tag already named the copied digest."""
    KEPT = "kept"
    """The tag names other bits and was left so; the copy is kept under its digest."""
    NONE = "none"
    """The target is a digest reference: there is no tag."""


@dataclass(frozen=True)
class Placement:
    """Where the copied digest stands in the target, and what its tag names."""

    digest: str
    tag: TagOutcome
    tag_digest: str | None


async def current(client: RegistryClient, ref: Reference) -> str:
    """The digest `ref`'s tag names now (one HEAD); `NotFoundError` when there is none."""
    assert ref.tag is not None, "a reference has a tag, a digest or both"
    found = await client.manifest_digest(ref.tag)
    if found is None:
        raise NotFoundError(f"{ref.name}: no such manifest in the registry", status=404)
    return found


async def already_there(
    client: RegistryClient,
    target: Reference,
    wanted: str | None,
    held: str | None,
    *,
    move_tag: bool,
) -> Placement | None:
    """The target already holds `wanted` and its tag stays as it is (`held`: what the tag
    named when asked): how it stands; None when something must be pushed."""
    if wanted is None:
        return None  # the target tag is absent and nothing names a digest: copy
    if target.tag is None:
        found = await client.manifest_digest(wanted)
        return Placement(wanted, TagOutcome.NONE, None) if found else None
    if held == wanted:
        return Placement(wanted, TagOutcome.ALREADY, held)
    if held is None or move_tag:
        return None  # the tag is to be pushed: that needs the manifest's bytes
    # The tag holds other bits and stays so: is the digest there already, untagged?
    found = await client.manifest_digest(wanted)
    return Placement(wanted, TagOutcome.KEPT, held) if found else None


async def place(
    client: RegistryClient, target: Reference, manifest: Manifest, *, move_tag: bool
) -> Placement:
    """PUT the top manifest (everything it refers to is there): by tag, unless that would
    move the tag to other bits; then by digest only."""
    digest = manifest.digest
    if target.tag is None:
        await client.put_manifest(digest, manifest)
        return Placement(digest, TagOutcome.NONE, None)
    # Asked again just before the PUT: someone may have pushed the tag while we copied.
    held = await client.manifest_digest(target.tag)
    if held is not None and held != digest and not move_tag:
        await client.put_manifest(digest, manifest)
        return Placement(digest, TagOutcome.KEPT, held)
    await client.put_manifest(target.tag, manifest)
    return Placement(digest, TagOutcome.ALREADY if held == digest else TagOutcome.PUSHED, digest)
