"""The copy engine against real registries, checked by skopeo and counted by the proxy.

Sources are seeded with skopeo; every copy is read back by skopeo (digests of the index and
each child must equal the source's) and copied out again. The counting proxy shows what went
over the wire: one request for an image already there, mounts instead of downloads, shared
downloads for concurrent copies, retries after 429/503, refusal of a lying registry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from aiohttp import web

from image_cloner.backoff import Backoff
from image_cloner.oci.auth import RegistryAuth
from image_cloner.oci.client import RegistryClient
from image_cloner.oci.copying import Copier, TagOutcome
from image_cloner.oci.errors import AuthenticationError, DigestMismatchError
from image_cloner.oci.options import Credentials, ReferrersPolicy, RegistryOptions
from image_cloner.oci.references import Reference, parse_reference
from image_cloner.oci.retries import RetryPolicy
from image_cloner.oci.transport import Transport
from tests.support import skopeo
from tests.support.images import MIB, ImageKind, ImageSeeder, ImageSpec, SyntheticImage
from tests.support.pki import TestPKI
from tests.support.proxy import ProxyFactory
from tests.support.registries import (
    RegistryEndpoint,
    RegistryKind,
    RunningRegistry,
    free_port,
    registry_options,
)
from tests.support.token_issuer import DEFAULT_LIFETIME, READER_PASSWORD, READER_USER, TokenIssuer

pytestmark = pytest.mark.integration

FAST_RETRIES = RetryPolicy(backoff=Backoff(base=0.05, cap=0.2, jitter=0.5))
REPO_ROOT = Path(__file__).resolve().parents[2]


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def ref(registry: RegistryEndpoint, name: str) -> Reference:
    return parse_reference(registry.ref(name))


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def assert_identical(registry: RegistryEndpoint, name: str, image: SyntheticImage) -> None:
    """skopeo reads back the exact top-level bytes and every child by its digest."""
    repo = name.split(":", maxsplit=1)[0].split("@", maxsplit=1)[0]
    assert skopeo.inspect_raw(registry, name) == image.raw
    for child in image.child_digests:
        assert sha256(skopeo.inspect_raw(registry, f"{repo}@{child}")) == child


def assert_not_tagged(registry: RegistryEndpoint, name: str) -> None:
    with pytest.raises(skopeo.SkopeoError):
        skopeo.inspect_raw(registry, name)


def options(*endpoints: RegistryEndpoint) -> RegistryOptions:
    return registry_options(*endpoints)


@pytest.mark.parametrize("target_name", ["auth_registry", "token_registry"])
@pytest.mark.parametrize("kind", list(ImageKind))
async def test_every_image_kind_is_copied_byte_for_byte(
    request: pytest.FixtureRequest, seed_image: ImageSeeder, kind: ImageKind, target_name: str
) -> None:
    open_registry: RunningRegistry = request.getfixturevalue("open_registry")
    target: RunningRegistry = request.getfixturevalue(target_name)
    tmp_path: Path = request.getfixturevalue("tmp_path")
    source_name, target_name_ = f"{unique('src')}/app:1", f"{unique('copy')}/app:1"
    image = seed_image(open_registry, source_name, kind)

    async with Copier(options(open_registry, target)) as copier:
        result = await copier.copy_image(ref(open_registry, source_name), ref(target, target_name_))

    assert result.digest == image.digest
    assert not result.already_present
    assert result.blobs_copied == len(image.blobs)
    assert result.bytes_copied == sum(blob.size for blob in image.blobs)
    assert result.manifests_pushed == len(image.child_digests) + 1
    assert result.pinned.name == f"{target.host}/{target_name_}@{image.digest}"
    assert_identical(target, target_name_, image)
    # ... and the copy is a complete image that another client can pull, every platform.
    skopeo.copy(skopeo.docker_ref(target, target_name_), f"dir:{tmp_path / 'out'}", src=target)
    assert (tmp_path / "out" / "manifest.json").read_bytes() == image.raw


async def test_an_image_already_there_costs_one_request(
    open_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    target = proxy_factory(auth_registry)
    source_name, target_name = f"{unique('src')}/app:1", f"{unique('copy')}/app:1"
    image = seed_image(open_registry, source_name, ImageKind.INDEX)
    source = ref(open_registry, source_name)
    async with Copier(options(open_registry, target)) as copier:
        await copier.copy_image(source, ref(target, target_name))

    for name in (target_name, f"{target_name.split(':', maxsplit=1)[0]}@{image.digest}"):
        target.reset()
        # A fresh Copier, as a new process would be: no cached auth, no cached scheme.
        async with Copier(options(open_registry, target)) as copier:
            result = await copier.copy_image(source, ref(target, name))
        assert result.already_present
        assert result.digest == image.digest
        assert [(r.method, r.status) for r in target.requests()] == [("HEAD", 200)]


async def test_token_registry_second_copy_reuses_the_cached_token(
    open_registry: RunningRegistry,
    token_registry: RunningRegistry,
    token_issuer: TokenIssuer,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    target = proxy_factory(token_registry)
    source_name, target_name = f"{unique('src')}/app:1", f"{unique('copy')}/app:1"
    seed_image(open_registry, source_name, ImageKind.INDEX)
    async with Copier(options(open_registry, target)) as copier:
        await copier.copy_image(ref(open_registry, source_name), ref(target, target_name))
        issued = token_issuer.stats()["tokens_issued"]
        target.reset()
        result = await copier.copy_image(ref(open_registry, source_name), ref(target, target_name))
    assert result.already_present
    assert target.count() == 1
    assert token_issuer.stats()["tokens_issued"] == issued


async def test_an_existing_tag_is_never_moved_to_other_bits_unless_asked(
    open_registry: RunningRegistry, auth_registry: RunningRegistry, seed_image: ImageSeeder
) -> None:
    repo, target_name = unique("src") + "/app", f"{unique('copy')}/app:1"
    first = seed_image(open_registry, f"{repo}:1", ImageKind.INDEX, seed="first")
    second = seed_image(open_registry, f"{repo}:2", ImageKind.INDEX, seed="second")
    target = ref(auth_registry, target_name)
    untagged = f"{target_name.split(':', maxsplit=1)[0]}@{second.digest}"
    async with Copier(options(open_registry, auth_registry)) as copier:
        pushed = await copier.copy_image(ref(open_registry, f"{repo}:1"), target)
        assert (pushed.tag, pushed.tag_digest) == (TagOutcome.PUSHED, first.digest)
        kept = await copier.copy_image(ref(open_registry, f"{repo}:2"), target)
        assert (kept.digest, kept.already_present) == (second.digest, False)
        assert (kept.tag, kept.tag_digest) == (TagOutcome.KEPT, first.digest)
        # skopeo, independently: the tag still holds the first image, the second is
        # complete under its digest.
        assert_identical(auth_registry, target_name, first)
        assert_identical(auth_registry, untagged, second)
        pinned = ref(open_registry, f"{repo}:2@{second.digest}")
        again = await copier.copy_image(pinned, target.with_digest(second.digest))
        assert (again.already_present, again.tag) == (True, TagOutcome.KEPT)
        moved = await copier.copy_image(ref(open_registry, f"{repo}:2"), target, move_tag=True)
    assert (moved.tag, moved.tag_digest) == (TagOutcome.PUSHED, second.digest)
    assert_identical(auth_registry, target_name, second)


async def test_a_second_repository_mounts_instead_of_downloading(
    open_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    source = proxy_factory(open_registry)
    source_name = f"{unique('src')}/app:1"
    image = seed_image(open_registry, source_name, ImageKind.DOCKER_LIST)
    first, second = f"{unique('a')}/app:1", f"{unique('b')}/app:1"
    async with Copier(options(source, auth_registry)) as copier:
        await copier.copy_image(ref(source, source_name), ref(auth_registry, first))
        source.reset()
        result = await copier.copy_image(ref(source, source_name), ref(auth_registry, second))
    assert result.blobs_mounted == len(image.blobs)
    assert result.blobs_copied == 0
    assert source.count("GET", r"/blobs/") == 0
    assert_identical(auth_registry, second, image)


async def test_a_copy_within_one_registry_mounts_from_the_source(
    open_registry: RunningRegistry, seed_image: ImageSeeder, proxy_factory: ProxyFactory
) -> None:
    registry = proxy_factory(open_registry)
    source_name, target_name = f"{unique('src')}/app:1", f"{unique('copy')}/app:1"
    image = seed_image(open_registry, source_name, ImageKind.INDEX)
    async with Copier(options(registry)) as copier:
        result = await copier.copy_image(ref(registry, source_name), ref(registry, target_name))
    assert result.blobs_mounted == len(image.blobs)
    assert registry.count("GET", r"/blobs/") == 0
    assert registry.count("PATCH") == 0
    assert_identical(open_registry, target_name, image)


async def test_concurrent_copies_share_downloads(
    open_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    source = proxy_factory(open_registry)
    source_name, repo = f"{unique('src')}/app:1", unique("copy") + "/app"
    image = seed_image(open_registry, source_name, ImageKind.INDEX)
    src = ref(source, source_name)
    async with Copier(options(source, auth_registry)) as copier:
        results = await asyncio.gather(
            copier.copy_image(src, ref(auth_registry, f"{repo}:1")),
            copier.copy_image(src, ref(auth_registry, f"{repo}:1")),
            copier.copy_image(src, ref(auth_registry, f"{repo}:1")),
            copier.copy_image(src, ref(auth_registry, f"{repo}:2")),  # same blobs, other tag
        )
    assert {r.digest for r in results} == {image.digest}
    blob_gets = [r for r in source.requests() if r.method == "GET" and "/blobs/" in r.path]
    assert sorted(r.path.rsplit("/", 1)[1] for r in blob_gets) == sorted(image.blob_digests)
    assert source.count("GET", r"/manifests/sha256:") == len(image.child_digests)
    for tag in ("1", "2"):
        assert_identical(auth_registry, f"{repo}:{tag}", image)


async def test_a_registry_that_lies_about_a_blob_fails_the_copy_and_tags_nothing(
    open_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    source = proxy_factory(open_registry)
    source_name, target_name = f"{unique('src')}/app:1", f"{unique('copy')}/app:1"
    image = seed_image(open_registry, source_name, ImageKind.INDEX)
    bad = image.manifests[1].layers[0]
    source.corrupt_blob(bad.digest)
    async with Copier(options(source, auth_registry)) as copier:
        with pytest.raises(DigestMismatchError, match=bad.digest):
            await copier.copy_image(ref(source, source_name), ref(auth_registry, target_name))
    assert_not_tagged(auth_registry, target_name)
    # The corrupted blob was fetched once: a lie is not retried into the registry.
    assert source.count("GET", bad.digest) == 1


async def test_throttling_and_outages_are_retried(
    open_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    source, target = proxy_factory(open_registry), proxy_factory(auth_registry)
    source_name, target_name = f"{unique('src')}/app:1", f"{unique('copy')}/app:1"
    image = seed_image(open_registry, source_name, ImageKind.INDEX)
    target.fail_next(2, status=429, retry_after=1)
    source.fail_next(3, status=503, path=r"/blobs/")
    opts = dataclasses.replace(options(source, target), max_concurrent_transfers=1)
    async with Copier(opts, retry=FAST_RETRIES) as copier:
        result = await copier.copy_image(ref(source, source_name), ref(target, target_name))
    assert result.digest == image.digest
    assert [r.status for r in target.requests()][:2] == [429, 429]
    assert sum(r.status == 503 for r in source.requests()) == 3
    assert_identical(auth_registry, target_name, image)


async def test_retries_give_up_with_an_unavailable_error(
    open_registry: RunningRegistry, seed_image: ImageSeeder, proxy_factory: ProxyFactory
) -> None:
    source = proxy_factory(open_registry)
    source_name = f"{unique('src')}/app:1"
    seed_image(open_registry, source_name, ImageKind.SINGLE)
    source.fail_next(100, status=503)
    async with Copier(options(source), retry=FAST_RETRIES) as copier:
        with pytest.raises(Exception, match="503") as caught:
            await copier.copy_image(ref(source, source_name), ref(source, f"{unique('c')}/app:1"))
    assert type(caught.value).__name__ == "RegistryUnavailableError"
    assert source.count() == FAST_RETRIES.attempts


@pytest.mark.parametrize("target_name", ["auth_registry", "token_registry"])
async def test_a_wrong_password_fails_without_revealing_it(
    request: pytest.FixtureRequest,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
    target_name: str,
) -> None:
    target: RunningRegistry = request.getfixturevalue(target_name)
    source_name, copy_name = f"{unique('src')}/app:1", f"{unique('copy')}/app:1"
    seed_image(open_registry, source_name, ImageKind.SINGLE)
    secret = "Wr0ng-Pa55word"
    opts = dataclasses.replace(
        options(open_registry, target), credentials={target.host: Credentials("testuser", secret)}
    )
    async with Copier(opts) as copier:
        with pytest.raises(AuthenticationError) as caught:
            await copier.copy_image(ref(open_registry, source_name), ref(target, copy_name))
    message = str(caught.value)
    assert target.host in message
    assert secret not in message
    assert "refused" in message
    assert_not_tagged(target, copy_name)


async def test_push_access_is_checked_without_pushing(
    token_registry: RunningRegistry, auth_registry: RunningRegistry
) -> None:
    repo = parse_reference(token_registry.ref(f"{unique('check')}/app")).repository
    async with Copier(options(token_registry)) as copier:
        await copier.check_push_access(repo)
    reader = dataclasses.replace(
        options(token_registry),
        credentials={token_registry.host: Credentials(READER_USER, READER_PASSWORD)},
    )
    async with Copier(reader) as copier:
        with pytest.raises(AuthenticationError):
            await copier.check_push_access(repo)
    wrong = dataclasses.replace(
        options(auth_registry), credentials={auth_registry.host: Credentials("testuser", "nope")}
    )
    async with Copier(wrong) as copier:
        with pytest.raises(AuthenticationError):
            await copier.check_push_access(parse_reference(auth_registry.ref("x/y")).repository)


async def test_an_expired_token_is_renewed_after_a_401(
    open_registry: RunningRegistry,
    token_registry: RunningRegistry,
    token_issuer: TokenIssuer,
    seed_image: ImageSeeder,
) -> None:
    """The registry rejects a token our (frozen) clock still trusts: we renew on the 401."""
    name = f"{unique('renew')}/app:1"
    seed_image(token_registry, name, ImageKind.SINGLE)
    token_issuer.set_lifetime(2)
    opts = options(token_registry)
    auth = RegistryAuth(opts.credentials, clock=lambda: 0.0)
    try:
        async with Transport(opts, middlewares=[auth]) as transport:
            client = RegistryClient(transport, ref(token_registry, name).repository)
            first = await client.manifest_digest("1")
            issued = token_issuer.stats()["tokens_issued"]
            await asyncio.sleep(3)
            assert await client.manifest_digest("1") == first
            assert token_issuer.stats()["tokens_issued"] == issued + 1
    finally:
        token_issuer.set_lifetime(DEFAULT_LIFETIME)


async def test_short_lived_tokens_are_renewed_before_they_expire(
    open_registry: RunningRegistry,
    token_registry: RunningRegistry,
    token_issuer: TokenIssuer,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    target = proxy_factory(token_registry)
    source_name, repo = f"{unique('src')}/app:1", unique("copy") + "/app"
    image = seed_image(open_registry, source_name, ImageKind.INDEX)
    token_issuer.set_lifetime(2)
    try:
        async with Copier(options(open_registry, target)) as copier:
            await copier.copy_image(ref(open_registry, source_name), ref(target, f"{repo}:1"))
            await asyncio.sleep(2.5)
            target.reset()
            await copier.copy_image(ref(open_registry, source_name), ref(target, f"{repo}:2"))
    finally:
        token_issuer.set_lifetime(DEFAULT_LIFETIME)
    assert all(r.status != 401 for r in target.requests())
    assert_identical(token_registry, f"{repo}:2", image)


async def test_pulls_go_to_a_mirror_first_with_names_unchanged(
    open_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    """The source host serves nothing at all; its mirror has the image under the same name."""
    mirror = proxy_factory(open_registry)
    name, copy_name = f"{unique('mirrored')}/app:1", f"{unique('copy')}/app:1"
    image = seed_image(open_registry, name, ImageKind.INDEX)
    dead_host = "127.0.0.1:9"  # discard port: nothing listens
    opts = dataclasses.replace(options(auth_registry), mirrors={dead_host: (mirror.url,)})
    async with Copier(opts) as copier:
        result = await copier.copy_image(
            parse_reference(f"{dead_host}/{name}"), ref(auth_registry, copy_name)
        )
    assert result.digest == image.digest
    assert mirror.count("GET", r"/blobs/") == len(image.blobs)
    assert_identical(auth_registry, copy_name, image)


async def test_a_mirror_without_the_image_falls_back_to_the_registry(
    open_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    mirror = proxy_factory(open_registry)  # holds nothing under this name
    name, copy_name = f"{unique('direct')}/app:1", f"{unique('copy')}/app:1"
    image = seed_image(auth_registry, name, ImageKind.SINGLE)
    opts = dataclasses.replace(options(auth_registry), mirrors={auth_registry.host: (mirror.url,)})
    async with Copier(opts) as copier:
        result = await copier.copy_image(ref(auth_registry, name), ref(open_registry, copy_name))
    assert result.digest == image.digest
    # Like containerd, every read asks the mirror first; names stay the same everywhere.
    assert mirror.count("GET", r"/manifests/1$") == 1
    assert mirror.count("GET", r"/blobs/") == len(image.blobs)
    assert {r.status for r in mirror.requests()} == {404}
    assert_identical(open_registry, copy_name, image)


MEMORY_SCRIPT = """
import asyncio, pathlib, sys
from image_cloner.oci.copying import Copier
from image_cloner.oci.options import Credentials, RegistryOptions
from image_cloner.oci.references import parse_reference as parse

