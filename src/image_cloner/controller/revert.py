"""`image-cloner revert`: put back the images a rewrite replaced, and remove what it added.

The rewrite left three things behind (see `workloads.build_patch`): the backup images,
the `image-cloner.io/original-images` annotation recording what they replaced, and the
pull Secret (its reference in the pod template, and the Secret in the namespace). Revert
undoes each, and only where it is still ours to undo:

- a container is restored only while it runs a backup reference (an image under
  `IMAGE_CLONER_REGISTRY`); one that runs anything else was changed by someone since the
  rewrite, and then the whole workload is left alone and reported (`changed`);
- the restore is one JSON patch guarded like the rewrite (`resourceVersion` and each
  image being replaced), re-read and decided again when the object changes under it;
- the Secret goes only when it carries our managed-by label and no workload of its
  namespace refers to it any more (deleted with a `resourceVersion` precondition).

Idempotent: a reverted workload has no annotation, so a second run finds nothing to do.
The controller must be stopped (or the namespace ignored) first, or it rewrites again.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from image_cloner.controller.kube import JsonObject
from image_cloner.controller.kube_errors import Conflict, KubeApiError, NotFound
from image_cloner.controller.operations import (
    Scope,
    Target,
    WorkloadReads,
    connect,
    workloads_in_scope,
)
from image_cloner.controller.reconcile import changed_meanwhile
from image_cloner.mapping import BackupLocation, is_backup
from image_cloner.oci.references import InvalidReference, parse_reference
from image_cloner.report import Change, Row, Tone
from image_cloner.workloads import (
    InvalidAnnotation,
    PatchError,
    WorkloadKind,
    build_revert_patch,
    images_of,
    key_of,
    kind_of,
    original_images,
)

__all__ = [
    "IMAGES_REVERTED",
    "Outcome",
    "RevertCalls",
    "RevertPlan",
    "plan_revert",
    "revert",
    "revert_with",
    "summary",
]

IMAGES_REVERTED = "ImagesReverted"

MAX_CONFLICTS = 5
"""Times a workload is read again when it changes under the patch (status updates do)."""

SECRET_KIND = "Secret"


class Outcome(enum.StrEnum):
    """A row's `outcome`, fixed words for scripts."""

    REVERTED = "reverted"
    WOULD_REVERT = "would-revert"
    NOT_REWRITTEN = "not-rewritten"
    """No annotation: never rewritten, or already reverted."""
    GONE = "gone"
    """Deleted while we worked on it: nothing left to revert."""
    CHANGED = "changed"
    """Edited since the rewrite: left alone."""
    FAILED = "failed"
    """The apiserver refused, or our annotation is damaged."""
    NOT_FOUND = "not-found"
    """Named on the command line, but there is no such workload."""
    DELETED = "deleted"
    WOULD_DELETE = "would-delete"
    IN_USE = "in-use"
    """The pull Secret stays: workloads still refer to it."""


_TONES = {
    Outcome.REVERTED: Tone.DONE,
    Outcome.DELETED: Tone.DONE,
    Outcome.WOULD_REVERT: Tone.PLANNED,
    Outcome.WOULD_DELETE: Tone.PLANNED,
    Outcome.NOT_REWRITTEN: Tone.NOTHING,
    Outcome.GONE: Tone.NOTHING,
    Outcome.IN_USE: Tone.NOTHING,
}


class RevertCalls(WorkloadReads, Protocol):
    """The calls revert makes: `Kube`, or a fake in unit tests."""

    async def patch_workload(
        self, kind: WorkloadKind, namespace: str, name: str, patch: Sequence[Mapping[str, Any]]
    ) -> JsonObject: ...

    async def post_event(
        self, obj: Mapping[str, Any], *, reason: str, message: str, warning: bool = False
    ) -> None: ...

    async def list_managed_secrets(
        self, name: str, *, namespace: str | None
    ) -> list[JsonObject]: ...

    async def delete_secret(self, namespace: str, name: str, *, resource_version: str) -> bool: ...


@dataclass(frozen=True)
class RevertPlan:
    """What reverting one workload takes: the guarded patch, and the images it puts back."""

    patch: list[dict[str, Any]]
    changes: tuple[Change, ...]


