"""An interrupted copy, against real registries: no upload session is left open."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from image_cloner.backoff import Backoff
from image_cloner.oci.copying import Copier
from image_cloner.oci.references import parse_reference
from image_cloner.oci.retries import RetryPolicy
from tests.support.images import ImageKind, ImageSeeder
from tests.support.proxy import ProxyFactory
from tests.support.registries import RunningRegistry, registry_options

pytestmark = pytest.mark.integration


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def open_uploads(registry: RunningRegistry, repo: str) -> list[Path]:
    """Upload sessions distribution keeps on disk for `repo`.

    A session is its `_uploads/<uuid>/data` file; DELETE removes it (distribution 2.8 then
    leaves a stray `hashstates/` directory behind, which is no open session).
    """
    uploads = registry.data_dir / "docker/registry/v2/repositories" / repo / "_uploads"
    return sorted(uploads.glob("*/data"))


async def eventually(condition: Callable[[], bool], what: str) -> None:
    """Until `condition()` holds (30 s at most), the copy running meanwhile."""
    for _ in range(300):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {what}")


async def wait_for_open_uploads(registry: RunningRegistry, repo: str, count: int) -> None:
    """Until `count` upload sessions are open in `repo`."""
    await eventually(
        lambda: len(open_uploads(registry, repo)) == count,
        f"{count} open upload sessions in {repo}",
    )


async def test_an_interrupted_copy_leaves_no_upload_session_open(
    open_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    """Ctrl-C during a copy (asyncio.run cancels the CLI's task) while every blob transfer
    has its upload session open, waiting to retry a source that answers 503: each session
    is cancelled (DELETE) before the Copier closes, none is left in the registry."""
    source = proxy_factory(open_registry)
    name, repo = f"{unique('src')}/app:1", unique("interrupted") + "/app"
    image = seed_image(open_registry, name, ImageKind.SINGLE)
    source.fail_next(100, status=503, path=r"/blobs/")
    slow_retries = RetryPolicy(backoff=Backoff(base=60, cap=60))

    async def cli() -> None:
        async with Copier(registry_options(source, auth_registry), retry=slow_retries) as copier:
            await copier.copy_image(
                parse_reference(source.ref(name)), parse_reference(auth_registry.ref(f"{repo}:1"))
            )

    task = asyncio.create_task(cli())
    await wait_for_open_uploads(auth_registry, repo, len(image.blobs))
    # A session is on disk before its POST's answer reaches the copy; a transfer GETs its
    # blob only after that answer. Once every blob GET was refused, the copy knows every
    # session (cancelled earlier, a POST still unanswered could not be cancelled by anyone).
    await eventually(
        lambda: source.count("GET", r"/blobs/") >= len(image.blobs),
        "every blob transfer at its source GET",
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert open_uploads(auth_registry, repo) == []


async def test_a_refused_mount_session_waiting_for_a_transfer_slot_is_cancelled_too(
    open_registry: RunningRegistry,
    auth_registry: RunningRegistry,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    """A mount answered 202 opens an upload session before the transfer waits for a slot;
    a copy interrupted during that wait cancels the session as well."""
    source = proxy_factory(open_registry)
    name, first, second = f"{unique('src')}/app:1", unique("home") + "/app", unique("z") + "/app"
    image = seed_image(open_registry, name, ImageKind.SINGLE)
    opts = dataclasses.replace(registry_options(source, auth_registry), max_concurrent_transfers=1)
    async with Copier(opts, retry=RetryPolicy(backoff=Backoff(base=60, cap=60))) as copier:
        src = parse_reference(source.ref(name))
        await copier.copy_image(src, parse_reference(auth_registry.ref(f"{first}:1")))
        # The copier now mounts these blobs from `first`; make those mounts fail (202).
        assert auth_registry.username is not None
        assert auth_registry.password is not None
        tls = auth_registry.ssl_context()
        assert tls is not None
        login = aiohttp.encode_basic_auth(auth_registry.username, auth_registry.password)
        async with aiohttp.ClientSession(headers={"Authorization": login}) as session:
            for digest in image.blob_digests:
                url = f"{auth_registry.url}/v2/{first}/blobs/{digest}"
                async with session.delete(url, ssl=tls) as resp:
                    assert resp.status == 202
        source.fail_next(100, status=503, path=r"/blobs/")
        task = asyncio.create_task(
            copier.copy_image(src, parse_reference(auth_registry.ref(f"{second}:1")))
        )
        await wait_for_open_uploads(auth_registry, second, len(image.blobs))
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert open_uploads(auth_registry, second) == []
