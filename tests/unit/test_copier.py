"""Copier against in-process fake registries: order of pushes, cheap repeats, sharing, lies.

Milliseconds each; the integration suite proves the same against real registries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from image_cloner.oci.copying import Copier, TagOutcome
from image_cloner.oci.errors import DigestMismatchError
from image_cloner.oci.manifests import OCI_INDEX, OCI_MANIFEST
from image_cloner.oci.options import RegistryOptions
from image_cloner.oci.references import Reference, parse_reference
from tests.support.fake_registry import FakeRegistry, Seen, digest

CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class Seeded:
    index: str
    children: tuple[str, ...]
    blobs: dict[str, tuple[str, ...]]
    """Child manifest digest → the digests of its config and layers."""


def seed_index(fake: FakeRegistry, repo: str, tag: str, *, shared: bytes = b"base") -> Seeded:
    """A two-platform index; both platforms share the layer `shared`."""
    children: list[dict[str, Any]] = []
    blobs: dict[str, tuple[str, ...]] = {}
    for arch in ("amd64", "arm64"):
        config = fake.add_blob(repo, f'{{"architecture":"{arch}"}}'.encode(), media_type=CONFIG)
        base = fake.add_blob(repo, shared, media_type=LAYER)
        own = fake.add_blob(repo, f"{tag}-{arch}-layer".encode(), media_type=LAYER)
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": config,
            "layers": [base, own],
        }
        child = fake.add_manifest(repo, f"{tag}-{arch}", manifest)
        children.append({**child, "platform": {"os": "linux", "architecture": arch}})
        blobs[child["digest"]] = (config["digest"], base["digest"], own["digest"])
    index = fake.add_manifest(
        repo, tag, {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}
    )
    return Seeded(index["digest"], tuple(c["digest"] for c in children), blobs)


@pytest.fixture
async def source() -> AsyncIterator[FakeRegistry]:
    async with FakeRegistry() as fake:
        yield fake


@pytest.fixture
async def target() -> AsyncIterator[FakeRegistry]:
    async with FakeRegistry() as fake:
        yield fake


def ref(fake: FakeRegistry, name: str) -> Reference:
    return parse_reference(f"{fake.host}/{name}")


async def test_an_index_is_pushed_children_first_and_its_tag_last(
    source: FakeRegistry, target: FakeRegistry
) -> None:
    image = seed_index(source, "src/app", "1")
    async with Copier(RegistryOptions()) as copier:
        result = await copier.copy_image(ref(source, "src/app:1"), ref(target, "backup/app:1"))
    assert (result.digest, result.already_present) == (image.index, False)
    assert result.manifests_pushed == 3
    shared = image.blobs[image.children[0]][1]
    assert len(target.seen("PUT", f"digest={shared}")) == 1  # both platforms' layer, sent once
    puts = [r.path + ("?" + r.query if r.query else "") for r in target.seen("PUT")]
    assert puts[-1] == "/v2/backup/app/manifests/1"
    for child in image.children:
        child_put = puts.index(f"/v2/backup/app/manifests/{child}")
        commits = [i for i, put in enumerate(puts) if any(d in put for d in image.blobs[child])]
        assert commits
        assert max(commits) < child_put  # its blobs are there before it
    assert target.manifests[("backup/app", "1")] == source.manifests[("src/app", "1")]


async def test_referrers_are_looked_up_while_the_contents_copy(
    source: FakeRegistry, target: FakeRegistry
) -> None:
    """The five GETs that find what refers to the index (referrers API, tag schema, cosign's
    three tags) are answered before its first platform is pushed, not after both: they are
    off the path to the tag."""
    image = seed_index(source, "src/app", "1")
    arrivals: list[Seen] = []
    source.requests = target.requests = arrivals  # one log of both, in arrival order
    async with Copier(RegistryOptions()) as copier:
        await copier.copy_image(ref(source, "src/app:1"), ref(target, "backup/app:1"))
    hexdigest = image.index.removeprefix("sha256:")
    lookups = [
        i
        for i, r in enumerate(arrivals)
        if r.method == "GET"
        and r.path.startswith("/v2/src/app/")
        and hexdigest in r.path
        and "/manifests/sha256:" not in r.path
    ]
    child_puts = [
        i
        for i, r in enumerate(arrivals)
        if r.method == "PUT" and r.path.removeprefix("/v2/backup/app/manifests/") in image.children
    ]
    assert len(lookups) == 5
    assert len(child_puts) == 2
    assert max(lookups) < min(child_puts)


async def test_an_image_already_there_costs_one_head(
    source: FakeRegistry, target: FakeRegistry
) -> None:
    image = seed_index(source, "src/app", "1")
    async with Copier(RegistryOptions()) as copier:
        await copier.copy_image(ref(source, "src/app:1"), ref(target, "backup/app:1"))
        source.requests.clear()
        target.requests.clear()
        pinned = f"@{image.index}"
        again = await copier.copy_image(
            ref(source, "src/app:1" + pinned), ref(target, "backup/app:1" + pinned)
        )
        assert (again.already_present, again.tag) == (True, TagOutcome.ALREADY)
        assert [(r.method, r.path) for r in target.requests] == [
            ("HEAD", "/v2/backup/app/manifests/1")
        ]
        assert source.requests == []
        # Without a digest, what the source tag names now decides: one HEAD there too.
        target.requests.clear()
        by_tag = await copier.copy_image(ref(source, "src/app:1"), ref(target, "backup/app:1"))
    assert (by_tag.already_present, by_tag.digest) == (True, image.index)
    assert [(r.method, r.path) for r in target.requests] == [("HEAD", "/v2/backup/app/manifests/1")]
    assert [(r.method, r.path) for r in source.requests] == [("HEAD", "/v2/src/app/manifests/1")]


async def test_a_backup_tag_holding_other_bits_is_kept_and_the_copy_stored_by_digest(
    source: FakeRegistry, target: FakeRegistry
) -> None:
    old = seed_index(source, "src/app", "old")
    new = seed_index(source, "src/app", "1")
    async with Copier(RegistryOptions()) as copier:
        await copier.copy_image(ref(source, "src/app:old"), ref(target, "backup/app:1"))
        kept = await copier.copy_image(ref(source, "src/app:1"), ref(target, "backup/app:1"))
        assert (kept.digest, kept.already_present) == (new.index, False)
        assert (kept.tag, kept.tag_digest) == (TagOutcome.KEPT, old.index)
        assert target.manifests[("backup/app", "1")] == source.manifests[("src/app", "old")]
        assert target.manifests[("backup/app", new.index)] == source.manifests[("src/app", "1")]
        assert str(kept.pinned) == f"{target.host}/backup/app:1@{new.index}"

        # Asked again: the copy is there by digest; one HEAD each side, nothing pushed.
        target.requests.clear()
        again = await copier.copy_image(ref(source, "src/app:1"), ref(target, "backup/app:1"))
        assert (again.already_present, again.tag, again.tag_digest) == (
            True,
            TagOutcome.KEPT,
            old.index,
        )
        assert target.seen("PUT") == []

        moved = await copier.copy_image(
            ref(source, "src/app:1"), ref(target, "backup/app:1"), move_tag=True
        )
    assert (moved.tag, moved.tag_digest) == (TagOutcome.PUSHED, new.index)
    assert target.manifests[("backup/app", "1")] == source.manifests[("src/app", "1")]


async def test_a_digest_is_copied_from_the_source_even_after_its_tag_moved(
    source: FakeRegistry, target: FakeRegistry
) -> None:
    ran = seed_index(source, "src/app", "1")
    moved = seed_index(source, "src/app", "1", shared=b"another base")
    assert source.manifests[("src/app", "1")] != source.manifests[("src/app", ran.index)]
    async with Copier(RegistryOptions()) as copier:
        result = await copier.copy_image(
            ref(source, f"src/app:1@{ran.index}"), ref(target, f"backup/app:1@{ran.index}")
        )
        now = await copier.current_digest(ref(source, "src/app:1"))
        children = await copier.children(ref(source, f"src/app@{now}"))
        source.requests.clear()
        assert await copier.children(ref(source, f"src/app@{now}")) == children
    assert (result.digest, result.tag, result.tag_digest) == (
        ran.index,
        TagOutcome.PUSHED,
        ran.index,
    )
    assert target.manifests[("backup/app", "1")] == source.manifests[("src/app", ran.index)]
    assert (now, children) == (moved.index, moved.children)
    assert source.requests == []  # the children of a digest never change: asked once


async def test_a_blob_two_concurrent_copies_need_is_uploaded_once(
    source: FakeRegistry, target: FakeRegistry
) -> None:
    first = seed_index(source, "src/app", "1", shared=b"common base layer")
    second = seed_index(source, "src/other", "2", shared=b"common base layer")
    shared = first.blobs[first.children[0]][1]
    assert shared == second.blobs[second.children[0]][1]
    async with Copier(RegistryOptions()) as copier:
        await asyncio.gather(
            copier.copy_image(ref(source, "src/app:1"), ref(target, "backup/app:1")),
            copier.copy_image(ref(source, "src/other:2"), ref(target, "backup/app:2")),
        )
    assert len(source.seen("GET", shared)) == 1
    assert len(target.seen("PUT", f"digest={shared}")) == 1
    assert {tag for (_, tag) in target.manifests} >= {"1", "2"}


async def test_a_blob_that_does_not_match_its_digest_tags_nothing(target: FakeRegistry) -> None:
    async with FakeRegistry() as lying:
        image = seed_index(lying, "src/app", "1")
        bad = image.blobs[image.children[1]][2]
        lying.corrupt = frozenset({bad})
        async with Copier(RegistryOptions()) as copier:
            with pytest.raises(DigestMismatchError, match=bad):
                await copier.copy_image(ref(lying, "src/app:1"), ref(target, "backup/app:1"))
    assert ("backup/app", "1") not in target.manifests
    assert ("backup/app", bad) not in target.blobs
    assert target.seen("PUT", f"digest={bad}") == []
    assert target.uploads == {}  # the failed upload session was cancelled


async def test_a_tag_pushed_by_someone_else_during_the_copy_is_not_overwritten(
    source: FakeRegistry,
) -> None:
    image = seed_index(source, "src/app", "1")
    theirs = (b'{"theirs":1}', OCI_MANIFEST)

    def someone_pushes_the_tag(repository: str, reference: str) -> None:
        if reference in image.children:  # while our children go in
            racing.manifests[("backup/app", "1")] = theirs

    racing = FakeRegistry(after_manifest_put=someone_pushes_the_tag)
    async with racing, Copier(RegistryOptions()) as copier:
        result = await copier.copy_image(ref(source, "src/app:1"), ref(racing, "backup/app:1"))
    assert (result.tag, result.tag_digest) == (TagOutcome.KEPT, digest(theirs[0]))
    assert racing.manifests[("backup/app", "1")] == theirs
    assert racing.manifests[("backup/app", image.index)] == source.manifests[("src/app", "1")]


async def test_connections_to_a_host_are_bounded_and_reused(
    source: FakeRegistry, target: FakeRegistry
) -> None:
    """A HEAD for each of 24 blobs goes out at once; they share a bounded set of connections
    (each TLS handshake costs CPU) instead of opening one each."""
    layers = [source.add_blob("src/many", b"layer %d" % n, media_type=LAYER) for n in range(24)]
    config = source.add_blob("src/many", b"{}", media_type=CONFIG)
    manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
    source.add_manifest("src/many", "1", manifest)
    options = RegistryOptions(max_concurrent_transfers=2)
    async with Copier(options) as copier:
        await copier.copy_image(ref(source, "src/many:1"), ref(target, "backup/many:1"))
    assert len(target.seen("HEAD", "/blobs/")) == 25
    connections = {seen.client_port for seen in target.requests}
    assert 1 < len(connections) <= 2 * 2 + 1