def _row(obj: Mapping[str, Any], outcome: Outcome, detail: str = "", **more: Any) -> Row:
    meta = obj.get("metadata") or {}
    return Row(
        kind=str(obj.get("kind")),
        namespace=str(meta.get("namespace")),
        name=str(meta.get("name")),
        outcome=outcome.value,
        tone=_TONES.get(outcome, Tone.PROBLEM),
        detail=detail,
        **more,
    )


def plan_revert(obj: JsonObject, *, backup: BackupLocation, pull_secret: str) -> RevertPlan | Row:
    """The patch that reverts `obj`, or the row saying why there is none. Pure."""
    try:
        originals = original_images(obj)
    except InvalidAnnotation as e:
        return _row(obj, Outcome.FAILED, str(e))
    if not originals:
        return _row(obj, Outcome.NOT_REWRITTEN, "no image-cloner.io/original-images annotation")
    current = {c.name: c.image for c in images_of(obj)}
    problems: list[str] = []
    restores: dict[str, str] = {}
    for name, original in sorted(originals.items()):
        image = current.get(name)
        if image is None:
            problems.append(f"container {name} is gone")
        elif image != original and not _is_backup(image, backup):
            problems.append(f"container {name} runs {image}, not a backup in {backup}")
        elif image != original:
            restores[name] = original
    if problems:
        return _row(obj, Outcome.CHANGED, "changed since the rewrite: " + "; ".join(problems))
    try:
        patch = build_revert_patch(obj, restores, pull_secret=pull_secret)
    except PatchError as e:
        return _row(obj, Outcome.FAILED, str(e))
    changes = tuple(Change(name, current[name], image) for name, image in restores.items())
    return RevertPlan(patch, changes)


def _is_backup(image: str, backup: BackupLocation) -> bool:
    try:
        return is_backup(parse_reference(image), backup)
    except InvalidReference:
        return False


async def revert(
    kube: RevertCalls,
    scope: Scope,
    *,
    backup: BackupLocation,
    pull_secret: str,
    dry_run: bool = False,
) -> list[Row]:
    """Revert every rewritten workload in `scope`, then remove unused pull Secrets.

    With no targets only workloads carrying our annotation get a row. Raises
    `KubeApiError` when the scope cannot be read.
    """
    objects, missing = await workloads_in_scope(kube, scope)
    if not scope.targets:
        objects = [obj for obj in objects if _annotated(obj)]
    rows = [_missing_row(target, str(scope.namespace)) for target in missing]
    for obj in objects:
        rows.append(await _revert_one(kube, obj, backup, pull_secret, dry_run=dry_run))
    planned = {(r.kind, r.namespace, r.name) for r in rows if r.outcome == Outcome.WOULD_REVERT}
    try:
        rows.extend(await _clean_secrets(kube, scope, pull_secret, planned, dry_run=dry_run))
    except KubeApiError as e:
        # The workloads are done; say what is left instead of losing their rows.
        rows.append(
            Row(
                kind=SECRET_KIND,
                namespace=scope.namespace or "*",
                name=pull_secret,
                outcome=Outcome.FAILED.value,
                tone=Tone.PROBLEM,
                detail=f"cannot look for unused pull Secrets: {e}",
            )
        )
    return sorted(rows, key=lambda r: (r.namespace, r.kind == SECRET_KIND, r.kind, r.name))


async def revert_with(
    kubeconfig: str | None,
    scope: Scope,
    *,
    backup: BackupLocation,
    pull_secret: str,
    dry_run: bool = False,
) -> list[Row]:
    """`revert` on a client of `kubeconfig`, closed afterwards (the command's entry point).

    Raises `ConfigError` for an unusable kubeconfig, `KubeApiError` for an unreadable scope.
    """
    kube = await connect(kubeconfig)
    try:
        return await revert(kube, scope, backup=backup, pull_secret=pull_secret, dry_run=dry_run)
    finally:
        await kube.close()


def _annotated(obj: JsonObject) -> bool:
    try:
        return bool(original_images(obj))
    except InvalidAnnotation:
        return True  # damaged: worth a row


def _missing_row(target: Target, namespace: str) -> Row:
    return Row(
        kind=target.kind.kind,
        namespace=namespace,
        name=target.name,
        outcome=Outcome.NOT_FOUND.value,
        tone=Tone.PROBLEM,
        detail=f"no {target.kind.noun} {target.name} in namespace {namespace}",
    )


