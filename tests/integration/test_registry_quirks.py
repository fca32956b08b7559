"""The copy engine against registries that answer the way ECR, Docker Hub and others do.

Each test switches on one quirk of the test proxy (`tests/support/quirks.py`) in front of a
real registry and copies an image through it: the copy must succeed (or fail with the
registry's own words), skopeo must read back identical digests, and what the engine learnt
must show in what went over the wire (a refused mount not asked again, a refused streamed
PATCH not sent again, at most `attempts` POSTs per blob against a registry answering 503).
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from image_cloner.backoff import Backoff
from image_cloner.oci.copying import Copier
from image_cloner.oci.errors import RegistryUnavailableError
from image_cloner.oci.references import Reference, parse_reference
from image_cloner.oci.retries import RetryPolicy
from tests.support import skopeo
from tests.support.images import MIB, ImageKind, ImageSeeder, ImageSpec, SyntheticImage
from tests.support.proxy import DOCKER_HUB_RATE_LIMIT, ProxyFactory, RegistryProxy
from tests.support.registries import RegistryEndpoint, RunningRegistry, registry_options
from tests.support.token_issuer import TokenIssuer

pytestmark = pytest.mark.integration

FAST_RETRIES = RetryPolicy(backoff=Backoff(base=0.05, cap=0.2, jitter=0.5))
REPO_ROOT = Path(__file__).resolve().parents[2]
BIG = ImageSpec(kind=ImageKind.SINGLE, layers=2, layer_size=3 * MIB, seed="quirks")
"""Layers above the 1 MiB monolithic limit, so they go through PATCH."""


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}/app:1"


def ref(registry: RegistryEndpoint, name: str) -> Reference:
    return parse_reference(registry.ref(name))


def assert_identical(registry: RegistryEndpoint, name: str, image: SyntheticImage) -> None:
    repo = name.split(":", maxsplit=1)[0]
    assert skopeo.inspect_raw(registry, name) == image.raw
    for child in image.child_digests:
        raw = skopeo.inspect_raw(registry, f"{repo}@{child}")
        assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == child


async def copy_through(
    source: RegistryEndpoint,
    target: RegistryProxy,
    image_name: str,
    *,
    transfers: int = 1,
) -> str:
    target_name = unique("copy")
    opts = dataclasses.replace(registry_options(source, target), max_concurrent_transfers=transfers)
    async with Copier(opts, retry=FAST_RETRIES) as copier:
        result = await copier.copy_image(ref(source, image_name), ref(target, target_name))
    assert not result.already_present
    return target_name


@pytest.fixture
def big_image(
    open_registry: RunningRegistry, seed_image: ImageSeeder
) -> tuple[str, SyntheticImage]:
    name = unique("src")
    return name, seed_image(open_registry, name, BIG)


@pytest.mark.parametrize(
    ("switch", "method"), [({"patch_status": 201}, "PATCH"), ({"manifest_put_status": 202}, "PUT")]
)
async def test_other_success_statuses_are_success(
    open_registry: RunningRegistry,
    proxy_factory: ProxyFactory,
    big_image: tuple[str, SyntheticImage],
    switch: dict[str, int],
    method: str,
) -> None:
    """ECR answers a PATCH with 201; some registries a manifest PUT with 202."""
    target = proxy_factory(open_registry)
    target.set_quirks(**switch)
    name, image = big_image
    copied = await copy_through(open_registry, target, name)
    assert_identical(open_registry, copied, image)
    (status,) = switch.values()
    assert status in {r.status for r in target.requests() if r.method == method}


async def test_a_mount_answered_405_falls_back_to_uploads_and_is_not_asked_again(
    open_registry: RunningRegistry, proxy_factory: ProxyFactory, seed_image: ImageSeeder
) -> None:
    registry = proxy_factory(open_registry)
    registry.set_quirks(mount_status=405)
    name = unique("src")
    image = seed_image(open_registry, name, ImageKind.INDEX)
    opts = registry_options(registry)
    async with Copier(opts, retry=FAST_RETRIES) as copier:  # one process: what it learnt stays
        copied = unique("copy")
        await copier.copy_image(ref(registry, name), ref(registry, copied))  # mounts are tried
        assert_identical(open_registry, copied, image)
        mounts = [r for r in registry.requests() if r.method == "POST" and "mount=" in r.query]
        assert mounts  # the first wave of concurrent blobs asks, and hears 405
        assert {r.status for r in mounts} == {405}
        registry.reset()
        registry.set_quirks(mount_status=405)
        again = unique("again")
        await copier.copy_image(ref(registry, name), ref(registry, again))
        assert_identical(open_registry, again, image)
    assert not [r for r in registry.requests() if "mount=" in r.query]


async def test_a_refused_streamed_patch_switches_to_chunks_for_the_host(
    open_registry: RunningRegistry,
    proxy_factory: ProxyFactory,
    big_image: tuple[str, SyntheticImage],
) -> None:
    target = proxy_factory(open_registry)
    target.set_quirks(require_content_range=True)
    name, image = big_image
    copied = await copy_through(open_registry, target, name)
    assert_identical(open_registry, copied, image)
    patches = [r for r in target.requests() if r.method == "PATCH"]
    # One streamed PATCH refused, then only chunks, for the second layer too.
    assert (patches[0].ranged, patches[0].status) == (False, 400)
    assert all(r.ranged and r.status == 202 for r in patches[1:])
    assert len(patches) == 1 + len(image.manifests[0].layers)


async def test_a_body_limit_shrinks_the_chunks_until_they_fit(
    open_registry: RunningRegistry,
    proxy_factory: ProxyFactory,
    big_image: tuple[str, SyntheticImage],
) -> None:
    target = proxy_factory(open_registry)
    target.set_quirks(max_body=MIB)
    name, image = big_image
    copied = await copy_through(open_registry, target, name)
    assert_identical(open_registry, copied, image)
    accepted = [r for r in target.requests() if r.method == "PATCH" and r.status == 202]
    assert accepted
    assert all(r.ranged for r in accepted)
    assert 413 in {r.status for r in target.requests()}


async def test_an_upload_session_expiring_after_its_first_chunk_is_opened_again(
    open_registry: RunningRegistry,
    proxy_factory: ProxyFactory,
    big_image: tuple[str, SyntheticImage],
) -> None:
    target = proxy_factory(open_registry)
    target.set_quirks(expire_sessions=1)
    name, image = big_image
    copied = await copy_through(open_registry, target, name)
    assert_identical(open_registry, copied, image)
    assert target.count("PUT", r"/blobs/uploads/") > len(image.blobs)  # one commit met a 404
    assert 404 in {r.status for r in target.requests() if r.method == "PUT"}


async def test_a_lost_answer_to_a_commit_that_worked_is_not_a_failure(
    open_registry: RunningRegistry,
    proxy_factory: ProxyFactory,
    big_image: tuple[str, SyntheticImage],
) -> None:
    target = proxy_factory(open_registry)
    target.set_quirks(lose_commits=1)
    name, image = big_image
    copied = await copy_through(open_registry, target, name)
    assert_identical(open_registry, copied, image)


async def test_docker_hub_rate_limits_wait_for_retry_after_then_copy(
    open_registry: RunningRegistry,
    proxy_factory: ProxyFactory,
    big_image: tuple[str, SyntheticImage],
) -> None:
    source = proxy_factory(open_registry)
    source.fail_next(1, status=429, retry_after=1, message=DOCKER_HUB_RATE_LIMIT)
    name, image = big_image
    started = time.monotonic()
    copied = await copy_through(source, proxy_factory(open_registry), name)
    assert time.monotonic() - started >= 1.0
    assert_identical(open_registry, copied, image)


async def test_a_rate_limit_that_lasts_fails_with_docker_hubs_words(
    open_registry: RunningRegistry,
    proxy_factory: ProxyFactory,
    big_image: tuple[str, SyntheticImage],
) -> None:
    source = proxy_factory(open_registry)
    name, _ = big_image
    source.fail_next(1000, status=429, path=r"/blobs/", message=DOCKER_HUB_RATE_LIMIT)
    with pytest.raises(RegistryUnavailableError) as caught:
        await copy_through(source, proxy_factory(open_registry), name)
    assert "429 TOOMANYREQUESTS (You have reached your pull rate limit." in str(caught.value)


async def test_a_registry_answering_503_gets_at_most_attempts_posts_per_blob(
    open_registry: RunningRegistry,
    proxy_factory: ProxyFactory,
    big_image: tuple[str, SyntheticImage],
) -> None:
    """Whole-blob retries and request retries share one budget (it was 5 x 5 per blob)."""
    target = proxy_factory(open_registry)
    target.fail_next(1000, status=503, path=r"/blobs/uploads/$")
    name, image = big_image
    with pytest.raises(RegistryUnavailableError, match="503"):
        await copy_through(open_registry, target, name, transfers=3)
    posts = target.count("POST")
    assert FAST_RETRIES.attempts <= posts <= FAST_RETRIES.attempts * len(image.blobs)


async def test_a_wider_token_grant_serves_later_narrower_requests(
    open_registry: RunningRegistry,
    token_registry: RunningRegistry,
    token_issuer: TokenIssuer,
    big_image: tuple[str, SyntheticImage],
) -> None:
    """Asked for pull (the first HEAD), granted pull and push: the pushes need no new token."""
    name, image = big_image
    target_name = unique("copy")
    before = token_issuer.stats()["tokens_issued"]
    token_issuer.set_wide_scope(True)
    try:
        async with Copier(registry_options(open_registry, token_registry)) as copier:
            await copier.copy_image(ref(open_registry, name), ref(token_registry, target_name))
    finally:
        token_issuer.set_wide_scope(False)
    assert token_issuer.stats()["tokens_issued"] - before == 1
    assert_identical(token_registry, target_name, image)


MEMORY_SCRIPT = """
import asyncio, pathlib, sys
from image_cloner.oci.copying import Copier
from image_cloner.oci.options import RegistryOptions
from image_cloner.oci.references import parse_reference as parse

