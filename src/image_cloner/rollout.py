"""Did the rollout after our rewrite fail? The rule that decides when a rewrite is undone.

A rewrite is only safe if the pods can pull the backup: a missing pull Secret, a registry
the nodes cannot reach, or a backup that went missing shows up as a rollout that never
completes. While a workload carries our `original-images` record, its containers run
backup references and its new revision is still rolling out (`following`: a Deployment,
DaemonSet or StatefulSet whose pods are not all updated; an availability dip of a
finished rollout, a pod that died later, is not a rollout), the controller watches the
rollout and gives up on it (`failure`) when one of these holds, checked in this order:

1. the workload says so itself (Deployment `ProgressDeadlineExceeded`, `Readiness.failed`);
2. a pod of the new revision (one that runs the backup image now in the template) has a
   container waiting with `ErrImagePull` or `ImagePullBackOff`, and the rewrite is at least
   `grace` seconds old (a kubelet reports one failed pull before its retry succeeds);
3. the rollout is not complete `timeout` seconds after the rewrite.

When the rewrite happened is read from `managedFields`: the `time` of the entry of our own
field manager, which the apiserver stamps on every change we make. No annotation of ours
is needed for it. When another manager changed the spec after us (a user's own rollout,
still on our backups), or a rewrite by an older version of us (before `fieldManager` was
set) left no entry, the rollout under way is not known to be ours and has no start time:
then only rules 1 and 2 apply. Pure: plain objects in, a reason out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from image_cloner.mapping import BackupLocation, is_backup
from image_cloner.oci.references import InvalidReference, parse_reference
from image_cloner.workloads import InvalidAnnotation, images_of, is_ready, original_images

__all__ = [
    "PULL_ERRORS",
    "PULL_ERROR_GRACE",
    "failure",
    "following",
    "pods_matter",
    "rewritten_at",
]

PULL_ERRORS = frozenset({"ErrImagePull", "ImagePullBackOff"})
"""`state.waiting.reason` values a kubelet reports for an image it cannot pull."""

PULL_ERROR_GRACE = 10.0
"""Seconds after the rewrite before a pull error counts: one failed pull can be a blip."""

Obj = Mapping[str, Any]


def following(obj: Obj, backup: BackupLocation) -> dict[str, str]:
    """Containers we rewrote that still run a backup: name → the backup image ({} if none).

    Only these are ours to watch and to restore; a container someone changed since is not.
    """
    if not _rolling_out(obj):
        return {}
    try:
        originals = original_images(obj)
    except InvalidAnnotation:
        return {}  # a damaged record cannot say what to restore
    return {
        c.name: c.image
        for c in images_of(obj)
        if c.name in originals and c.image != originals[c.name] and _is_backup(c.image, backup)
    }


def rewritten_at(obj: Obj, *, manager: str) -> datetime | None:
    """When `manager` last changed the object (its newest `managedFields` entry); None
    when unknown, or when another manager changed the spec later (its rollout, not ours)."""
    ours: datetime | None = None
    theirs: datetime | None = None
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if not isinstance(entry, Mapping) or entry.get("subresource"):
            continue  # a status or scale write is not a change of the pod template
        stamp = _time(entry.get("time"))
        if stamp is None:
            continue
        if entry.get("manager") == manager:
            ours = stamp if ours is None else max(ours, stamp)
        elif _owns_spec(entry.get("fieldsV1")):
            theirs = stamp if theirs is None else max(theirs, stamp)
    if ours is None or (theirs is not None and theirs > ours):
        return None
    return ours


def failure(
    obj: Obj,
    pods: Iterable[Obj],
    *,
    backups: Mapping[str, str],
    rewritten: datetime | None,
    now: datetime,
    timeout: float,
    grace: float = PULL_ERROR_GRACE,
) -> str | None:
    """Why the rollout onto `backups` (from `following`) failed, or None: not (yet)."""
    readiness = is_ready(obj)
    if readiness.ready:
        return None
    if readiness.failed:
        return "progress deadline exceeded"
    age = _age(rewritten, now)
    if pods_matter(obj, rewritten=rewritten, now=now, grace=grace):
        pulling = _pull_error(pods, backups)
        if pulling is not None:
            return pulling
    if age is not None and age >= timeout:
        return f"rollout not complete {timeout:g}s after the rewrite"
    return None


def pods_matter(
    obj: Obj, *, rewritten: datetime | None, now: datetime, grace: float = PULL_ERROR_GRACE
) -> bool:
    """Whether `failure` would look at the pods now: the rollout is neither complete nor
    failed, and the rewrite is past the grace pull errors get. Before that a follower
    need not list them (most rollouts are done within it)."""
    readiness = is_ready(obj)
    if readiness.ready or readiness.failed:
        return False
    age = _age(rewritten, now)
    return age is None or age >= grace


def _age(rewritten: datetime | None, now: datetime) -> float | None:
    return (now - rewritten).total_seconds() if rewritten is not None else None


def _pull_error(pods: Iterable[Obj], backups: Mapping[str, str]) -> str | None:
    for pod in pods:
        for section in ("containerStatuses", "initContainerStatuses"):
            for status in (pod.get("status") or {}).get(section) or []:
                if not isinstance(status, Mapping):
                    continue
                name = status.get("name")
                if not isinstance(name, str) or name not in backups:
                    continue
                if _image_in_spec(pod, name) != backups[name]:
                    continue  # a pod of an older revision: its pulls are not ours
                waiting = (status.get("state") or {}).get("waiting") or {}
                reason = waiting.get("reason") if isinstance(waiting, Mapping) else None
                if reason in PULL_ERRORS:
                    return f"{reason} for {backups[name]} (container {name})"
    return None


def _rolling_out(obj: Obj) -> bool:
    """The workload's pods are not all on its current template yet (kind by kind)."""
    meta, status = obj.get("metadata") or {}, obj.get("status") or {}
    spec = obj.get("spec") or {}
    if _int(meta, "generation") > _int(status, "observedGeneration"):
        return True
    kind = obj.get("kind")
    if kind == "Deployment":
        for condition in status.get("conditions") or []:
            if isinstance(condition, Mapping) and condition.get("type") == "Progressing":
                return condition.get("reason") != "NewReplicaSetAvailable"
        updated = _int(status, "updatedReplicas")
        return updated < _int(spec, "replicas", 1) or _int(status, "replicas") > updated
    if kind == "DaemonSet":
        return _int(status, "updatedNumberScheduled") < _int(status, "desiredNumberScheduled")
    if kind == "StatefulSet":
        return _int(status, "updatedReplicas") < _int(spec, "replicas", 1)
    return False  # a CronJob's or Job's next pods are not a rollout we could wait for


def _int(node: Obj, key: str, default: int = 0) -> int:
    # The API server omits zero-valued counters, so absent means 0 (or the spec default).
    value = node.get(key, default)
    return value if isinstance(value, int) else default


def _owns_spec(fields: object) -> bool:
    return isinstance(fields, Mapping) and "f:spec" in fields


def _image_in_spec(pod: Obj, name: str) -> str | None:
    spec = pod.get("spec") or {}
    for section in ("containers", "initContainers"):
        for container in spec.get(section) or []:
            if isinstance(container, Mapping) and container.get("name") == name:
                image = container.get("image")
                return image if isinstance(image, str) else None
    return None


def _is_backup(image: str, backup: BackupLocation) -> bool:
    try:
        return is_backup(parse_reference(image), backup)
    except InvalidReference:
        return False


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
