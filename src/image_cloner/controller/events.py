"""Events on the objects we act on: posted now, or recorded and sent in the background.

The controller records (`record`): its passes never wait for their report, as with
client-go's EventRecorder (a queue of `EVENT_QUEUE`, `EVENT_SENDERS` senders, a WARNING for
one that cannot be posted, a flush of `EVENT_FLUSH` seconds on close). `revert` posts
(`post`) and says in its table whether the Event went out. Either way an identical Event
within `EVENT_SERIES_WINDOW` counts up the one already posted (`count`, `lastTimestamp`)
instead of piling up, as the kubelet's and client-go's correlator do.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from image_cloner.controller.kube_errors import KubeApiError, NotFound
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.workloads import KINDS

__all__ = ["COMPONENT", "EventRecorder"]

logger = logging.getLogger(CONTROLLER_LOGGER)

COMPONENT = "image-cloner"
"""Our name as the reporting component of Events and the value of the managed-by label."""

EVENT_SERIES_WINDOW = 600.0
"""Seconds during which an identical Event is counted up instead of posted again."""

EVENT_CACHE_SIZE = 4096

EVENT_QUEUE = 1000
"""Events waiting to be sent at most (client-go's `maxQueuedEvents`); more are dropped."""

EVENT_SENDERS = 4
"""Events sent at once by `record`'s background senders (started while any are queued)."""

EVENT_FLUSH = 5.0
"""Seconds `close` waits for queued Events to go out."""


class ApiCall(Protocol):
    """`Kube._call`: one request to the apiserver, its JSON answer."""

    def __call__(
        self, method: str, path: str, *, body: object = ..., content_type: str = ...
    ) -> Awaitable[dict[str, Any]]: ...


@dataclass(frozen=True)
class _EventSeries:
    name: str
    count: int
    first_seen: float


class EventRecorder:
    """Posts Events through `call`, counting repeats up; `record` queues them."""

    def __init__(self, call: ApiCall, *, instance: str) -> None:
        self._call = call
        self._instance = instance
        self._events: OrderedDict[tuple[str, ...], _EventSeries] = OrderedDict()
        self._outbox: deque[tuple[dict[str, Any], str, str, bool]] = deque()
        self._senders: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        """Let the senders finish what is queued (`EVENT_FLUSH` seconds at most)."""
        if self._senders:
            await asyncio.wait(self._senders, timeout=EVENT_FLUSH)
        for sender in self._senders:
            sender.cancel()
        await asyncio.gather(*self._senders, return_exceptions=True)

    def record(
        self, obj: Mapping[str, Any], *, reason: str, message: str, warning: bool = False
    ) -> None:
        """Queue an Event on `obj`, sent in the background: the controller's way, as with
        client-go's EventRecorder. A pass never waits for its report, and a failed post is
        a WARNING (`cannot post event`), never an error of the work it reports."""
        if len(self._outbox) >= EVENT_QUEUE:
            log_event(logger, logging.WARNING, "event dropped", event=reason, queued=EVENT_QUEUE)
            return
        # Only what the Event names is kept, not the whole object.
        meta = obj["metadata"]
        about = {
            "apiVersion": obj.get("apiVersion"),
            "kind": obj["kind"],
            "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid", "resourceVersion")},
        }
        self._outbox.append((about, reason, message, warning))
        if len(self._senders) < EVENT_SENDERS:
            # Senders exist only while there is something to send: an idle one would hold up
            # kopf's shutdown, which waits for every task of the loop.
            sender = asyncio.create_task(self._send_queued())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)

    async def _send_queued(self) -> None:
        while self._outbox:
            about, reason, message, warning = self._outbox.popleft()
            try:
                await self.post(about, reason=reason, message=message, warning=warning)
            except KubeApiError as e:
                log_event(logger, logging.WARNING, "cannot post event", event=reason, error=str(e))

    async def post(
        self,
        obj: Mapping[str, Any],
        *,
        reason: str,
        message: str,
        warning: bool = False,
    ) -> None:
        """Post an Event on `obj` now (raises `KubeApiError`); a repeat within a while counts
        up the same Event. `revert` uses it to say in its table whether the Event went out."""
        meta = obj["metadata"]
        namespace = meta["namespace"]
        event_type = "Warning" if warning else "Normal"
        key = (namespace, meta["uid"], event_type, reason, message)
        now = time.monotonic()
        series = self._events.get(key)
        recent = series is not None and now - series.first_seen < EVENT_SERIES_WINDOW
        if series is not None and recent and await self._count_up(namespace, series):
            self._events[key] = _EventSeries(series.name, series.count + 1, series.first_seen)
            self._events.move_to_end(key)
            return
        stamp = _timestamp()
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta['name']}.", "namespace": namespace},
            "involvedObject": {
                "apiVersion": obj.get("apiVersion") or KINDS[obj["kind"]].api_version,
                "kind": obj["kind"],
                "name": meta["name"],
                "namespace": namespace,
                "uid": meta["uid"],
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "count": 1,
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "reportingInstance": self._instance[:128],
        }
        created = await self._call("POST", f"/api/v1/namespaces/{namespace}/events", body=event)
        self._events[key] = _EventSeries(created["metadata"]["name"], 1, now)
        if len(self._events) > EVENT_CACHE_SIZE:
            self._events.popitem(last=False)

    async def _count_up(self, namespace: str, series: _EventSeries) -> bool:
        patch = {"count": series.count + 1, "lastTimestamp": _timestamp()}
        try:
            await self._call(
                "PATCH",
                f"/api/v1/namespaces/{namespace}/events/{series.name}",
                body=patch,
                content_type="application/merge-patch+json",
            )
        except NotFound:  # expired or deleted: post a fresh one
            return False
        return True


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
