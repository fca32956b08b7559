"""Upload strategies per host (`oci.uploads`) against the in-process fake registry."""

from __future__ import annotations

from image_cloner.oci.copying import Copier
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.options import RegistryOptions
from image_cloner.oci.references import parse_reference
from image_cloner.oci.uploads import MIN_CHUNK, HostHabits, Strategy
from tests.support.fake_registry import FakeRegistry, digest

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _seed(registry: FakeRegistry, layer: bytes) -> None:
    config = registry.add_blob("src", b"{}", media_type="application/vnd.oci.image.config.v1+json")
    blob = registry.add_blob("src", layer, media_type="application/vnd.oci.image.layer.v1.tar")
    document = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [blob]}
    registry.add_manifest("src", "1", document)


async def test_small_blobs_go_in_one_put_and_a_body_limit_is_met_with_chunks() -> None:
    """The fake (aiohttp) refuses bodies over 1 MiB with 413, as a proxy with a limit would."""
    async with FakeRegistry() as source, FakeRegistry() as registry:
        layer = b"x" * (2 * 1024 * 1024)
        _seed(source, layer)
        async with Copier(RegistryOptions()) as copier:
            await copier.copy_image(
                parse_reference(f"{source.host}/src:1"), parse_reference(f"{registry.host}/dst:1")
            )
        # The config went in its commit PUT; the 2 MiB layer: one streamed PATCH (413), one
        # 2 MiB chunk (413), then two 1 MiB chunks.
        assert len(registry.seen("PATCH")) == 4
        assert len(registry.seen("PUT", "digest=")) == 2
        assert registry.blobs[("dst", digest(layer))] == layer


def test_a_413_halves_chunks_down_to_a_floor_then_gives_up() -> None:
    habits = HostHabits("r")
    too_large = RegistryError("PATCH x: 413", status=413)
    assert habits.adapt(Strategy.STREAMED, too_large, sent=8 * MIN_CHUNK)
    assert habits.strategy_for(8 * MIN_CHUNK) is Strategy.CHUNKED
    sizes = []
    while habits.adapt(Strategy.CHUNKED, too_large, sent=habits.chunk_size):
        sizes.append(habits.chunk_size)
    assert sizes[-1] == MIN_CHUNK
    assert habits.monolithic_max < 8 * MIN_CHUNK


def test_refused_strategies_are_not_tried_again_on_that_host() -> None:
    habits = HostHabits("r")
    refused = RegistryError("PATCH x: 400 BLOB_UPLOAD_INVALID", status=400)
    assert habits.adapt(Strategy.STREAMED, refused, sent=10)
    assert habits.adapt(Strategy.CHUNKED, refused, sent=10)
    assert habits.strategy_for(1 << 30) is Strategy.MONOLITHIC
    assert not habits.adapt(Strategy.MONOLITHIC, refused, sent=10)


def test_mounts_refused_with_an_error_stop_at_once_and_202s_after_a_few() -> None:
    habits = HostHabits("r")
    habits.mount_refused(405)
    assert habits.refuses_mounts
    habits = HostHabits("r")
    for _ in range(2):
        habits.mount_refused(None)
    habits.mounted()
    habits.mount_refused(None)
    assert not habits.refuses_mounts
