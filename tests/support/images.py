"""Synthetic container images, made by code, for tests and benchmarks (no network, no pulls).

An image is written to a directory and pushed with `skopeo copy --all --preserve-digests`, so
the registry holds exactly the bytes we wrote and every digest is known up front. OCI-typed
images use an OCI image layout (`oci:DIR:image`). Docker-typed ones use skopeo's `dir:` layout
instead, because skopeo 1.9's `oci:` source only resolves OCI media types ("no descriptor
found"), while `dir:` keeps any manifest bytes and type as they are.

Layers are real tar.gz streams of seeded random data, written in chunks (a 1 GiB layer never
sits in memory). They use gzip level 0 (stored blocks): random data does not compress anyway,
and level 0 is ~50x faster to produce while staying valid gzip.
Manifests are pretty-printed on purpose: a copier that re-serialises JSON changes the digest.
"""

from __future__ import annotations

import enum
import gzip
import hashlib
import json
import random
import tarfile
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from tests.support import skopeo
from tests.support.registries import RegistryEndpoint

__all__ = [
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "KIB",
    "MIB",
    "OCI_CONFIG",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_MANIFEST",
    "Blob",
    "ImageFactory",
    "ImageKind",
    "ImageSeeder",
    "ImageSpec",
    "Manifest",
    "SyntheticImage",
    "push_image",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"

LAYOUT_TAG = "image"
CHUNK = 1 << 20
KIB = 1024
MIB = 1024 * KIB


class ImageKind(enum.StrEnum):
    INDEX = "index"
    """OCI image index over one OCI manifest per platform."""
    DOCKER_LIST = "docker-list"
    """Docker manifest list v2 over one Docker v2 manifest per platform."""
    SINGLE = "single"
    """One OCI manifest, no index (first platform only)."""
    DOCKER_SINGLE = "docker-single"
    """One Docker v2 manifest, no list (first platform only)."""


@dataclass(frozen=True)
class ImageSpec:
    """What to generate. Equal specs give byte-identical images (seeded randomness)."""

    kind: ImageKind = ImageKind.INDEX
    platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64/v8")
    layers: int = 2
    """Layers per platform."""
    layer_size: int = 64 * KIB
    """Bytes of random file content per layer (the blob is slightly larger: tar + gzip)."""
    seed: str = "0"
    """Change it to get different blobs (and digests) from an otherwise equal spec."""

    @classmethod
    def large(cls, size: int, *, seed: str = "large") -> ImageSpec:
        """A single-platform OCI image with one layer of `size` bytes."""
        return cls(kind=ImageKind.SINGLE, layers=1, layer_size=size, seed=seed)


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    media_type: str

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


@dataclass(frozen=True)
class Manifest:
    """One image manifest (a platform of an index, or the whole single-platform image)."""

    blob: Blob
    """Digest, size and media type of the manifest itself."""
    platform: str
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def digest(self) -> str:
        return self.blob.digest


@dataclass(frozen=True)
class SyntheticImage:
    spec: ImageSpec
    layout: Path
    """Directory holding the image: an OCI layout (tag `LAYOUT_TAG`) or a skopeo `dir:` layout."""
    digest: str
    """Digest of the top-level manifest or index: what a tag points at."""
    media_type: str
    raw: bytes = field(repr=False)
    """The top-level manifest or index bytes."""
    manifests: tuple[Manifest, ...]
    """The platform manifests (for a single-manifest image: just that one)."""

    @property
    def layout_ref(self) -> str:
        """skopeo source reference of the layout: `oci:DIR:image` or `dir:DIR`."""
        if self.media_type in (DOCKER_MANIFEST_LIST, DOCKER_MANIFEST):
            return f"dir:{self.layout}"
        return f"oci:{self.layout}:{LAYOUT_TAG}"

    @property
    def is_index(self) -> bool:
        return self.media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST)

    @property
    def child_digests(self) -> list[str]:
        """Digests of the platform manifests an index points at (empty for a single manifest)."""
        return [m.digest for m in self.manifests] if self.is_index else []

    @property
    def blobs(self) -> list[Blob]:
        """Every config and layer blob, without duplicates, in push order."""
        seen: dict[str, Blob] = {}
        for manifest in self.manifests:
            for blob in (manifest.config, *manifest.layers):
                seen.setdefault(blob.digest, blob)
        return list(seen.values())

    @property
    def blob_digests(self) -> list[str]:
        return [b.digest for b in self.blobs]

    @property
    def total_size(self) -> int:
        """Bytes of all blobs and manifests: roughly what a full copy transfers."""
        manifest_bytes = sum(m.blob.size for m in self.manifests)
        top = len(self.raw) if self.is_index else 0
        return sum(b.size for b in self.blobs) + manifest_bytes + top


