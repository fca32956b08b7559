"""The gate before a reconcile pass: may we touch this workload, and how far?

`policy` holds the rules (opt-out annotations, owners, markers, their precedence); this
module feeds them what they need from the cluster and acts on what they decide:

- the namespace's annotations come from one `get` of the Namespace, cached for
  `NAMESPACE_CACHE_TTL` seconds, so a thousand workloads in one namespace cost one read
  (and concurrent misses share it); a namespace we may not read (403) or cannot find
  (404) is logged once per period and counts as having no annotation; any other failure
  is retried later, because treating it as "no opt-out" could rewrite what a user opted out;
- a bad annotation value becomes a Warning Event (`InvalidAnnotation`); the decision
  stays the safe one `policy` chose;
- a rewrite someone undid (`policy.reverted`) is not redone: the workload gets the
  `policy.REVERTED_ANNOTATION` marker, in one patch guarded by `resourceVersion`, and a
  Warning Event `RewriteReverted` naming the field manager that put the originals back;
  from then on `policy.decide` says copy-only until a person removes the marker;
- after the images of a copy-only workload are backed up, a Normal Event
  `RewriteSkipped` says why it was not rewritten. Identical Events count up
  (`Kube.record_event`), so a workload that comes back often does not flood its Events.

A partially reverted workload (some containers back at their originals, others still on
our backups) is treated as reverted as a whole: whoever put one image back owns the pod
template and would put it back after every rewrite. Its other containers keep the backups
they run; the marker only stops further rewrites.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from image_cloner import policy
from image_cloner.controller.decisions import WorkloadLog
from image_cloner.controller.kube import FIELD_MANAGER, JsonObject, KubeCalls
from image_cloner.controller.kube_errors import (
    Forbidden,
    KubeApiError,
    NotFound,
    changed_meanwhile,
)
from image_cloner.controller.queue import Retry
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.settings import Settings
from image_cloner.singleflight import SingleFlight
from image_cloner.workloads import (
    KINDS,
    InvalidAnnotation,
    PatchError,
    WorkloadKey,
    build_marker_patch,
    images_of,
    original_images,
)

__all__ = [
    "INVALID_ANNOTATION",
    "NAMESPACE_CACHE_TTL",
    "REWRITE_REVERTED",
    "REWRITE_SKIPPED",
    "Gate",
]

INVALID_ANNOTATION = "InvalidAnnotation"
REWRITE_REVERTED = "RewriteReverted"
REWRITE_SKIPPED = "RewriteSkipped"

NAMESPACE_CACHE_TTL = 30.0
"""Seconds a namespace's annotations are reused: how long an opt-out on a namespace may
take to be seen. Workload annotations are read fresh on every pass."""

REVERTED_REASON = "rewrite reverted by another manager"

logger = logging.getLogger(CONTROLLER_LOGGER)

Annotations = Mapping[str, str]


class Gate:
    """Decides, per pass, what the reconciler may do with a workload (`policy.decide`)."""

    def __init__(
        self,
        *,
        kube: KubeCalls,
        settings: Settings,
        namespace_ttl: float = NAMESPACE_CACHE_TTL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._ttl = namespace_ttl
        self._clock = clock
        self._namespaces: dict[str, tuple[float, Annotations]] = {}
        self._reads: SingleFlight[Annotations] = SingleFlight()

    async def check(
        self, key: WorkloadKey, obj: JsonObject, log: WorkloadLog
    ) -> policy.Decision | None:
        """The decision for this pass; None when our marker patch met a concurrent change
        (read the workload again and decide again)."""
        decision = self._decide(obj, await self.namespace_annotations(key.namespace))
        if decision.warning is not None:
            warning = decision.warning
            self._kube.record_event(obj, reason=INVALID_ANNOTATION, message=warning, warning=True)
        if decision.action is policy.Action.SKIP:
            log.skipped(decision.reason)
            return decision
        if decision.action is policy.Action.REWRITE:
            names = _reverted_containers(obj)
            if names:
                return await self._mark_reverted(key, obj, names, log)
        return decision

    async def preview(self, key: WorkloadKey, obj: JsonObject) -> policy.Decision:
        """What `check` would decide, without writing anything (for `image-cloner plan`):
        no Event, and a reverted rewrite is copy-only without marking it."""
        decision = self._decide(obj, await self.namespace_annotations(key.namespace))
        if decision.action is policy.Action.REWRITE and _reverted_containers(obj):
            return policy.Decision(policy.Action.COPY_ONLY, REVERTED_REASON)
        return decision

    async def copied_only(self, obj: JsonObject, decision: policy.Decision) -> None:
        """The images of a copy-only workload are backed up: say why it stays as it is."""
        message = f"images backed up, workload not rewritten: {decision.reason}"
        self._kube.record_event(obj, reason=REWRITE_SKIPPED, message=message)

    # --- the namespace's annotations ---------------------------------------------------

    async def namespace_annotations(self, namespace: str) -> Annotations:
        """The namespace's annotations, from the cache while it is fresh."""
        cached = self._namespaces.get(namespace)
        if cached is not None and self._clock() < cached[0]:
            return cached[1]
        return await self._reads.run(namespace, lambda: self._read_namespace(namespace))

    async def _read_namespace(self, namespace: str) -> Annotations:
        try:
            obj = await self._kube.read_namespace(namespace)
            annotations = _annotations_of(obj)
        except (Forbidden, NotFound) as e:
            log_event(
                logger,
                logging.WARNING,
                "cannot read namespace annotations: no namespace opt-out applies",
                namespace=namespace,
                error=str(e),
            )
            annotations = {}
        except KubeApiError as e:
            raise Retry(f"cannot read namespace {namespace}: {e}") from None
        now = self._clock()
        self._namespaces = {n: c for n, c in self._namespaces.items() if now < c[0]}
        self._namespaces[namespace] = (now + self._ttl, annotations)
        return annotations

    # --- reverted rewrites -------------------------------------------------------------

    async def _mark_reverted(
        self, key: WorkloadKey, obj: JsonObject, names: list[str], log: WorkloadLog
    ) -> policy.Decision | None:
        manager = policy.images_manager(obj, ours=FIELD_MANAGER)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        value = f"by {manager} at {stamp}" if manager else f"at {stamp}"
        log.rewrite_reverted(manager, containers=",".join(names))
        try:
            patch = build_marker_patch(obj, policy.REVERTED_ANNOTATION, value, forget=names)
            patched = await self._kube.patch_workload(
                KINDS[key.kind], key.namespace, key.name, patch
            )
        except PatchError as e:
            return self._unmarked(key, str(e))
        except NotFound:
            return policy.Decision(policy.Action.SKIP, "deleted meanwhile")
        except KubeApiError as e:
            if changed_meanwhile(e):
                return None
            return self._unmarked(key, str(e))
        who = manager or "another field manager"
        message = (
            f"{who} put the original images back (containers {', '.join(names)}):"
            f" not rewriting again, images stay backed up;"
            f" remove annotation {policy.REVERTED_ANNOTATION} to allow rewrites"
        )
        self._kube.record_event(patched, reason=REWRITE_REVERTED, message=message, warning=True)
        namespace = await self.namespace_annotations(key.namespace)
        return self._decide(patched, namespace)

    def _unmarked(self, key: WorkloadKey, error: str) -> policy.Decision:
        # The marker could not be written: still never rewrite; the next pass tries again.
        log_event(
            logger,
            logging.WARNING,
            "cannot mark the workload as reverted",
            workload=str(key),
            error=error,
        )
        return policy.Decision(policy.Action.COPY_ONLY, REVERTED_REASON)

    # --- plumbing ----------------------------------------------------------------------

    def _decide(self, obj: JsonObject, namespace: Annotations) -> policy.Decision:
        return policy.decide(
            obj, namespace_annotations=namespace, rewrite_owned=self._settings.rewrite_owned
        )


def _reverted_containers(obj: JsonObject) -> list[str]:
    try:
        originals = original_images(obj)
    except InvalidAnnotation:
        return []  # a damaged record proves nothing; the next rewrite writes a valid one
    current = {c.name: c.image for c in images_of(obj)}
    return policy.reverted(current, originals)


def _annotations_of(obj: JsonObject) -> Annotations:
    raw = (obj.get("metadata") or {}).get("annotations") or {}
    return {str(k): str(v) for k, v in raw.items()} if isinstance(raw, Mapping) else {}
