"""The copy engine's limits on what a source sends, against a real target registry."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid

import pytest
from aiohttp import web

from image_cloner.oci.copying import Copier
from image_cloner.oci.errors import DigestMismatchError
from image_cloner.oci.manifests import OCI_MANIFEST
from image_cloner.oci.references import parse_reference
from tests.support import skopeo
from tests.support.images import MIB
from tests.support.registries import RunningRegistry, free_port, registry_options

pytestmark = pytest.mark.integration


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


async def test_a_blob_stream_longer_than_its_descriptor_fails_at_once(
    open_registry: RunningRegistry,
) -> None:
    """A source streams a blob without Content-Length and does not stop at its size: the
    copy fails as soon as more bytes than the descriptor's size arrived. (It used to send
    the first `size` bytes, which the registry took as the whole upload; the stream was cut
    before our digest check ran, and the image was tagged.)"""
    config = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [],
        }
    ).encode()
    sent = 0

    async def serve_manifest(request: web.Request) -> web.Response:
        return web.Response(body=manifest, content_type=OCI_MANIFEST)

    async def serve_endless_blob(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(config)
        while sent < 4 * 1024 * MIB:  # only a bound for the test: "forever"
            await response.write(b"x" * MIB)
            sent += MIB
        return response

    app = web.Application()
    app.router.add_get("/v2/app/manifests/1", serve_manifest)
    app.router.add_get(f"/v2/app/blobs/{config_digest}", serve_endless_blob)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    target = f"{unique('endless')}/app:1"
    try:
        async with Copier(registry_options(open_registry)) as copier:
            copy = copier.copy_image(
                parse_reference(f"127.0.0.1:{port}/app:1"),
                parse_reference(open_registry.ref(target)),
            )
            with pytest.raises(DigestMismatchError, match=config_digest):
                await asyncio.wait_for(copy, 20)
    finally:
        await runner.cleanup()
    assert sent < 64 * MIB
    with pytest.raises(skopeo.SkopeoError):
        skopeo.inspect_raw(open_registry, target)
