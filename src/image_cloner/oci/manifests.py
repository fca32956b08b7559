"""Media types, descriptors and manifest parsing: what an image is made of.

Pure (no I/O). Manifests are kept as the exact bytes the registry served and pushed back
unchanged, so that digests survive the copy; parsing here only reads out what the copy
needs (children of an index, config and layers of an image) and validates every digest
before it ends up in a URL.

Media types are open-ended (OCI artifacts, BuildKit attestations, the short-lived OCI
artifact manifest, tools not yet written), so a manifest of a type we do not know is read by
its shape: `manifests` makes it an index, `config`/`layers`/`blobs` an image-like manifest.
Only what has no readable shape is refused (and Docker schema 1, a deprecated format whose
signed bytes cannot be pushed back unchanged to a current registry).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from image_cloner.oci.errors import (
    DigestMismatchError,
    InvalidManifestError,
    UnsupportedMediaTypeError,
)
from image_cloner.oci.references import digest_problem

__all__ = [
    "ACCEPT",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "IMAGE_MEDIA_TYPES",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPES",
    "MAX_MANIFEST_SIZE",
    "OCI_ARTIFACT_MANIFEST",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_MANIFEST",
    "Descriptor",
    "Digester",
    "ImageIndex",
    "ImageManifest",
    "Manifest",
    "accept_for",
    "check_digest",
    "digest_of",
    "parse_manifest",
    "read_descriptor",
    "resolve_media_type",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_ARTIFACT_MANIFEST = "application/vnd.oci.artifact.manifest.v1+json"
"""The artifact manifest of OCI 1.1's release candidates (`blobs`, no config), since dropped
for image manifests with an `artifactType`; some registries still hold them."""
OCI_EMPTY = "application/vnd.oci.empty.v1+json"
"""The `{}` config blob of an artifact that has no config."""

INDEX_MEDIA_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
IMAGE_MEDIA_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
MANIFEST_MEDIA_TYPES = (
    OCI_INDEX,
    DOCKER_MANIFEST_LIST,
    OCI_MANIFEST,
    DOCKER_MANIFEST,
    OCI_ARTIFACT_MANIFEST,
)
ACCEPT = ", ".join(MANIFEST_MEDIA_TYPES)
"""Every manifest kind we know, so a registry never down-converts (which changes digests).
A child of another type is asked for with its own type added (`accept_for`)."""

DOCKER_SCHEMA1_MEDIA_TYPES = frozenset(
    {
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    }
)
NONDISTRIBUTABLE_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    }
)
GENERIC_CONTENT_TYPES = frozenset(
    {"", "application/json", "text/plain", "application/octet-stream", "binary/octet-stream"}
)

_MEDIA_TYPE = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)

MAX_MANIFEST_SIZE = 4 * 1024 * 1024
"""Largest manifest we accept, as distribution does: a manifest is read into memory."""


def accept_for(media_type: str | None) -> str:
    """The Accept header for a manifest its parent describes as `media_type`: ours, plus that
    type when it is one we do not list (some registries only serve types the client accepts)."""
    if (
        not media_type
        or media_type in MANIFEST_MEDIA_TYPES
        or not _MEDIA_TYPE.fullmatch(media_type)
    ):
        return ACCEPT  # a malformed one (untrusted JSON) never reaches a header
    return f"{ACCEPT}, {media_type}"


def check_digest(digest: object, *, what: str = "digest") -> str:
    """`digest` if it is a well-formed sha256/384/512 digest, else `InvalidManifestError`.

    Digests come from registries and manifests (untrusted) and end up in URL paths.
    """
    if not isinstance(digest, str) or digest_problem(digest) is not None:
        raise InvalidManifestError(f"invalid {what} {str(digest)[:80]!r}")
    return digest


def digest_of(data: bytes, *, algorithm: str = "sha256") -> str:
    """The `algo:hex` digest of `data`."""
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


class Digester:
    """Hashes a stream chunk by chunk and says whether it matched the expected digest and size."""

    def __init__(self, expected: str, *, size: int | None = None) -> None:
        self.expected = check_digest(expected)
        self.expected_size = size
        self.algorithm = expected.split(":", 1)[0]
        self._hash = hashlib.new(self.algorithm)
        self.size = 0

    def update(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self.size += len(chunk)

    @property
    def digest(self) -> str:
        return f"{self.algorithm}:{self._hash.hexdigest()}"

    def verify(self, what: str) -> None:
        """Raise `DigestMismatchError` naming `what` unless the stream matched."""
        if self.expected_size is not None and self.size != self.expected_size:
            raise DigestMismatchError(
                f"{what}: expected {self.expected_size} bytes, received {self.size}"
            )
        if self.digest != self.expected:
            raise DigestMismatchError(
                f"{what}: content has digest {self.digest}, expected {self.expected}"
            )


@dataclass(frozen=True)
class Descriptor:
    """A reference to content by media type, digest and size (OCI descriptor)."""

    media_type: str
    digest: str
    size: int
    urls: tuple[str, ...] = ()

    @property
    def is_foreign(self) -> bool:
        """A non-distributable layer that its manifest says to fetch from elsewhere."""
        return self.media_type in NONDISTRIBUTABLE_MEDIA_TYPES and bool(self.urls)


@dataclass(frozen=True)
class Manifest:
    """A manifest exactly as served: the bytes, their media type and their digest."""

    raw: bytes
    media_type: str
    digest: str

    def parse(self) -> ImageIndex | ImageManifest:
        return parse_manifest(self.raw, self.media_type)


@dataclass(frozen=True)
class ImageIndex:
    """An OCI index or Docker manifest list: one child manifest per platform (or artifact),
    or any manifest of another type that lists `manifests` (a nested index among them)."""

    manifests: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    """The manifest this one refers to (OCI 1.1 referrers); never a dependency of the copy."""


@dataclass(frozen=True)
class ImageManifest:
    """An OCI or Docker v2 image manifest (an OCI artifact is one too: an `artifactType`, an
    empty config, layers of any type), or another type's `config` plus `layers` or `blobs`."""

    config: Descriptor | None
    """None only for the OCI artifact manifest and other types that have no config."""
    layers: tuple[Descriptor, ...]
    subject: Descriptor | None = None
    """The manifest this one refers to (OCI 1.1 referrers); never a dependency of the copy."""

    @property
    def blobs(self) -> tuple[Descriptor, ...]:
        return self.layers if self.config is None else (self.config, *self.layers)