class ImageFactory:
    """Builds images into `root` and caches them by spec (build once per session)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[ImageSpec, SyntheticImage] = {}
        self._lock = threading.Lock()

    def build(self, spec: ImageSpec) -> SyntheticImage:
        with self._lock:
            image = self._cache.get(spec)
            if image is None:
                layout = self.root / f"image-{len(self._cache)}-{spec.kind}"
                image = _build(spec, layout)
                self._cache[spec] = image
            return image


class ImageSeeder:
    """`seed(registry, "repo:tag", spec)`: build (cached) and push an image; return it.

    `spec` is an `ImageSpec`, or just an `ImageKind` (or its value, e.g. "docker-list") for the
    default spec of that kind; `seed=` overrides the spec's seed (to get different digests).
    """

    def __init__(self, factory: ImageFactory) -> None:
        self.factory = factory

    def __call__(
        self,
        registry: RegistryEndpoint,
        name: str,
        spec: ImageSpec | ImageKind | str = ImageKind.INDEX,
        *,
        seed: str | None = None,
    ) -> SyntheticImage:
        if not isinstance(spec, ImageSpec):
            spec = ImageSpec(kind=ImageKind(spec))
        if seed is not None:
            spec = replace(spec, seed=seed)
        image = self.factory.build(spec)
        push_image(image, registry, name)
        return image


def push_image(image: SyntheticImage, registry: RegistryEndpoint, name: str) -> None:
    """Push every platform of `image` to `registry` as `name` (`repo:tag`), digests unchanged."""
    skopeo.copy(image.layout_ref, skopeo.docker_ref(registry, name), dest=registry)


def _build(spec: ImageSpec, layout: Path) -> SyntheticImage:
    if not spec.platforms or spec.layers < 1:
        raise ValueError(f"an image needs a platform and a layer: {spec}")
    docker = spec.kind in (ImageKind.DOCKER_LIST, ImageKind.DOCKER_SINGLE)
    multi = spec.kind in (ImageKind.INDEX, ImageKind.DOCKER_LIST)
    platforms = spec.platforms if multi else spec.platforms[:1]
    blobs_dir = layout if docker else layout / "blobs" / "sha256"
    blobs_dir.mkdir(parents=True, exist_ok=True)
    manifests = tuple(
        _build_manifest(spec, platform, blobs_dir, docker=docker) for platform in platforms
    )
    top = manifests[0].blob
    if multi:
        index = {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST if docker else OCI_INDEX,
            "manifests": [
                {**m.blob.descriptor(), "platform": _platform_json(m.platform)} for m in manifests
            ],
        }
        top = _write_json_blob(blobs_dir, index, str(index["mediaType"]))
    raw = (blobs_dir / _hex(top.digest)).read_bytes()
    if docker:
        _finish_dir_layout(layout, raw, manifests if multi else ())
    else:
        _finish_oci_layout(layout, top)
    return SyntheticImage(
        spec=spec,
        layout=layout,
        digest=top.digest,
        media_type=top.media_type,
        raw=raw,
        manifests=manifests,
    )


def _finish_oci_layout(layout: Path, top: Blob) -> None:
    _write_json(layout / "oci-layout", {"imageLayoutVersion": "1.0.0"})
    ref_annotation = {"org.opencontainers.image.ref.name": LAYOUT_TAG}
    index = {"schemaVersion": 2, "manifests": [{**top.descriptor(), "annotations": ref_annotation}]}
    _write_json(layout / "index.json", index)


def _finish_dir_layout(layout: Path, top: bytes, children: tuple[Manifest, ...]) -> None:
    """skopeo's `dir:` conventions: blobs by hex digest, `manifest.json`, `HEX.manifest.json`."""
    (layout / "version").write_text("Directory Transport Version: 1.1\n")
    (layout / "manifest.json").write_bytes(top)
    for child in children:
        child_hex = _hex(child.digest)
        (layout / f"{child_hex}.manifest.json").write_bytes((layout / child_hex).read_bytes())