def peak_mib():
    # VmHWM, not ru_maxrss: Linux carries the peak RSS of the forked copy of pytest over
    # exec into ru_maxrss, which would hide (or fake) this process's own growth.
    status = pathlib.Path("/proc/self/status").read_text()
    return next(int(l.split()[1]) for l in status.splitlines() if l.startswith("VmHWM:")) / 1024

async def main(small, large, target, ca_file, user, password):
    login = {target.split("/")[0]: Credentials(user, password)}
    options = RegistryOptions(credentials=login, ca_file=pathlib.Path(ca_file))
    async with Copier(options) as copier:
        await copier.copy_image(parse(small), parse(target + ":small"))
        before = peak_mib()
        result = await copier.copy_image(parse(large), parse(target + ":large"))
        print(before, peak_mib(), result.bytes_copied)

asyncio.run(main(*sys.argv[1:]))
"""


async def test_memory_stays_flat_for_a_large_layer(
    open_registry: RunningRegistry, auth_registry: RunningRegistry, seed_image: ImageSeeder
) -> None:
    """Peak RSS of a fresh process grows by far less than the 256 MiB layer it copies.

    The baseline is the peak after a small copy in the same process (imports, TLS, session),
    so the difference is what the large layer costs: buffers, not the layer.
    """
    small, large = f"{unique('small')}/app:1", f"{unique('large')}/app:1"
    seed_image(open_registry, small, ImageKind.SINGLE)
    image = seed_image(open_registry, large, ImageSpec.large(256 * MIB, seed="memory"))
    assert auth_registry.ca_file is not None
    assert auth_registry.password is not None
    args = [
        open_registry.ref(small),
        open_registry.ref(large),
        auth_registry.ref(unique("memory") + "/app"),
        str(auth_registry.ca_file),
        "testuser",
        auth_registry.password,
    ]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", MEMORY_SCRIPT, *args, cwd=REPO_ROOT, stdout=subprocess.PIPE
    )
    out, _ = await proc.communicate()
    assert proc.returncode == 0
    before, after, copied = out.decode().split()
    assert int(copied) == sum(b.size for b in image.blobs) > 256 * MIB
    assert float(after) - float(before) < 40, f"peak RSS grew from {before} to {after} MiB"


async def test_blob_downloads_follow_storage_redirects_without_credentials(
    tmp_path: Path,
    test_pki: TestPKI,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
) -> None:
    """An htpasswd registry redirects blob GETs to its storage (S3-style, distribution's
    `redirect` middleware) on another origin; the bytes are fetched there, never with our
    Authorization header."""
    source = RunningRegistry(tmp_path / "redirecting", kind=RegistryKind.HTPASSWD, pki=test_pki)
    seen: list[tuple[str, str | None]] = []

    async def serve(request: web.Request) -> web.StreamResponse:
        seen.append((request.path, request.headers.get("Authorization")))
        return web.FileResponse(source.data_dir / request.match_info["path"])

    app = web.Application()
    app.router.add_get("/{path:.*}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    storage_port = free_port()
    await web.TCPSite(runner, "127.0.0.1", storage_port).start()
    config = json.loads(source.config_file.read_text())
    # Another origin than the registry's 127.0.0.1: aiohttp must drop Authorization on the hop.
    baseurl = f"http://localhost:{storage_port}/"
    config["middleware"] = {"storage": [{"name": "redirect", "options": {"baseurl": baseurl}}]}
    source.config_file.write_text(json.dumps(config))
    try:
        await asyncio.to_thread(source.start)
        name = f"{unique('redirect')}/app:1"
        image = await asyncio.to_thread(seed_image, source, name, ImageKind.INDEX)
        async with Copier(options(source, open_registry)) as copier:
            result = await copier.copy_image(ref(source, name), ref(open_registry, name))
    finally:
        await asyncio.to_thread(source.stop)
        await runner.cleanup()
    assert result.blobs_copied == len(image.blobs)
    assert len(seen) == len(image.blobs)
    assert all(authorization is None for _, authorization in seen)
    assert_identical(open_registry, name, image)


async def test_a_failing_mirror_is_tried_once_per_read_then_skipped(
    open_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    mirror = proxy_factory(open_registry)
    mirror.fail_next(1000, status=503)
    name, copy_name = f"{unique('direct')}/app:1", f"{unique('copy')}/app:1"
    image = seed_image(auth_registry, name, ImageKind.INDEX)
    # Without referrer lookups, whose 503s would open the mirror's circuit breaker mid-count.
    opts = dataclasses.replace(
        options(auth_registry),
        mirrors={auth_registry.host: (mirror.url,)},
        referrers=ReferrersPolicy(enabled=False),
    )
    async with Copier(opts) as copier:
        result = await copier.copy_image(ref(auth_registry, name), ref(open_registry, copy_name))
    assert result.digest == image.digest
    reads = 1 + len(image.child_digests) + len(image.blobs)
    assert [r.status for r in mirror.requests()] == [503] * reads  # no retries on a mirror
