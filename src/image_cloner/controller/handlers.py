"""Thin kopf handlers: kopf watches every kind in `workloads.KINDS`, we only pass events on.

Only `on.event` handlers (plus the login and startup activities): kopf keeps no state
on users' objects for those, no annotations and no finalizers, which a copy tool has
no business adding. kopf's own Event posting, peering and cluster scanning are off, so
the controller needs no rights beyond watching its kinds. Each event goes to the
`watch.WatchTracker`, which decides what to enqueue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import kopf

from image_cloner.controller.kube import Kube
from image_cloner.controller.watch import WatchTracker
from image_cloner.workloads import KINDS, WorkloadKind

__all__ = ["build_registry", "operator_settings"]


def operator_settings() -> kopf.OperatorSettings:
    """kopf, reduced to watching: nothing written to users' objects or to the cluster."""
    settings = kopf.OperatorSettings()
    # Our Events come from kube.py; kopf's would only echo its handler logs.
    settings.posting.enabled = False
    # No list/watch on Namespaces and CRDs: we serve built-in kinds only.
    settings.scanning.disabled = True
    # One replica; no KopfPeering objects (and no rights for them).
    settings.peering.standalone = True
    return settings


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
    async def workload_event(type: str | None, body: kopf.Body, **_: Any) -> None:
        tracker.observe(kind, type, body)