def peak_mib():
    status = pathlib.Path("/proc/self/status").read_text()
    return next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:")) / 1024

async def main(small, large, target):
    async with Copier(RegistryOptions()) as copier:
        await copier.copy_image(parse(small), parse(target + ":small"))
        before = peak_mib()
        result = await copier.copy_image(parse(large), parse(target + ":large"))
        print(before, peak_mib(), result.bytes_copied)

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.mark.parametrize("switch", [{"require_content_range": True}, {"max_body": 8 * MIB}])
async def test_memory_stays_flat_when_uploading_in_chunks(
    open_registry: RunningRegistry,
    proxy_factory: ProxyFactory,
    seed_image: ImageSeeder,
    switch: dict[str, object],
) -> None:
    """A chunk is a slice of the download, not a buffer: 128 MiB in chunks costs no more."""
    small, large = unique("small"), unique("large")
    seed_image(open_registry, small, ImageKind.SINGLE)
    image = seed_image(open_registry, large, ImageSpec.large(128 * MIB, seed="chunks"))
    target = proxy_factory(open_registry)
    target.set_quirks(**switch)
    args = [open_registry.ref(small), open_registry.ref(large), target.ref(unique("mem")[:-2])]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MEMORY_SCRIPT, *args, cwd=REPO_ROOT, stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    before, after, copied = out.decode().split()
    assert int(copied) == sum(b.size for b in image.blobs) > 128 * MIB
    assert float(after) - float(before) < 40, f"peak RSS grew from {before} to {after} MiB"
    assert any(r.ranged for r in target.requests())
