"""What an image is, as `plan` and `status` print it: digest, platforms, bytes.

Read with GETs of its manifests (the top one, each child of an index) and of a single
manifest's config (for its platform); blobs are counted by the sizes their manifests
declare, never downloaded. Referrers (signatures, SBOMs) are not counted: finding them
costs a request per manifest on registries without the referrers API.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from image_cloner.oci.client import RegistryClient
from image_cloner.oci.manifests import ImageIndex, ImageManifest, Manifest
from image_cloner.oci.references import Reference

__all__ = ["ImageSummary", "summarize"]

MAX_CONFIG = 1 << 20
"""Bytes of a config blob read for its platform; a bigger one is not an image config."""


@dataclass(frozen=True)
class ImageSummary:
    digest: str
    platforms: tuple[str, ...]
    """`os/architecture[/variant]` of each platform; attestations (`unknown/unknown`) left out."""
    size: int
    """Bytes of every manifest and blob a copy would transfer."""


async def summarize(client: RegistryClient, ref: Reference) -> ImageSummary:
    """The summary of `ref` (by digest if it has one, else its tag) in `client`'s repository."""
    top = await client.get_manifest(ref.identifier, expected=ref.digest)
    parsed = top.parse()
    if isinstance(parsed, ImageManifest):
        platform = await _config_platform(client, parsed)
        return ImageSummary(top.digest, (platform,) if platform else (), _size(top, parsed))
    size, platforms = len(top.raw), []
    described = _child_platforms(top)
    for child in parsed.manifests:
        manifest = await client.get_manifest(
            child.digest, expected=child.digest, media_type=child.media_type
        )
        inner = manifest.parse()
        size += len(manifest.raw) if isinstance(inner, ImageIndex) else _size(manifest, inner)
        platform = described.get(child.digest, "")
        if platform and not platform.startswith("unknown/"):
            platforms.append(platform)
    return ImageSummary(top.digest, tuple(platforms), size)


def _size(manifest: Manifest, parsed: ImageManifest) -> int:
    return len(manifest.raw) + sum(blob.size for blob in parsed.blobs)


def _child_platforms(index: Manifest) -> dict[str, str]:
    document = json.loads(index.raw)
    found: dict[str, str] = {}
    for entry in document.get("manifests") or []:
        if isinstance(entry, dict) and isinstance(entry.get("platform"), dict):
            found[str(entry.get("digest"))] = _platform(entry["platform"])
    return found


def _platform(node: dict[str, Any]) -> str:
    parts = [str(node.get("os", "")), str(node.get("architecture", ""))]
    if node.get("variant"):
        parts.append(str(node["variant"]))
    return "/".join(parts)


async def _config_platform(client: RegistryClient, manifest: ImageManifest) -> str:
    config = manifest.config
    kinds = ("image.config.v1+json", "container.image.v1+json")  # OCI's, Docker's
    if config is None or config.size > MAX_CONFIG or not config.media_type.endswith(kinds):
        return ""  # an artifact, or no image config: no platform to tell
    data = b""
    async with client.open_blob(config) as stream:
        async for chunk in stream:
            data += chunk
    document = json.loads(data)
    return _platform(document) if isinstance(document, dict) else ""
