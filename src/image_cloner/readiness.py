"""When a workload is ready to be backed up: one rule per kind, as `kubectl` judges it.

The controller copies a workload's images only once its pods have shown that they run
them, and rewrites it only once its rollout is complete, so that the rewrite never lands
in the middle of a rollout someone else started. Where `kubectl rollout status` has an
answer (Deployment, DaemonSet, StatefulSet), the rule here is its status viewer's
(`k8s.io/kubectl/pkg/polymorphichelpers/rollout_status.go`), check for check and in the
same order. Where it declines to answer (OnDelete DaemonSets and StatefulSets) or has no
notion of a rollout (CronJob, Job, Pod), the rule is ours, and `docs/controller.md`
says why. Pure: the objects the API server returns in, a `Readiness` out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

__all__ = [
    "Readiness",
    "cronjob_readiness",
    "daemonset_readiness",
    "deployment_readiness",
    "job_readiness",
    "pod_readiness",
    "statefulset_readiness",
]

Obj = Mapping[str, Any]


@dataclass(frozen=True)
class Readiness:
    """The verdict on a rollout, in the words `kubectl rollout status` would use."""

    ready: bool
    reason: str
    """Why it is not ready yet ("waiting for rollout: 1 of 2 updated replicas are available"),
    or "rollout complete"."""
    failed: bool = False
    """The rollout will not complete by itself (Deployment: progress deadline exceeded)."""


_COMPLETE = Readiness(ready=True, reason="rollout complete")
_NOT_OBSERVED = Readiness(ready=False, reason="waiting for rollout: spec update to be observed")


def _waiting(what: str) -> Readiness:
    return Readiness(ready=False, reason=f"waiting for rollout: {what}")


def _get(obj: Obj, *path: str) -> Any:
    node: Any = obj
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


def _count(obj: Obj, *path: str) -> int:
    # The API server omits zero-valued status counters, so absent means 0.
    value = _get(obj, *path)
    return value if isinstance(value, int) else 0


def _observed(obj: Obj) -> bool:
    return _count(obj, "metadata", "generation") <= _count(obj, "status", "observedGeneration")


def deployment_readiness(obj: Obj) -> Readiness:
    """kubectl's DeploymentStatusViewer."""
    if not _observed(obj):
        return _NOT_OBSERVED
    conditions = _get(obj, "status", "conditions") or []
    for condition in conditions:
        if (
            isinstance(condition, Mapping)
            and condition.get("type") == "Progressing"
            and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            return Readiness(
                ready=False, reason="rollout failed: progress deadline exceeded", failed=True
            )
    desired = _get(obj, "spec", "replicas")
    replicas = _count(obj, "status", "replicas")
    updated = _count(obj, "status", "updatedReplicas")
    available = _count(obj, "status", "availableReplicas")
    if isinstance(desired, int) and updated < desired:
        return _waiting(f"{updated} out of {desired} new replicas have been updated")
    if replicas > updated:
        return _waiting(f"{replicas - updated} old replicas are pending termination")
    if available < updated:
        return _waiting(f"{available} of {updated} updated replicas are available")
    return _COMPLETE


def daemonset_readiness(obj: Obj) -> Readiness:
    """kubectl's DaemonSetStatusViewer, applied to OnDelete DaemonSets too.

    kubectl declines to judge OnDelete; the same counts wait until every pod runs the
    current template, so we never back up images no pod has proven it can run.
    """
    if not _observed(obj):
        return _NOT_OBSERVED
    desired = _count(obj, "status", "desiredNumberScheduled")
    updated = _count(obj, "status", "updatedNumberScheduled")
    available = _count(obj, "status", "numberAvailable")
    if updated < desired:
        return _waiting(f"{updated} out of {desired} new pods have been updated")
    if available < desired:
        return _waiting(f"{available} of {desired} updated pods are available")
    return _COMPLETE


def statefulset_readiness(obj: Obj) -> Readiness:
    """kubectl's StatefulSetStatusViewer; OnDelete judged by the same counts as a DaemonSet.

    kubectl answers OnDelete with an error ("rollout status is only available for
    RollingUpdate strategy type"). We wait until every pod is ready and runs the update
    revision (`updatedReplicas`), which an OnDelete StatefulSet reaches once its old pods
    were deleted; its `currentRevision` is not compared, because the StatefulSet
    controller moves it forward for RollingUpdate only.
    """
    strategy = _get(obj, "spec", "updateStrategy")
    strategy = strategy if isinstance(strategy, Mapping) else {}
    # The API server defaults the type to RollingUpdate; absent only in hand-made objects.
    on_delete = strategy.get("type", "RollingUpdate") != "RollingUpdate"
    observed = _count(obj, "status", "observedGeneration")
    if observed == 0 or _count(obj, "metadata", "generation") > observed:
        return _NOT_OBSERVED
    desired = _get(obj, "spec", "replicas")
    desired = desired if isinstance(desired, int) else None
    ready = _count(obj, "status", "readyReplicas")
    updated = _count(obj, "status", "updatedReplicas")
    if desired is not None and ready < desired:
        return _waiting(f"{desired - ready} pods to be ready")
    if on_delete:
        if desired is not None and updated < desired:
            return _waiting(
                f"{updated} out of {desired} pods run the update revision"
                " (OnDelete: old pods are replaced when they are deleted)"
            )
        return _COMPLETE
    rolling = strategy.get("rollingUpdate")
    if isinstance(rolling, Mapping):
        # kubectl stops here whenever rollingUpdate is set (the API server always sets
        # it, partition 0 by default): the partitioned count is the whole check.
        partition = rolling.get("partition")
        if desired is not None and isinstance(partition, int) and updated < desired - partition:
            return _waiting(
                f"partitioned roll out to finish: {updated} out of {desired - partition}"
                " new pods have been updated"
            )
        return _COMPLETE
    update_revision = _get(obj, "status", "updateRevision")
    if update_revision != _get(obj, "status", "currentRevision"):
        return _waiting(
            f"statefulset rolling update to complete {updated} pods at revision {update_revision}"
        )
    return _COMPLETE


def _time(obj: Obj, *path: str) -> datetime | None:
    value = _get(obj, *path)
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


def cronjob_readiness(obj: Obj) -> Readiness:
    """Ours: ready unless the last Job it started is known to have finished unsuccessfully.

    A CronJob has no rollout: a rewrite changes its future Jobs only. Its status keeps the
    time of the latest schedule, the completion time of the latest success and the Jobs
    running now. Ready: it never ran (the template is all there is; waiting for a monthly
    run would leave that run unprotected), or its latest success is newer than its latest
    schedule (the latest Job succeeded), or a Job is running and an earlier one succeeded.
    Not ready: the latest Job finished (nothing runs) after the latest success, or none
    succeeded yet while one runs: it failed, or it is the first, still unproven.
    `suspend` does not matter: a suspended CronJob starts no Jobs until it is resumed, and
    the run after that is the one to protect.
    """
    scheduled = _time(obj, "status", "lastScheduleTime")
    if scheduled is None:
        return Readiness(ready=True, reason="no Job has been scheduled yet")
    succeeded = _time(obj, "status", "lastSuccessfulTime")
    if succeeded is not None and succeeded >= scheduled:
        return Readiness(ready=True, reason="its last Job succeeded")
    running = bool(_get(obj, "status", "active"))
    if succeeded is None:
        if running:
            return Readiness(ready=False, reason="waiting for its first Job to succeed")
        return Readiness(ready=False, reason="no Job of it has succeeded yet")
    if running:
        return Readiness(ready=True, reason="a Job is running; an earlier one succeeded")
    return Readiness(
        ready=False,
        reason=f"its last Job, scheduled at {_get(obj, 'status', 'lastScheduleTime')},"
        " did not succeed",
    )


def job_readiness(obj: Obj) -> Readiness:
    """Ours: a pod of the Job has run (succeeded, or is Ready now), so its images pull."""
    if _count(obj, "status", "succeeded") > 0 or _count(obj, "status", "ready") > 0:
        return Readiness(ready=True, reason="a pod of it has run")
    return Readiness(ready=False, reason="waiting for a pod of the Job to run")


def pod_readiness(obj: Obj) -> Readiness:
    """Ours: the Pod runs or ran to completion, so its images pull."""
    phase = _get(obj, "status", "phase")
    if phase in ("Running", "Succeeded"):
        return Readiness(ready=True, reason=f"pod is {phase}")
    return Readiness(ready=False, reason=f"waiting for the pod to run: it is {phase or 'new'}")