async def _revert_one(
    kube: RevertCalls, obj: JsonObject, backup: BackupLocation, pull_secret: str, *, dry_run: bool
) -> Row:
    for _ in range(MAX_CONFLICTS):
        plan = plan_revert(obj, backup=backup, pull_secret=pull_secret)
        if isinstance(plan, Row):
            return plan
        if dry_run:
            return _row(obj, Outcome.WOULD_REVERT, _message(plan), changes=plan.changes)
        key, kind = key_of(obj), kind_of(obj)
        try:
            patched = await kube.patch_workload(kind, key.namespace, key.name, plan.patch)
        except NotFound:
            return _row(obj, Outcome.GONE, "deleted meanwhile")
        except KubeApiError as e:
            if not changed_meanwhile(e):
                return _row(obj, Outcome.FAILED, f"the apiserver refused the patch: {e}")
            fresh = await kube.read_workload(kind, key.namespace, key.name)
            if fresh is None:
                return _row(obj, Outcome.GONE, "deleted meanwhile")
            obj = fresh
            continue
        detail = _message(plan)
        try:
            await kube.post_event(patched, reason=IMAGES_REVERTED, message=detail)
        except KubeApiError as e:
            detail += f" (no Event: {e})"
        return _row(patched, Outcome.REVERTED, detail, changes=plan.changes)
    return _row(obj, Outcome.FAILED, f"changed under each of {MAX_CONFLICTS} patches")


def _message(plan: RevertPlan) -> str:
    if not plan.changes:
        return "images were already the originals; annotation removed"
    return "; ".join(f"{c.before} → {c.after}" for c in plan.changes)


async def _clean_secrets(
    kube: RevertCalls,
    scope: Scope,
    name: str,
    planned: set[tuple[str, str, str]],
    *,
    dry_run: bool,
) -> list[Row]:
    rows: list[Row] = []
    for secret in await kube.list_managed_secrets(name, namespace=scope.namespace):
        namespace = str(secret["metadata"]["namespace"])
        workloads, _ = await workloads_in_scope(kube, Scope(namespace=namespace))
        users = [
            f"{obj['kind']}/{obj['metadata']['name']}"
            for obj in workloads
            if name in _pull_secrets(obj)
            and (obj["kind"], namespace, obj["metadata"]["name"]) not in planned
            # A ReplicaSet's or a Job's pods name it as their owner's template did: the owner
            # speaks for them (a reverted Deployment rolls them away).
            and kind_of(obj).owned_by(obj) is None
        ]
        rows.append(await _secret_row(kube, secret, users, dry_run=dry_run))
    return rows


async def _secret_row(
    kube: RevertCalls, secret: JsonObject, users: Sequence[str], *, dry_run: bool
) -> Row:
    meta = secret["metadata"]
    obj = {"kind": SECRET_KIND, "metadata": meta}
    if users:
        return _row(obj, Outcome.IN_USE, "still used by " + _few(users))
    if dry_run:
        return _row(obj, Outcome.WOULD_DELETE, "no workload refers to it")
    try:
        deleted = await kube.delete_secret(
            meta["namespace"], meta["name"], resource_version=str(meta.get("resourceVersion"))
        )
    except Conflict:
        return _row(obj, Outcome.IN_USE, "changed since it was read; run revert again")
    except KubeApiError as e:
        return _row(obj, Outcome.FAILED, f"cannot delete it: {e}")
    if not deleted:
        return _row(obj, Outcome.GONE, "deleted meanwhile")
    return _row(obj, Outcome.DELETED, "no workload refers to it")


def _pull_secrets(obj: JsonObject) -> set[str]:
    spec = kind_of(obj).pod_spec(obj)
    entries = spec.get("imagePullSecrets") if isinstance(spec, Mapping) else None
    return {str(e.get("name")) for e in entries or [] if isinstance(e, Mapping)}


def _few(names: Iterable[str], *, shown: int = 3) -> str:
    ordered = sorted(names)
    more = f" and {len(ordered) - shown} more" if len(ordered) > shown else ""
    return ", ".join(ordered[:shown]) + more


def summary(rows: Sequence[Row], *, dry_run: bool) -> str:
    """One line for the end of the table: how many rows had which outcome."""
    if not rows:
        return "nothing to revert: no workload carries image-cloner.io/original-images"
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.outcome] = counts.get(row.outcome, 0) + 1
    text = ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
    return f"dry run, nothing changed: {text}" if dry_run else text