def _hex(digest: str) -> str:
    return digest.removeprefix("sha256:")


def _build_manifest(spec: ImageSpec, platform: str, blobs_dir: Path, *, docker: bool) -> Manifest:
    layers: list[Blob] = []
    diff_ids: list[str] = []
    for number in range(spec.layers):
        rng = random.Random(f"{spec.seed}/{platform}/{number}/{spec.layer_size}")
        blob, diff_id = _write_layer(
            blobs_dir, rng, spec.layer_size, DOCKER_LAYER if docker else OCI_LAYER
        )
        layers.append(blob)
        diff_ids.append(diff_id)
    config = {
        **_platform_json(platform),
        "created": "2024-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/true"],
            "Labels": {"org.example.image-cloner.test-seed": spec.seed},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": "2024-01-01T00:00:00Z", "created_by": f"synthetic layer {n}"}
            for n in range(spec.layers)
        ],
    }
    config_blob = _write_json_blob(blobs_dir, config, DOCKER_CONFIG if docker else OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
        "config": config_blob.descriptor(),
        "layers": [layer.descriptor() for layer in layers],
    }
    manifest_blob = _write_json_blob(blobs_dir, manifest, str(manifest["mediaType"]))
    return Manifest(blob=manifest_blob, platform=platform, config=config_blob, layers=tuple(layers))


def _platform_json(platform: str) -> dict[str, str]:
    os_name, architecture, *variant = platform.split("/")
    result = {"architecture": architecture, "os": os_name}
    if variant:
        result["variant"] = variant[0]
    return result


class _Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


class _HashingWriter:
    """Passes writes through to `target` while hashing and counting them."""

    def __init__(self, target: _Writable) -> None:
        self.target = target
        self.sha256 = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes, /) -> int:
        self.sha256.update(data)
        self.size += len(data)
        self.target.write(data)
        return len(data)

    def flush(self) -> None:
        """Nothing to flush here: `target` is flushed by whoever owns it."""


def _write_layer(
    blobs_dir: Path, rng: random.Random, size: int, media_type: str
) -> tuple[Blob, str]:
    """Stream a tar.gz holding one file of `size` random bytes; return (blob, diff_id)."""
    partial = blobs_dir / f".partial-{rng.getrandbits(64):016x}"
    with partial.open("wb") as out:
        compressed = _HashingWriter(out)
        with gzip.GzipFile(fileobj=compressed, mode="wb", compresslevel=0, mtime=0) as gz:
            tar = _HashingWriter(gz)
            _write_tar(tar, rng, size)
    digest = compressed.sha256.hexdigest()
    partial.replace(blobs_dir / digest)
    diff_id = f"sha256:{tar.sha256.hexdigest()}"
    return Blob(f"sha256:{digest}", compressed.size, media_type), diff_id


def _write_tar(out: _HashingWriter, rng: random.Random, size: int) -> None:
    """A tar stream with a directory and one random file, written in chunks.

    Written by hand rather than with `tarfile` because it is three records and streaming a
    generated payload through `tarfile` needs a file-like adapter that is longer than this.
    """
    directory = tarfile.TarInfo(f"data-{rng.getrandbits(32):08x}")
    directory.type = tarfile.DIRTYPE
    directory.mode = 0o755
    out.write(directory.tobuf(format=tarfile.PAX_FORMAT))
    payload = tarfile.TarInfo(f"{directory.name}/random.bin")
    payload.size = size
    payload.mode = 0o644
    out.write(payload.tobuf(format=tarfile.PAX_FORMAT))
    remaining = size
    while remaining:
        n = min(CHUNK, remaining)
        out.write(rng.randbytes(n))
        remaining -= n
    padding = -size % tarfile.BLOCKSIZE
    out.write(b"\0" * (padding + 2 * tarfile.BLOCKSIZE))  # end-of-archive: two zero blocks


def _write_json_blob(blobs_dir: Path, document: dict[str, Any], media_type: str) -> Blob:
    data = json.dumps(document, indent=3).encode()
    digest = hashlib.sha256(data).hexdigest()
    (blobs_dir / digest).write_bytes(data)
    return Blob(f"sha256:{digest}", len(data), media_type)


def _write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document))
