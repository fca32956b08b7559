"""Every shape of manifest people push copies unchanged, into each registry implementation.

An index is not only platform images: BuildKit adds attestation manifests (`unknown/unknown`),
tools push OCI artifacts (an `artifactType`, an empty config, layers of any type) and attach
them with a `subject`, indexes nest, and Windows images carry foreign layers whose blobs live
on another server. Pushed raw into go-containerregistry's registry (it holds anything), each is
copied with `image-cloner copy` into distribution 2.8, distribution 3 and ggcr; skopeo and
crane must read back every manifest by its digest, and the foreign blob must never be asked for.
Distribution refuses manifests with foreign URLs unless `validation.manifests.urls.allow`
matches them, so its targets are configured so, as a registry for Windows images must be.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator

import pytest

from image_cloner import cli
from tests.support import skopeo
from tests.support.artifacts import RawPusher, kitchen_sink, windows_list
from tests.support.crane import Crane
from tests.support.proxy import ProxyFactory
from tests.support.registries import RegistryImpl, RegistryKind, RunningRegistry

pytestmark = pytest.mark.integration

TARGETS = (RegistryImpl.DISTRIBUTION_2, RegistryImpl.DISTRIBUTION_3, RegistryImpl.GGCR)
FOREIGN_URLS = r"^https://mcr\.microsoft\.invalid/"
"""What the distribution targets let manifests point at: by default they refuse any URL, so
a registry that holds Windows images is configured like this (ggcr checks nothing)."""


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture(scope="module")
def shape_registries(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, RunningRegistry]]:
    """A ggcr source and one open registry per implementation as targets."""
    started: dict[str, RunningRegistry] = {}
    try:
        for name, impl in [("source", RegistryImpl.GGCR)] + [(str(t), t) for t in TARGETS]:
            registry = RunningRegistry(
                tmp_path_factory.mktemp(f"shapes-{name}"),
                kind=RegistryKind.OPEN,
                impl=impl,
                foreign_urls=FOREIGN_URLS,
            )
            registry.start()
            started[name] = registry
        yield started
    finally:
        for registry in started.values():
            registry.stop()


@pytest.fixture(scope="module")
def crane(tmp_path_factory: pytest.TempPathFactory) -> Crane:
    return Crane(tmp_path_factory.mktemp("crane"))


def copy(source: str, target: str, capsys: pytest.CaptureFixture[str]) -> str:
    status = cli.main(["copy", source, target, "--quiet"])
    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    return out


def assert_served(crane: Crane, registry: RunningRegistry, repo: str, raw: bytes) -> None:
    """skopeo and crane both read `raw` back by its digest."""
    digest = sha256(raw)
    assert skopeo.inspect_raw(registry, f"{repo}@{digest}") == raw, "skopeo"
    assert crane.manifest(registry, f"{repo}@{digest}") == raw, "crane"


@pytest.mark.parametrize("impl", TARGETS)
def test_attestations_artifacts_subjects_and_nested_indexes_copy_unchanged(
    shape_registries: dict[str, RunningRegistry],
    crane: Crane,
    capsys: pytest.CaptureFixture[str],
    impl: RegistryImpl,
) -> None:
    source, target = shape_registries["source"], shape_registries[str(impl)]
    src_repo, dst_repo = f"sink-{uuid.uuid4().hex[:8]}", f"backup-{uuid.uuid4().hex[:8]}"
    sink = kitchen_sink(RawPusher(source, src_repo), "1", seed=str(impl))

    out = copy(source.ref(f"{src_repo}:1"), target.ref(f"{dst_repo}:1"), capsys)

    assert out == f"{target.ref(dst_repo)}:1@{sink.index.digest}\n"
    assert skopeo.inspect_raw(target, f"{dst_repo}:1") == sink.index.raw
    assert crane.manifest(target, f"{dst_repo}:1") == sink.index.raw
    for manifest in sink.manifests:
        assert_served(crane, target, dst_repo, manifest.raw)
    for blob in sink.blobs:
        assert crane.run(target, "blob", target.ref(f"{dst_repo}@{blob.digest}")) == blob.raw
    attestation = json.loads(sink.manifests[1].raw)
    assert attestation["layers"][0]["mediaType"] == "application/vnd.in-toto+json"


@pytest.mark.parametrize("impl", TARGETS)
def test_windows_foreign_layers_are_left_where_they_live(
    shape_registries: dict[str, RunningRegistry],
    proxy_factory: ProxyFactory,
    crane: Crane,
    capsys: pytest.CaptureFixture[str],
    impl: RegistryImpl,
) -> None:
    source, target = shape_registries["source"], shape_registries[str(impl)]
    src_repo, dst_repo = f"win-{uuid.uuid4().hex[:8]}", f"backup-{uuid.uuid4().hex[:8]}"
    listing, image, foreign = windows_list(RawPusher(source, src_repo), "ltsc2022", seed=str(impl))
    proxied = proxy_factory(source)

    out = copy(proxied.ref(f"{src_repo}:ltsc2022"), target.ref(f"{dst_repo}:ltsc2022"), capsys)

    assert out == f"{target.ref(dst_repo)}:ltsc2022@{listing.digest}\n"
    assert skopeo.inspect_raw(target, f"{dst_repo}:ltsc2022") == listing.raw
    assert_served(crane, target, dst_repo, image.raw)
    assert not [r for r in proxied.requests() if foreign.split(":")[1] in r.path]
    assert [r for r in proxied.requests() if "/blobs/" in r.path], "the other blobs were read"


def test_a_child_of_a_media_type_we_do_not_know_copies_by_its_shape(
    shape_registries: dict[str, RunningRegistry],
    crane: Crane,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The OCI 1.1 release candidates' artifact manifest (`blobs`, no config): only ggcr
    stores a manifest type distribution does not know, so ggcr to ggcr."""
    source, target = shape_registries["source"], shape_registries[str(RegistryImpl.GGCR)]
    src_repo, dst_repo = f"rc-{uuid.uuid4().hex[:8]}", f"backup-{uuid.uuid4().hex[:8]}"
    pusher = RawPusher(source, src_repo)
    blob = pusher.blob(b"signature bytes", "application/vnd.example.signature")
    artifact = pusher.manifest(
        {
            "mediaType": "application/vnd.oci.artifact.manifest.v1+json",
            "artifactType": "application/vnd.example.signature",
            "blobs": [blob.descriptor()],
        }
    )
    index = pusher.manifest(
        {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
         "manifests": [artifact.descriptor()]},
        tag="1",
    )  # fmt: skip

    copy(source.ref(f"{src_repo}:1"), target.ref(f"{dst_repo}:1"), capsys)

    assert crane.manifest(target, f"{dst_repo}:1") == index.raw
    assert_served(crane, target, dst_repo, artifact.raw)
    assert crane.run(target, "blob", target.ref(f"{dst_repo}@{blob.digest}")) == blob.raw
