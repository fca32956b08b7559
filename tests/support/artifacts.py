"""Raw pushes for content skopeo cannot make: OCI artifacts, attestations, nested indexes.

skopeo (the seeder of `tests.support.images`) only writes images it understands. The shapes
that break copiers in practice (BuildKit attestation manifests on `unknown/unknown`, OCI
artifacts with an empty config and layers of any type, indexes inside indexes, manifests with a
`subject`, Windows images whose foreign layers live elsewhere) are pushed here byte by byte
with the distribution API itself: a blob by POST then PUT `?digest=`, a manifest by PUT. Every
document is pretty-printed (a copier that re-serialises JSON changes its digest). Blocking, as
the other support wrappers.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urljoin

from tests.support.registries import RegistryEndpoint

__all__ = [
    "ATTESTATION_LAYER",
    "EMPTY_CONFIG",
    "FOREIGN_LAYER",
    "KitchenSink",
    "Pushed",
    "RawPusher",
    "kitchen_sink",
    "windows_list",
]

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar.gzip"
FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
ATTESTATION_LAYER = "application/vnd.in-toto+json"
EMPTY_CONFIG = "application/vnd.oci.empty.v1+json"
TIMEOUT = 60.0


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@dataclass(frozen=True)
class Pushed:
    """Content as pushed: its bytes, digest and media type."""

    raw: bytes
    media_type: str

    @property
    def digest(self) -> str:
        return _sha256(self.raw)

    def descriptor(self, **extra: Any) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": len(self.raw), **extra}


class RawPusher:
    """Pushes blobs and manifests into one repository of `registry` (Basic auth if it has a
    login, its CA if TLS)."""

    def __init__(self, registry: RegistryEndpoint, repository: str) -> None:
        self.registry = registry
        self.repository = repository
        self._base = f"{registry.url}/v2/{repository}/"

    def blob(self, data: bytes, media_type: str) -> Pushed:
        started = self._request("POST", urljoin(self._base, "blobs/uploads/"), b"", {})
        location = urljoin(self._base, started.headers["Location"])
        separator = "&" if "?" in location else "?"
        digest = _sha256(data)
        headers = {"Content-Type": "application/octet-stream"}
        self._request("PUT", f"{location}{separator}digest={digest}", data, headers)
        return Pushed(data, media_type)

    def manifest(self, document: dict[str, Any], *, tag: str | None = None) -> Pushed:
        """PUT `document` (pretty-printed) by digest, or by `tag` if given."""
        raw = json.dumps(document, indent=3).encode()
        media_type = str(document["mediaType"])
        pushed = Pushed(raw, media_type)
        url = urljoin(self._base, f"manifests/{tag or pushed.digest}")
        self._request("PUT", url, raw, {"Content-Type": media_type})
        return pushed

    def _request(
        self, method: str, url: str, data: bytes, headers: dict[str, str]
    ) -> Any:  # http.client.HTTPResponse, read and closed
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        if self.registry.username is not None and self.registry.password is not None:
            login = f"{self.registry.username}:{self.registry.password}".encode()
            request.add_header("Authorization", f"Basic {base64.b64encode(login).decode()}")
        context = self.registry.ssl_context()
        with urllib.request.urlopen(request, timeout=TIMEOUT, context=context) as response:
            response.read()
            return response


def _image(
    pusher: RawPusher, rng: random.Random, platform: dict[str, str], *, docker: bool = False
) -> tuple[Pushed, list[Pushed]]:
    """A one-layer image manifest (the layer is random bytes: never unpacked) and its blobs."""
    layer = pusher.blob(rng.randbytes(2048), DOCKER_LAYER if docker else OCI_LAYER)
    config = {**platform, "rootfs": {"type": "layers", "diff_ids": [layer.digest]}}
    config_blob = pusher.blob(
        json.dumps(config, indent=3).encode(), DOCKER_CONFIG if docker else OCI_CONFIG
    )
    manifest = pusher.manifest(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST,
            "config": config_blob.descriptor(),
            "layers": [layer.descriptor()],
        }
    )
    return manifest, [config_blob, layer]


@dataclass(frozen=True)
class KitchenSink:
    """An OCI index over every shape of child that must copy unchanged."""

    index: Pushed
    manifests: tuple[Pushed, ...]
    """Every manifest under the index (children, the nested index and its child)."""
    blobs: tuple[Pushed, ...]


def kitchen_sink(pusher: RawPusher, tag: str, *, seed: str = "0") -> KitchenSink:
    """Push, under `tag`, an index of: an image; BuildKit's attestation manifest for it
    (`unknown/unknown`, an in-toto layer); an OCI artifact (empty config, `artifactType`, a
    layer of its own type) whose `subject` is the image; a nested index over another image."""
    rng = random.Random(f"kitchen-sink/{seed}")
    amd64, amd64_blobs = _image(pusher, rng, {"os": "linux", "architecture": "amd64"})
    arm64, arm64_blobs = _image(pusher, rng, {"os": "linux", "architecture": "arm64"})
    statement = {
        "_type": "https://in-toto.io/Statement/v0.1",
        "predicateType": "https://spdx.dev/Document",
        "subject": [{"name": "synthetic", "digest": {"sha256": amd64.digest.split(":")[1]}}],
        "predicate": {"seed": seed},
    }
    in_toto = pusher.blob(json.dumps(statement, indent=3).encode(), ATTESTATION_LAYER)
    attestation_config = {
        "architecture": "unknown",
        "os": "unknown",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [in_toto.digest]},
    }
    attestation_config_blob = pusher.blob(
        json.dumps(attestation_config, indent=3).encode(), OCI_CONFIG
    )
    predicate = {"in-toto.io/predicate-type": "https://spdx.dev/Document"}
    attestation = pusher.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": attestation_config_blob.descriptor(),
            "layers": [in_toto.descriptor(annotations=predicate)],
        }
    )
    empty = pusher.blob(b"{}", EMPTY_CONFIG)
    payload = pusher.blob(rng.randbytes(512), "application/vnd.example.payload.v1")
    artifact = pusher.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": "application/vnd.example.report.v1+json",
            "config": empty.descriptor(data=base64.b64encode(b"{}").decode()),
            "layers": [payload.descriptor()],
            "subject": amd64.descriptor(),
        }
    )
    nested = pusher.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [arm64.descriptor(platform={"os": "linux", "architecture": "arm64"})],
        }
    )
    reference = {
        "vnd.docker.reference.digest": amd64.digest,
        "vnd.docker.reference.type": "attestation-manifest",
    }
    index = pusher.manifest(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                amd64.descriptor(platform={"os": "linux", "architecture": "amd64"}),
                attestation.descriptor(
                    platform={"os": "unknown", "architecture": "unknown"}, annotations=reference
                ),
                artifact.descriptor(artifactType="application/vnd.example.report.v1+json"),
                nested.descriptor(),
            ],
        },
        tag=tag,
    )
    blobs = (*amd64_blobs, *arm64_blobs, in_toto, attestation_config_blob, empty, payload)
    return KitchenSink(index, (amd64, attestation, artifact, nested, arm64), blobs)


def windows_list(pusher: RawPusher, tag: str, *, seed: str = "0") -> tuple[Pushed, Pushed, str]:
    """Push, under `tag`, a Docker manifest list over a Windows image whose base layer is
    foreign (`urls`, never pushed): (the list, the image manifest, the foreign digest)."""
    rng = random.Random(f"windows/{seed}")
    foreign = Pushed(rng.randbytes(4096), FOREIGN_LAYER)  # described, never pushed
    layer = pusher.blob(rng.randbytes(1024), DOCKER_LAYER)
    platform = {"os": "windows", "architecture": "amd64", "os.version": "10.0.20348.2527"}
    config = {**platform, "rootfs": {"type": "layers", "diff_ids": [foreign.digest, layer.digest]}}
    config_blob = pusher.blob(json.dumps(config, indent=3).encode(), DOCKER_CONFIG)
    urls = [f"https://mcr.microsoft.invalid/v2/windows/servercore/blobs/{foreign.digest}"]
    image = pusher.manifest(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST,
            "config": config_blob.descriptor(),
            "layers": [foreign.descriptor(urls=urls), layer.descriptor()],
        }
    )
    listing = pusher.manifest(
        {
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_LIST,
            "manifests": [image.descriptor(platform=platform)],
        },
        tag=tag,
    )
    return listing, image, foreign.digest
