"""A fleet of Ready Deployments on the test bed, and the cluster-admin client that builds it.

`kubectl` is a process per call: a thousand Deployments and their pods' status patches
through it would take minutes of the two cores the benchmark measures on. So the fleet is
built, watched and counted over one aiohttp session as the test bed's cluster-admin (its
client certificate), a few requests at a time.

KWOK runs no containers, so its pods report no `imageID`. Like the e2e tests
(`tests/e2e/test_pinning.py`), the fleet's pods report their digest the way a kubelet
does: a merge patch of the pod's status subresource, in containerd's format, once the pod
is Ready (KWOK's pod-ready stage only fires while a pod is Pending, so it leaves the
digest alone). That is one PATCH per pod, sent 16 at a time: seconds for a thousand, and
the controller then meets what it meets on a real cluster, pods that say what they run.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Self

import aiohttp
from tests.support.pki import ControlPlanePKI
from tests.support.testbed import Testbed

from image_cloner.workloads import is_ready

__all__ = ["Cluster", "Fleet", "Member", "Rewrites", "gather_limited"]

CONCURRENCY = 16
"""Requests in flight while building the fleet: enough to keep the apiserver busy."""
PAGE = 500
DEPLOYMENTS = "/apis/apps/v1/deployments"
ANNOTATION = "image-cloner.io/original-images"

JsonObject = dict[str, Any]


class Cluster:
    """The test bed's apiserver as cluster-admin, over one aiohttp session."""

    def __init__(self, testbed: Testbed) -> None:
        self._server = testbed.server
        certs = ControlPlanePKI.at(testbed.pki)
        self._ssl = ssl.create_default_context(cafile=str(certs.ca_cert))
        self._ssl.load_cert_chain(certs.admin_cert, certs.admin_key)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        connector = aiohttp.TCPConnector(ssl=self._ssl, limit=CONCURRENCY * 2)
        self._session = aiohttp.ClientSession(connector=connector)
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> JsonObject:
        assert self._session is not None, "use Cluster as an async context manager"
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type, "Accept": "application/json"}
        async with self._session.request(
            method, f"{self._server}{path}", data=data, headers=headers, params=params
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise RuntimeError(f"{method} {path}: {response.status} {text[:300]}")
            result: JsonObject = json.loads(text)
            return result

    async def list(self, path: str, **params: str) -> tuple[list[JsonObject], str]:
        """Every item of a collection, page by page; (items, resourceVersion of the list)."""
        items: list[JsonObject] = []
        token = ""
        while True:
            query = {"limit": str(PAGE), **params, **({"continue": token} if token else {})}
            page = await self.call("GET", path, params=query)
            items.extend(page.get("items") or [])
            token = page["metadata"].get("continue") or ""
            if not token:
                return items, str(page["metadata"]["resourceVersion"])

    async def watch(self, path: str, resource_version: str) -> AsyncIterator[JsonObject]:
        """Watch events of a collection from `resource_version` on, until cancelled."""
        assert self._session is not None
        params = {"watch": "1", "resourceVersion": resource_version}
        timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
        async with self._session.get(
            f"{self._server}{path}", params=params, timeout=timeout
        ) as response:
            response.raise_for_status()
            async for line in response.content:
                if line.strip():
                    yield json.loads(line)


async def gather_limited(works: Iterable[Callable[[], Awaitable[object]]]) -> None:
    """Run the works, `CONCURRENCY` at a time; the first failure fails them all."""
    slots = asyncio.Semaphore(CONCURRENCY)

    async def one(work: Callable[[], Awaitable[object]]) -> None:
        async with slots:
            await work()

    async with asyncio.TaskGroup() as group:
        for work in works:
            group.create_task(one(work))


@dataclass(frozen=True)
class Member:
    """One Deployment of the fleet and the image it runs."""

    namespace: str
    name: str
    image: str
    """As the Deployment names it, by tag."""
    image_id: str
    """What its pod reports: `repository@digest`."""


class Fleet:
    """N one-replica Deployments spread over namespaces, made Ready, pods reporting digests."""

    def __init__(self, cluster: Cluster, members: list[Member]) -> None:
        self.cluster = cluster
        self.members = members

    @property
    def namespaces(self) -> list[str]:
        return sorted({m.namespace for m in self.members})

    async def create(self) -> None:
        await gather_limited(
            partial(
                self.cluster.call,
                "POST",
                f"/apis/apps/v1/namespaces/{m.namespace}/deployments",
                body=_deployment(m),
            )
            for m in self.members
        )

    async def wait_ready(self, *, limit: float, poll: float = 2.0) -> None:
        """Until every Deployment's rollout is complete (what the controller waits for too)."""
        deadline = time.monotonic() + limit
        while True:
            items, _ = await self.cluster.list(DEPLOYMENTS, labelSelector="bench=scale")
            ready = sum(1 for item in items if is_ready(_typed(item)).ready)
            if ready >= len(self.members):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{ready} of {len(self.members)} Deployments Ready")
            await asyncio.sleep(poll)

    async def report_image_ids(self) -> int:
        """Each pod reports its digest, as a kubelet would; returns the pods patched."""
        by_app = {(m.namespace, m.name): m for m in self.members}
        pods, _ = await self.cluster.list("/api/v1/pods", labelSelector="bench=scale")
        patches: list[Callable[[], Awaitable[object]]] = []
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp"):
                continue
            member = by_app[(meta["namespace"], meta["labels"]["app"])]
            statuses = pod["status"]["containerStatuses"]
            for status in statuses:
                status["imageID"] = member.image_id
            path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
            body = {"status": {"containerStatuses": statuses}}
            patches.append(
                partial(
                    self.cluster.call,
                    "PATCH",
                    path,
                    body=body,
                    content_type="application/merge-patch+json",
                )
            )
        await gather_limited(patches)
        return len(patches)

    async def generations(self) -> dict[tuple[str, str], int]:
        """Each Deployment's `metadata.generation`: it grows by one per patch of its spec."""
        items, _ = await self.cluster.list(DEPLOYMENTS, labelSelector="bench=scale")
        return {
            (i["metadata"]["namespace"], i["metadata"]["name"]): int(i["metadata"]["generation"])
            for i in items
        }


class Rewrites:
    """Watches the fleet and notes when each Deployment was first seen rewritten."""

    def __init__(self, cluster: Cluster, *, backup_host: str, expected: int) -> None:
        self._cluster = cluster
        self._prefix = f"{backup_host}/"
        self._expected = expected
        self.when: dict[tuple[str, str], float] = {}
        self.done = asyncio.Event()

    async def follow(self, resource_version: str) -> None:
        async for event in self._cluster.watch(DEPLOYMENTS, resource_version):
            obj = event.get("object") or {}
            meta = obj.get("metadata") or {}
            if event.get("type") != "MODIFIED" or "bench" not in (meta.get("labels") or {}):
                continue
            key = (meta["namespace"], meta["name"])
            containers = obj["spec"]["template"]["spec"]["containers"]
            if key not in self.when and all(
                c["image"].startswith(self._prefix) for c in containers
            ):
                self.when[key] = time.monotonic()
                if len(self.when) >= self._expected:
                    self.done.set()


def _deployment(member: Member) -> JsonObject:
    labels = {"app": member.name, "bench": "scale"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": member.name, "namespace": member.namespace, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": member.name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "app", "image": member.image}]},
            },
        },
    }


def _typed(item: JsonObject) -> JsonObject:
    # Lists leave out each item's kind; readiness looks at it.
    return {"kind": "Deployment", "apiVersion": "apps/v1", **item}
