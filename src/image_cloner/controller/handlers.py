"""Thin kopf handlers: kopf watches every kind in `workloads.KINDS`, we only pass events on.

Only `on.event` handlers (plus the login and startup activities): kopf keeps no state
on users' objects for those, no annotations and no finalizers, which a copy tool has
no business adding. kopf's own Event posting, peering and cluster scanning are off, so
the controller needs no rights beyond watching its kinds. Each event goes to the
`watch.WatchTracker`, which decides what to enqueue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import kopf

from image_cloner.controller.kube import JsonObject, Kube
from image_cloner.controller.watch import WatchTracker
from image_cloner.workloads import KINDS, WorkloadKind

__all__ = ["build_registry", "operator_settings"]

LIST_CHUNK = 500
"""Objects per page of kopf's initial listings (`limit`/`continue`)."""

IDLE_WORKER = 0.5
"""Seconds kopf's per-object worker waits for another event before it exits (kopf: 5)."""


def operator_settings() -> kopf.OperatorSettings:
    """kopf, reduced to watching: nothing written to users' objects or to the cluster."""
    settings = kopf.OperatorSettings()
    # Our Events come from kube.py; kopf's would only echo its handler logs.
    settings.posting.enabled = False
    # No list/watch on Namespaces and CRDs: we serve built-in kinds only.
    settings.scanning.disabled = True
    # One replica; no KopfPeering objects (and no rights for them).
    settings.peering.standalone = True
    # Memory at scale (bench/scale_bench.py): the initial listing comes in pages rather than
    # as one response of every Pod in the cluster, and the per-object worker, which keeps
    # the last event's body while it waits for the next, lets go of it soon. Our handler
    # only looks at the body and queues a key.
    settings.watching.chunk_size = LIST_CHUNK
    settings.queueing.idle_timeout = IDLE_WORKER
    # kopf deep-copies every event's body twice to find changes for on.update handlers
    # (its "essence" and progress): a fifth of the controller's CPU with 500 workloads, for
    # handlers we do not have. Storages that keep nothing also make it plain that kopf
    # writes no state onto users' objects.
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.persistence.progress_storage = _NoProgress()
    # Server-side filters (bare Pods only): the same selector as the resync's listings.
    for kind in KINDS.values():
        if kind.selector:
            settings.watching.label_selectors[kind.group, kind.version, kind.plural] = kind.selector
    return settings


class _NoDiffBase(kopf.DiffBaseStorage):
    """No last-handled state: every object looks unchanged to (absent) on.update handlers."""

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        return kopf.BodyEssence()

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


class _NoProgress(kopf.ProgressStorage):
    """No handler progress: on.event handlers have none to keep."""

    def fetch(self, *, key: kopf.HandlerId, body: kopf.Body) -> kopf.ProgressRecord | None:
        return None

    def store(
        self,
        *,
        key: kopf.HandlerId,
        record: kopf.ProgressRecord,
        body: kopf.Body,
        patch: kopf.Patch,
    ) -> None:
        return None

    def purge(self, *, key: kopf.HandlerId, body: kopf.Body, patch: kopf.Patch) -> None:
        return None

    def touch(self, *, body: kopf.Body, patch: kopf.Patch, value: str | None) -> None:
        return None

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return essence


def build_registry(
    *,
    kube: Kube,
    tracker: WatchTracker,
    on_startup: Callable[[], Awaitable[object]],
) -> kopf.OperatorRegistry:
    """Our own kopf registry (no module-level handlers, no default registry)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    async def login(**_: Any) -> kopf.ConnectionInfo:
        # The same identity as our own client: --kubeconfig, or the pod's ServiceAccount.
        return await kube.connection_info()

    @kopf.on.startup(registry=registry)
    async def startup(**_: Any) -> None:
        # kopf starts watching only after this returns: nothing is touched before it.
        await on_startup()

    for kind in KINDS.values():
        _watch(registry, tracker, kind)
    return registry


def _watch(registry: kopf.OperatorRegistry, tracker: WatchTracker, kind: WorkloadKind) -> None:
    @kopf.on.event(kind.group, kind.version, kind.plural, registry=registry, id=kind.plural)
    async def workload_event(type: str | None, event: kopf.RawEvent, **_: Any) -> None:
        # The object as it came from the apiserver (kopf's `body` is a read-only view of
        # it): the pass that dequeues it starts from it (`watch.Delivered`).
        tracker.observe(kind, type, cast(JsonObject, event["object"]))
