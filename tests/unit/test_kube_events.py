"""`Kube.record_event`: the controller's Events go out in the background, as client-go's.

A pass must not wait for its report, and a report that cannot be posted is a WARNING, not an
error of the work. Against a real aiohttp server on loopback that can be told to refuse.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from image_cloner.controller.kube import Kube
from image_cloner.controller.kubeconfig import Endpoint, StaticIdentity
from tests.support.loopback import serving

WORKLOAD = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "demo", "uid": "u-1", "resourceVersion": "7"},
    "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1"}]}}},
}


class Apiserver:
    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.refuse = False
        self.hold = asyncio.Event()
        self.hold.set()

    async def handle(self, request: web.Request) -> web.Response:
        await self.hold.wait()
        if self.refuse:
            status = {"kind": "Status", "reason": "Forbidden", "message": "events is forbidden"}
            return web.json_response(status, status=403)
        body = await request.json()
        self.events.append(body)
        return web.json_response({**body, "metadata": {"name": f"web.{len(self.events)}"}})


@pytest.fixture
async def served() -> AsyncIterator[tuple[Apiserver, Kube]]:
    server = Apiserver()
    app = web.Application()
    app.router.add_post("/api/v1/namespaces/{ns}/events", server.handle)
    async with serving(app) as url:
        kube = Kube(Endpoint(server=url, source=StaticIdentity()))
        try:
            yield server, kube
        finally:
            await kube.close()


async def test_an_event_is_sent_in_the_background_and_flushed_on_close(
    served: tuple[Apiserver, Kube],
) -> None:
    server, kube = served
    server.hold.clear()  # the apiserver is slow
    kube.record_event(WORKLOAD, reason="ImagesCloned", message="nginx:1 → backup/nginx:1")
    await asyncio.sleep(0.05)
    assert server.events == [], "record_event returned before anything was posted"
    server.hold.set()
    for _ in range(100):
        if server.events:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.01)
    # No sender waits idle: kopf's shutdown waits (5 s) for every task still running.
    senders = [t for t in asyncio.all_tasks() if "EventRecorder." in repr(t.get_coro())]
    assert senders == []
    await kube.close()
    [event] = server.events
    assert event["reason"] == "ImagesCloned"
    assert event["involvedObject"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "web",
        "namespace": "demo",
        "uid": "u-1",
        "resourceVersion": "7",
    }


async def test_a_refused_event_is_a_warning_not_an_error(
    served: tuple[Apiserver, Kube], caplog: pytest.LogCaptureFixture
) -> None:
    server, kube = served
    server.refuse = True
    with caplog.at_level(logging.WARNING):
        kube.record_event(WORKLOAD, reason="CloneFailed", message="down", warning=True)
        await kube.close()
    lines = [json.dumps(r.__dict__, default=str) for r in caplog.records]
    assert any("cannot post event" in line and "forbidden" in line for line in lines), lines
    assert server.events == []
