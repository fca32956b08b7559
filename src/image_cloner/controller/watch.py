"""The watch, trusted but checked: watch events become queue keys, listings repair misses.

`WatchTracker` remembers the resourceVersion each watch event delivered; every
`RESYNC_INTERVAL` it lists the workloads' versions (metadata only, page by page:
`Kube.workload_versions`), reads each workload whose version the watch has not shown us
and enqueues it (repairing a missed event), and from then on counts that version as seen.
When a
listing matches everything the watch delivered, the stream is provably current, which
feeds readiness just like an event does; a stream that silently died while workloads
change stops doing either, and `/readyz` turns stale.

`Delivered` keeps the newest object the watch delivered for each workload waiting in the
queue, and the pass that dequeues it starts from that object instead of a GET: client-go's
controllers read from their informer's cache the same way. It is safe because nothing is
written from it unguarded: every patch tests `resourceVersion`, and a pass whose object
turns out to be old reads it again (`reconcile`). Only queued keys hold an object, so it
costs what the queue holds, not a copy of every workload, and at most `KEPT_OBJECTS`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from image_cloner.controller.census import WorkloadCensus
from image_cloner.controller.decisions import WorkloadLog
from image_cloner.controller.kube import JsonObject, KubeCalls
from image_cloner.controller.kube_errors import KubeApiError
from image_cloner.controller.queue import WorkQueue
from image_cloner.health import Health
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.rollout import following
from image_cloner.settings import Settings
from image_cloner.workloads import KINDS, WorkloadKey, WorkloadKind

__all__ = ["FIRST_RESYNC_DELAY", "RESYNC_INTERVAL", "Delivered", "WatchTracker"]

RESYNC_INTERVAL = 120.0
"""Seconds between consistency listings; well under `health.DEFAULT_WATCH_STALENESS`."""

FIRST_RESYNC_DELAY = 5.0
"""The first listing comes soon after start: a kind with no objects gets no watch event,
and only a listing can show that its (empty) stream is current."""

KEPT_OBJECTS = 1000
"""Objects `Delivered` holds at most (~16 MiB of Deployments); past that a pass reads."""

logger = logging.getLogger(CONTROLLER_LOGGER)


class Delivered:
    """The newest object the watch (or a resync's read) delivered per queued workload."""

    def __init__(self, versions: Mapping[WorkloadKey, str], *, limit: int = KEPT_OBJECTS) -> None:
        """`versions`: the newest resourceVersion the watch delivered of each workload."""
        self._versions = versions
        self._limit = limit
        self._objects: dict[WorkloadKey, JsonObject] = {}

    def __len__(self) -> int:
        return len(self._objects)

    def put(self, key: WorkloadKey, obj: JsonObject) -> None:
        if key in self._objects or len(self._objects) < self._limit:
            self._objects[key] = obj

    def refresh(self, key: WorkloadKey, obj: JsonObject) -> None:
        """A newer version of a workload that may hold one: it replaces the older one (a
        pass must never start from a version older than the watch has shown)."""
        if key in self._objects:
            self._objects[key] = obj

    def take(self, key: WorkloadKey) -> JsonObject | None:
        """The object to start the pass from, if the watch delivered one since the last."""
        return self._objects.pop(key, None)

    def give_back(self, key: WorkloadKey, obj: JsonObject) -> None:
        """A pass that comes back later (its copies under way, its rollout followed) leaves
        its object for that pass, if it is still the newest the watch delivered."""
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if key not in self._objects and version is not None and self._versions.get(key) == version:
            self.put(key, obj)

    def drop(self, key: WorkloadKey) -> None:
        self._objects.pop(key, None)


class WatchTracker:
    """Turns watch events into queue keys, and checks the watch against listings."""

    def __init__(
        self,
        *,
        queue: WorkQueue[WorkloadKey],
        health: Health,
        kube: KubeCalls,
        settings: Settings,
        census: WorkloadCensus | None = None,
    ) -> None:
        """`census`, when given, learns every workload the watch and the listings show."""
        self._queue = queue
        self._health = health
        self._kube = kube
        self._settings = settings
        self._census = census
        self._seen: dict[WorkloadKey, str] = {}
        self.delivered = Delivered(self._seen)
        """The object of each queued workload, for the pass that dequeues it."""

    def __len__(self) -> int:
        """Workloads tracked: shown by the watch or a listing, and not deleted since."""
        return len(self._seen)

    def __contains__(self, key: object) -> bool:
        return key in self._seen

    def observe(self, kind: WorkloadKind, event_type: str | None, body: JsonObject) -> None:
        """One watch event (type None: the initial listing): remember it, maybe enqueue it."""
        self._health.mark_watch_event(kind.kind)
        meta = body.get("metadata") or {}
        key = WorkloadKey(kind.kind, str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event_type == "DELETED":
            self._forget(key)
            return
        self._seen[key] = str(meta.get("resourceVersion", ""))
        self._consider(kind, key, body)

    def _forget(self, key: WorkloadKey) -> None:
        self._seen.pop(key, None)
        self.delivered.drop(key)
        if self._census is not None:
            self._census.forget(key)

    def requeue(self, where: Callable[[WorkloadKey], bool]) -> int:
        """Queue every tracked workload `where` picks (a rotated pull login reaches their
        namespaces' Secrets this way); returns how many."""
        keys = [key for key in self._seen if where(key)]
        for key in keys:
            if key.namespace not in self._settings.ignored_namespaces:
                self._queue.add(key)
        return len(keys)

    def _consider(self, kind: WorkloadKind, key: WorkloadKey, body: JsonObject) -> None:
        self.delivered.refresh(key, body)
        if self._census is not None:
            self._census.seen(key, body)
        if key.namespace in self._settings.ignored_namespaces:
            return
        if kind.owned_by(body) is not None:
            # Its owner's images are its images; no log line, as there is one per owned Pod.
            return
        readiness = kind.readiness(body)
        if not readiness.ready and not following(body, self._settings.backup):
            # The event that completes the rollout brings it back; no API read until then.
            # A rollout onto our backups is followed instead (controller.rollback).
            WorkloadLog(kind.noun, name=key.name, namespace=key.namespace).not_ready(
                readiness.reason
            )
            return
        self.delivered.put(key, body)
        self._queue.add(key)

    async def _consider_current(self, kind: WorkloadKind, key: WorkloadKey) -> None:
        """A workload the watch is behind on, read whole: readiness needs its status."""
        try:
            obj = await self._kube.read_workload(kind, key.namespace, key.name)
        except KubeApiError as e:
            # Queued anyway: the reconcile reads it again, and retries if it cannot.
            log_event(
                logger, logging.WARNING, "resync read failed", workload=str(key), error=str(e)
            )
            self._queue.add(key)
            return
        if obj is not None:
            self._consider(kind, key, obj)

    async def resync_forever(
        self, *, interval: float = RESYNC_INTERVAL, first: float = FIRST_RESYNC_DELAY
    ) -> None:
        """List each kind and repair what the watch missed: after `first`, then every `interval`."""
        await asyncio.sleep(first)
        while True:
            for kind in KINDS.values():
                await self.resync(kind)
            await asyncio.sleep(interval)

    async def resync(self, kind: WorkloadKind) -> int:
        """List `kind`; enqueue workloads the watch is behind on; returns how many."""
        # Seen before the listing began yet absent from it: deleted, though a relisting watch
        # (after a broken stream) sends no DELETED for it. Forget it, or it stays for good.
        known = {key for key in self._seen if key.kind == kind.kind}
        before = dict(self._seen)
        try:
            versions = await self._kube.workload_versions(kind, namespace=self._settings.namespace)
        except KubeApiError as e:
            log_event(
                logger, logging.WARNING, "resync listing failed", kind=kind.kind, error=str(e)
            )
            return 0
        behind = 0
        for (namespace, name), listed in versions.items():
            key = WorkloadKey(kind.kind, namespace, name)
            known.discard(key)
            if self._seen.get(key) != listed:
                behind += 1
                if self._seen.get(key) == before.get(key):
                    # Repaired: this version is handled now. Unless the watch delivered a
                    # newer one during the listing, which is the one to keep.
                    self._seen[key] = listed
                await self._consider_current(kind, key)
        scope = self._settings.namespace
        for key in known:
            if scope is None or key.namespace == scope:
                self._forget(key)
        if behind:
            log_event(
                logger,
                logging.INFO,
                "watch is behind the listing",
                kind=kind.kind,
                workloads=behind,
            )
        else:
            self._health.mark_watch_event(kind.kind)
        return behind