def _load(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise InvalidManifestError(f"manifest is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidManifestError("manifest is not a JSON object")
    return document


def resolve_media_type(content_type: str | None, raw: bytes) -> str:
    """The media type of a manifest from its Content-Type, else its `mediaType`, else its shape."""
    header = (content_type or "").split(";", 1)[0].strip().lower()
    document = _load(raw)
    declared = document.get("mediaType")
    if document.get("schemaVersion") == 1 or header in DOCKER_SCHEMA1_MEDIA_TYPES:
        raise UnsupportedMediaTypeError(
            "Docker schema 1 manifests are not supported (a deprecated format); "
            "re-push the image with a current client"
        )
    if header not in GENERIC_CONTENT_TYPES:
        if isinstance(declared, str) and declared != header:
            raise InvalidManifestError(f"manifest served as {header} declares mediaType {declared}")
        return header
    if isinstance(declared, str) and declared:
        return declared
    if "manifests" in document:
        return OCI_INDEX
    if "config" in document and "layers" in document:
        return OCI_MANIFEST
    if "blobs" in document:
        return OCI_ARTIFACT_MANIFEST
    raise UnsupportedMediaTypeError("manifest has no media type and an unknown shape")


def read_descriptor(value: object, what: str) -> Descriptor:
    """A descriptor from its JSON (untrusted), every field checked; `what` names it in errors."""
    return _descriptor(value, what)


def _descriptor(value: object, what: str) -> Descriptor:
    if not isinstance(value, dict):
        raise InvalidManifestError(f"{what} is not a descriptor object")
    media_type = value.get("mediaType")
    size = value.get("size")
    urls = value.get("urls") or []
    if not isinstance(media_type, str) or not media_type:
        raise InvalidManifestError(f"{what} has no mediaType")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise InvalidManifestError(f"{what} has an invalid size {size!r}")
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise InvalidManifestError(f"{what} has invalid urls")
    return Descriptor(
        media_type=media_type,
        digest=check_digest(value.get("digest"), what=f"{what} digest"),
        size=size,
        urls=tuple(urls),
    )


def _descriptors(document: dict[str, Any], key: str) -> tuple[Descriptor, ...]:
    values = document.get(key)
    if not isinstance(values, list):
        raise InvalidManifestError(f"manifest has no {key} list")
    return tuple(_descriptor(value, f"{key}[{i}]") for i, value in enumerate(values))


def _subject(document: dict[str, Any]) -> Descriptor | None:
    subject = document.get("subject")
    return None if subject is None else _descriptor(subject, "subject")


def parse_manifest(raw: bytes, media_type: str) -> ImageIndex | ImageManifest:
    """Read the children of an index, or the config and layers (or blobs) of a manifest;
    a type we do not know by its shape (see the module docstring)."""
    document = _load(raw)
    known = media_type in INDEX_MEDIA_TYPES or media_type in IMAGE_MEDIA_TYPES
    if media_type in INDEX_MEDIA_TYPES or (not known and "manifests" in document):
        return ImageIndex(_descriptors(document, "manifests"), subject=_subject(document))
    if media_type in IMAGE_MEDIA_TYPES or "config" in document:
        return ImageManifest(
            config=_descriptor(document.get("config"), "config"),
            layers=_descriptors(document, "layers") if known or "layers" in document else (),
            subject=_subject(document),
        )
    if "layers" in document or "blobs" in document:
        key = "layers" if "layers" in document else "blobs"
        return ImageManifest(None, _descriptors(document, key), subject=_subject(document))
    raise UnsupportedMediaTypeError(
        f"manifest of media type {media_type!r} has neither manifests nor config, layers or "
        "blobs: what it refers to is unknown, so it cannot be copied completely"
    )
