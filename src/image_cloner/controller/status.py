"""`image-cloner status`: which workloads are protected now, which are not, and why.

Each workload is classified by `protection.classify`, the function the controller's
workloads gauge counts with (`controller.census`); the one input the controller knows from
its own passes, whether the last one failed, comes here from the Events: the newest Event
of the controller's reasons on the object, a failure when it is a `CloneFailed` or
`RewriteRefused` Warning. Per image on a backup: its digest, platforms and size, read from
the backup registry (`oci.summary`), and when it was written into the workload: the time
of the controller's field manager's last change (`metadata.managedFields`), which is the
rewrite; an image copied but not (yet) written has no such time. Read-only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from image_cloner.backups import Verdict, plan_images
from image_cloner.controller.gate import (
    INVALID_ANNOTATION,
    REWRITE_REVERTED,
    REWRITE_SKIPPED,
    Gate,
)
from image_cloner.controller.kube import FIELD_MANAGER, JsonObject
from image_cloner.controller.operations import Scope, workloads_in_scope
from image_cloner.controller.plan import Readers, readers
from image_cloner.controller.reconcile import (
    CLONE_FAILED,
    IMAGES_BACKED_UP,
    IMAGES_CLONED,
    REWRITE_REFUSED,
)
from image_cloner.controller.revert import IMAGES_REVERTED
from image_cloner.controller.rollback import REWRITE_ROLLED_BACK
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.references import parse_reference
from image_cloner.protection import State, classify
from image_cloner.report import Change, Row, Tone, size_text
from image_cloner.rollout import rewritten_at
from image_cloner.settings import Settings
from image_cloner.workloads import key_of

__all__ = ["FAILURES", "OUR_REASONS", "last_event", "status", "status_with", "summary"]

OUR_REASONS = frozenset(
    {
        IMAGES_CLONED,
        IMAGES_BACKED_UP,
        CLONE_FAILED,
        REWRITE_REFUSED,
        INVALID_ANNOTATION,
        REWRITE_REVERTED,
        REWRITE_SKIPPED,
        REWRITE_ROLLED_BACK,
        IMAGES_REVERTED,
    }
)
"""The reasons of the Events the controller (and `revert`) post."""

FAILURES = frozenset({CLONE_FAILED, REWRITE_REFUSED})
"""A pass that failed: the workload was left as it was and will be tried again."""

_TONES = {State.PROTECTED: Tone.DONE, State.EXCLUDED: Tone.NOTHING}


async def status_with(kubeconfig: str | None, settings: Settings, scope: Scope) -> list[Row]:
    """`status` on the controller's parts for `kubeconfig` (the command's entry point)."""
    async with readers(kubeconfig, settings) as parts:
        return await status(parts, scope)


async def status(parts: Readers, scope: Scope) -> list[Row]:
    """A row per counted workload in `scope`; raises `KubeApiError` when they cannot be read."""
    objects, _ = await workloads_in_scope(parts.kube, scope)
    gate = Gate(kube=parts.kube, settings=parts.settings)
    events: dict[str, list[JsonObject]] = {}
    rows = []
    for obj in objects:
        key = key_of(obj)
        if key.namespace not in events:
            events[key.namespace] = await parts.kube.list_events(key.namespace)
        last = last_event(obj, events[key.namespace])
        failure = None
        if last is not None and last.get("type") == "Warning" and last.get("reason") in FAILURES:
            failure = f"{last.get('reason')}: {last.get('message', '')}"
        namespace = await gate.namespace_annotations(key.namespace)
        found = classify(
            obj, settings=parts.settings, namespace_annotations=namespace, failure=failure
        )
        if found is not None:
            images = tuple([await _image(parts, obj, c) for c in _on_backups(obj, parts.settings)])
            said = [found.reason if found.state is State.FAILING else _detail(found.reason, last)]
            detail = "; ".join(said + [_said(change) for change in images])
            rows.append(
                Row(
                    kind=key.kind,
                    namespace=key.namespace,
                    name=key.name,
                    outcome=found.state.value,
                    tone=_TONES.get(found.state, Tone.PROBLEM),
                    detail=detail,
                    changes=images,
                    facts=(("last_event", _event_json(last)),),
                )
            )
    return sorted(rows, key=lambda r: (r.namespace, r.kind, r.name))


def last_event(obj: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> JsonObject | None:
    """The newest Event of `OUR_REASONS` about `obj` (this object: its uid, when known)."""
    meta = obj.get("metadata") or {}
    uid = meta.get("uid")
    ours: list[Mapping[str, Any]] = [
        e
        for e in events
        if e.get("reason") in OUR_REASONS
        and (e.get("involvedObject") or {}).get("kind") == obj.get("kind")
        and (e.get("involvedObject") or {}).get("name") == meta.get("name")
        and (uid is None or (e.get("involvedObject") or {}).get("uid") in (None, uid))
    ]
    newest = max(ours, key=_event_time, default=None)
    return None if newest is None else dict(newest)


def _event_time(event: Mapping[str, Any]) -> str:
    # RFC 3339 in UTC sorts as text; a series' lastTimestamp is its newest occurrence.
    return str(
        event.get("lastTimestamp")
        or event.get("eventTime")
        or (event.get("metadata") or {}).get("creationTimestamp")
        or ""
    )


def _event_json(event: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if event is None:
        return None
    return {
        "reason": event.get("reason"),
        "type": event.get("type"),
        "message": event.get("message"),
        "time": _event_time(event),
        "count": event.get("count") or 1,
    }


def _detail(reason: str, last: Mapping[str, Any] | None) -> str:
    if last is None:
        return reason
    return f"{reason}; last event {last.get('reason')} at {_event_time(last)}"


def _on_backups(obj: JsonObject, settings: Settings) -> list[tuple[str, str]]:
    return [
        (image.container.name, image.container.image)
        for image in plan_images(obj, settings)
        if image.verdict is Verdict.BACKUP
    ]


async def _image(parts: Readers, obj: JsonObject, container: tuple[str, str]) -> Change:
    name, image = container
    written = rewritten_at(obj, manager=FIELD_MANAGER)
    facts: list[tuple[str, Any]] = [
        ("rewritten_at", written.strftime("%Y-%m-%dT%H:%M:%SZ") if written else None)
    ]
    try:
        summary = await parts.copier.summarize(parse_reference(image))
    except RegistryError as e:
        facts.append(("error", str(e)))
    else:
        facts += [
            ("digest", summary.digest),
            ("platforms", list(summary.platforms)),
            ("bytes", summary.size),
            ("size", size_text(summary.size)),
        ]
    return Change(name, image, image, tuple(facts))


def _said(change: Change) -> str:
    facts = dict(change.facts)
    if "error" in facts:
        return f"{change.container}: cannot read the backup: {facts['error']}"
    platforms = ",".join(facts["platforms"]) or "1 manifest"
    when = f", rewritten {facts['rewritten_at']}" if facts["rewritten_at"] else ""
    return f"{change.container}: {facts['digest'][:19]} {platforms} {facts['size']}{when}"


def summary(rows: list[Row]) -> str:
    """One line for the end of the table: how many workloads are in which state."""
    if not rows:
        return "no workload in scope"
    counts = {state.value: 0 for state in State}
    for row in rows:
        counts[row.outcome] += 1
    return ", ".join(f"{n} {state}" for state, n in counts.items())
