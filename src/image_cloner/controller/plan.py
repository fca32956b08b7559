"""`image-cloner plan`: what `run` would do to each workload now, read-only.

The decisions are the controller's own, from the same code: the gate (`Gate.preview`:
`policy.decide` on the workload and its namespace, a reverted rewrite is copy-only), then
`steps.next_step` (readiness, each image by `backups`, copy-only, immutable kinds), then
for what would be copied `controller.pinning` (the digest the pods run) and
`controller.access` (the workload's own proven access to its source). Registries are only
read: one HEAD per image in the backup (does it exist?) and GETs of the source's manifests
for platforms and bytes (`oci.summary`). Nothing is copied, patched or posted.

Owned objects (a Deployment's ReplicaSets and Pods, a CronJob's Jobs) get no row: the
controller never reconciles them, their owner's row speaks for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from image_cloner.backups import ImagePlan, Verdict
from image_cloner.controller.access import SourceAccess
from image_cloner.controller.gate import Gate
from image_cloner.controller.kube import JsonObject, Kube
from image_cloner.controller.operations import Scope, connect, workloads_in_scope
from image_cloner.controller.pinning import Pin, Pinning, PinningFailed
from image_cloner.controller.pull_secrets import watched_logins
from image_cloner.controller.steps import Step, next_step
from image_cloner.controller.wiring import live_options, plugin_login, source_access
from image_cloner.credential_plugins import PluginProvider
from image_cloner.health import Health
from image_cloner.metrics import Metrics
from image_cloner.oci.copying import Copier
from image_cloner.oci.errors import RegistryError
from image_cloner.report import Change, Row, Tone, size_text
from image_cloner.settings import Settings
from image_cloner.source_credentials import SourceLogins
from image_cloner.workloads import key_of, kind_of

__all__ = ["Readers", "plan", "plan_with", "readers", "summary"]

_TONES = {Step.BACK_UP: Tone.PLANNED, Step.REWRITE: Tone.PLANNED, Step.FAIL: Tone.PROBLEM}


@dataclass(frozen=True)
class Readers:
    """The controller's parts that only read: its client, copier and access proofs."""

    kube: Kube
    copier: Copier
    access: SourceAccess
    settings: Settings


@asynccontextmanager
async def readers(kubeconfig: str | None, settings: Settings) -> AsyncIterator[Readers]:
    """The parts, built as `run` builds them (same logins, mirrors, credential chain)."""
    kube = await connect(kubeconfig)
    push, _ = watched_logins(settings)
    plugins = PluginProvider(settings.credential_plugins) if settings.credential_plugins else None
    try:
        login = push or await plugin_login(settings, plugins)
        async with Copier(live_options(settings, login)) as copier:
            access = source_access(settings, kube, copier, plugins)
            yield Readers(kube, copier, access, settings)
    finally:
        await kube.close()


async def plan_with(kubeconfig: str | None, settings: Settings, scope: Scope) -> list[Row]:
    """`plan` on the controller's parts for `kubeconfig` (the command's entry point)."""
    async with readers(kubeconfig, settings) as parts:
        return await plan(parts, scope)


async def plan(parts: Readers, scope: Scope) -> list[Row]:
    """A row per workload the controller would consider in `scope`; raises `KubeApiError`
    when the workloads cannot be listed."""
    objects, _ = await workloads_in_scope(parts.kube, scope)
    gate = Gate(kube=parts.kube, settings=parts.settings)
    # Pinning counts refusals in metrics: these are nobody's, and nobody scrapes them.
    pinning = Pinning(
        kube=parts.kube,
        source=parts.copier,
        metrics=Metrics(health=Health()),
        form=parts.settings.rewrite_form,
        access=parts.access,
    )
    rows = []
    for obj in objects:
        if kind_of(obj).owned_by(obj) is None:
            rows.append(await _plan_one(parts, gate, pinning, obj))
    return sorted(rows, key=lambda r: (r.namespace, r.kind, r.name))


async def _plan_one(parts: Readers, gate: Gate, pinning: Pinning, obj: JsonObject) -> Row:
    decision = await gate.preview(key_of(obj), obj)
    step = next_step(obj, decision=decision, settings=parts.settings)
    kept = tuple(_kept(image) for image in step.images if image.verdict is not Verdict.COPY)
    if step.step not in (Step.BACK_UP, Step.REWRITE):
        return _row(obj, step.step, step.reason, kept)
    try:
        pins = await pinning.pins(obj, [image.wanted for image in step.copies])
        copies = tuple([await _copy(parts, obj, pin) for pin in pins])
    except PinningFailed as e:
        return _row(obj, Step.FAIL, e.message, kept)
    except RegistryError as e:
        return _row(obj, Step.FAIL, str(e), kept)
    said = [step.reason] if step.reason else []
    said += [_said(change) for change in copies]
    return _row(obj, step.step, "; ".join(said), (*copies, *kept))


async def _copy(parts: Readers, obj: JsonObject, pin: Pin) -> Change:
    """What copying `pin` takes; `RegistryError` (`AccessRefused`: missing credentials)."""
    namespace = str(obj["metadata"]["namespace"])
    login = await parts.access.prove(obj, namespace, pin.source)
    exists = await parts.copier.has_manifest(pin.target)
    with SourceLogins.using(pin.source.repository.registry.host, login):
        image = await parts.copier.summarize(pin.source)
    facts = (
        ("verdict", Verdict.COPY.value),
        ("digest", image.digest),
        ("in_backup", exists),
        ("platforms", list(image.platforms)),
        ("bytes", 0 if exists else image.size),
    )
    return Change(pin.container.name, pin.container.image, str(pin.target), facts)


def _kept(image: ImagePlan) -> Change:
    facts = (("verdict", image.verdict.value), ("why", image.why))
    return Change(image.container.name, image.container.image, image.container.image, facts)


def _said(change: Change) -> str:
    facts = dict(change.facts)
    if facts["in_backup"]:
        return f"{change.container}: in the backup already"
    platforms = ",".join(facts["platforms"]) or "1 manifest"
    return f"{change.container}: copy {size_text(facts['bytes'])} ({platforms})"


def _row(obj: JsonObject, step: Step, detail: str, changes: tuple[Change, ...]) -> Row:
    key = key_of(obj)
    return Row(
        kind=key.kind,
        namespace=key.namespace,
        name=key.name,
        outcome=step.value,
        tone=_TONES.get(step, Tone.NOTHING),
        detail=detail,
        changes=changes,
    )


def summary(rows: list[Row]) -> str:
    """One line for the end of the table: how many workloads would see which step."""
    if not rows:
        return "no workload in scope"
    counts: dict[str, int] = {}
    for row in rows:
        counts[row.outcome] = counts.get(row.outcome, 0) + 1
    return "plan, nothing changed: " + ", ".join(f"{n} {o}" for o, n in sorted(counts.items()))
