"""One workload, reconciled: read it, wait for its rollout, copy its images, patch, report.

The queue hands us a key, never an event: we decide from the object as it is now (the
newest version the watch delivered, else a read), and from that alone, so running twice,
late, or after a restart is always safe. The order
is what keeps users' workloads whole:

0. the gate (`controller.gate`, the rules of `policy`) decides first whether we may touch
   the workload at all (opt-outs, objects being deleted), only back it up (owned by a
   controller, a rewrite someone undid) or back it up and rewrite it; images matching
   `IMAGE_CLONER_EXCLUDE_IMAGES` are left out of the plan;
1. nothing happens until the rollout is complete (`workloads.is_ready`); the watch
   event that completes it brings the key back; a rollout onto backups we wrote is
   followed until it completes, and undone if it fails (`controller.rollback`);
2. every image of the pod template is copied and verified before anything is written;
   a copy that takes longer than `COPY_PATIENCE` goes on in the background
   (`ImageCopies.start`) and the workload comes back when it is done, so that a few large
   copies never hold every worker while no-op reconciles wait;
3. one JSON patch, guarded by `resourceVersion` and by a `test` of each old image,
   rewrites them all; if the object changed meanwhile (the apiserver's Status says a
   `test` failed, or a Conflict) we read it again and start over; a refusal of the
   patched object (an admission policy, validation) is a failure, reported as such;
4. a kind whose pod template cannot change (Job, bare Pod) stops after step 2: its
   images are backed up, it is never patched, and an `ImagesBackedUp` Event says so;
5. failures leave the workload untouched, become a Warning Event, and come back later:
   per workload through the queue's backoff, per image through `ImageBackoff`, so an
   image that keeps failing is not retried by every workload that uses it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from image_cloner.admission_index import BackupIndex, copied_anonymously
from image_cloner.backups import Verdict
from image_cloner.controller.access import SourceAccess
from image_cloner.controller.census import WorkloadCensus
from image_cloner.controller.copies import ImageBackoff, ImageCopier, ImageCopies
from image_cloner.controller.decisions import WorkloadLog
from image_cloner.controller.gate import Gate
from image_cloner.controller.kube import JsonObject, KubeCalls
from image_cloner.controller.kube_errors import KubeApiError, NotFound, changed_meanwhile
from image_cloner.controller.pinning import Pin, Pinned, Pinning, PinningFailed, SourceReader
from image_cloner.controller.pull_secrets import PullSecrets, watched_logins
from image_cloner.controller.queue import Retry
from image_cloner.controller.referrer_resync import (
    ReferrerResync,
    ReferrerSyncer,
    rewritten_backups,
)
from image_cloner.controller.rollback import RECHECK, Followed, Rollback
from image_cloner.controller.steps import Limit, Step, WorkloadStep, next_step
from image_cloner.controller.watch import Delivered
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.metrics import FailureReason, Metrics, NotRewrittenReason, SkipReason
from image_cloner.oci.copying import CopyResult
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.references import parse_reference
from image_cloner.settings import Settings
from image_cloner.workloads import KINDS, PatchError, WorkloadKey, build_patch

__all__ = [
    "CLONE_FAILED",
    "IMAGES_BACKED_UP",
    "IMAGES_CLONED",
    "REWRITE_REFUSED",
    "ReconcileCopier",
    "Reconciler",
    "changed_meanwhile",
]

IMAGES_CLONED = "ImagesCloned"
IMAGES_BACKED_UP = "ImagesBackedUp"
CLONE_FAILED = "CloneFailed"
REWRITE_REFUSED = "RewriteRefused"
"""What runs cannot be backed up for sure (pods disagree, the source lost the digest)."""

COPY_PATIENCE = 0.25
"""Seconds a pass waits for an image's copy before it lets its worker go (the workload is
queued again when the copy is done): a copy the backup already holds (one HEAD) is done
within it, a large one does not hold a worker that no-op reconciles are waiting for."""

MAX_CONFLICTS = 5
"""Times we re-read and decide again when the object changes under our patch."""

logger = logging.getLogger(CONTROLLER_LOGGER)


class ReconcileCopier(ImageCopier, SourceReader, ReferrerSyncer, Protocol):
    """What the reconciler needs of `oci.copying.Copier`: copies, source reads, referrers."""


@dataclass(frozen=True)
class _CopyFailed:
    message: str
    after: float


class _Failed(Exception):
    """This pass cannot finish; `message` goes into the Warning Event and the log."""

    def __init__(
        self, message: str, *, after: float | None = None, reason: str = CLONE_FAILED
    ) -> None:
        super().__init__(message)
        self.message = message
        self.after = after
        self.reason = reason


class _Changed(Exception):
    """The workload changed after we read it: read it again and decide again."""

    def __init__(self, error: KubeApiError) -> None:
        super().__init__(str(error))
        self.error = error


class _Following(Exception):
    """A rollout onto our backups is under way: come back in `rollback.RECHECK` seconds."""


@dataclass(frozen=True)
class _CopyPending:
    copy: asyncio.Task[CopyResult]


class _Pending(Exception):
    """Images are still being copied: come back when those copies are done."""

    def __init__(self, copies: list[asyncio.Task[CopyResult]]) -> None:
        super().__init__(f"{len(copies)} copies under way")
        self.copies = copies


class Reconciler:
    """The queue's worker: `await reconciler(key)` brings one workload to the wanted state."""

    def __init__(
        self,
        *,
        kube: KubeCalls,
        copier: ReconcileCopier,
        settings: Settings,
        metrics: Metrics,
        image_backoff: ImageBackoff | None = None,
        pull_secrets: PullSecrets | None = None,
        access: SourceAccess | None = None,
        index: BackupIndex | None = None,
        census: WorkloadCensus | None = None,
        delivered: Delivered | None = None,
    ) -> None:
        """`index` learns every verified copy, for the admission webhook; `census` how
        each pass ended, for the workloads gauge; `delivered` what the watch delivered of
        each queued workload (`watch.Delivered`), which a pass starts from instead of a GET."""
        self._kube = kube
        self._delivered = Delivered({}) if delivered is None else delivered
        self._census = census
        self._index = index
        self._settings = settings
        self._metrics = metrics
        if pull_secrets is None:
            push, pull = watched_logins(settings)
            pull_secrets = PullSecrets.for_settings(kube, settings, push=push, pull=pull)
        self._pull_secrets = pull_secrets
        self.copies = ImageCopies(copier, metrics=metrics, backoff=image_backoff)
        """The copies of images, shared with the admission webhook's queue."""
        self._access = access
        """Proves each workload's own access to its source images (controller.access);
        None only in unit tests whose fake registry has no access to prove."""
        self.referrers = ReferrerResync(
            copier, interval=settings.referrers_resync, metrics=metrics, access=access
        )
        """New signatures on images already backed up (`controller.referrer_resync`);
        its `keep_due` runs beside the queue."""
        self._gate = Gate(kube=kube, settings=settings)
        self._rollback = Rollback(kube=kube, settings=settings, pull_secret=pull_secrets.name)
        self._pinning = Pinning(
            kube=kube, source=copier, metrics=metrics, form=settings.rewrite_form, access=access
        )

    async def __call__(self, key: WorkloadKey) -> None:
        with self._metrics.reconciling(key.kind):
            later = await self._reconcile(key)
        if later is not None:
            # Outside the metrics' block: following a rollout, or waiting for copies, is
            # no reconcile error.
            raise later

    async def _reconcile(self, key: WorkloadKey) -> Retry | None:
        """One workload brought as far as it goes now; a `Retry` when it is to come back
        without having failed (its rollout is followed, its images are being copied)."""
        if key.namespace in self._settings.ignored_namespaces:
            return None
        log = WorkloadLog(KINDS[key.kind].noun, name=key.name, namespace=key.namespace)
        for attempt in range(MAX_CONFLICTS):
            # The first try starts from what the watch delivered, if anything; a try after
            # a patch met a change reads the object as it is now.
            obj = (self._delivered.take(key) if attempt == 0 else None) or await self._read(key)
            if obj is None:
                return None
            try:
                if await self._pass(key, obj, log):
                    await self._counted(key, None)
                    return None
            except _Following:
                self._delivered.give_back(key, obj)
                await self._counted(key, None)
                return Retry(f"following the rollout of {key}", after=RECHECK)
            except _Pending as pending:
                self._delivered.give_back(key, obj)
                await self._counted(key, None)  # not failed (yet): its copy is under way
                return Retry(f"copying the images of {key}", until=pending.copies)
            except _Failed as failure:
                self._delivered.give_back(key, obj)
                await self._report_failure(obj, failure, key)
                await self._counted(key, failure.message)
                raise Retry(failure.message, after=failure.after) from None
        raise Retry(f"{key} changed under every one of {MAX_CONFLICTS} patches")

    async def _counted(self, key: WorkloadKey, failure: str | None) -> None:
        """Tell the census how the pass ended (the namespace's annotations are cached)."""
        if self._census is None:
            return
        try:
            namespace = await self._gate.namespace_annotations(key.namespace)
        except Retry:
            namespace = None  # unreadable now: the census keeps what it knew
        self._census.reconciled(key, namespace=namespace, failure=failure)

    async def _read(self, key: WorkloadKey) -> JsonObject | None:
        try:
            return await self._kube.read_workload(KINDS[key.kind], key.namespace, key.name)
        except KubeApiError as e:
            log_event(
                logger, logging.WARNING, "cannot read workload", workload=str(key), error=str(e)
            )
            raise Retry(f"cannot read {key}: {e}") from None

    async def _pass(self, key: WorkloadKey, obj: JsonObject, log: WorkloadLog) -> bool:
        """One read-decide-act pass; False when a patch met a concurrent change."""
        decision = await self._gate.check(key, obj, log)
        if decision is None:
            return False
        # What to do is decided in one place, which `image-cloner plan` prints too.
        step = next_step(obj, decision=decision, settings=self._settings)
        if step.step is Step.SKIP:
            return True
        if step.step is Step.WAIT:
            # A rollout onto our backups is followed, and undone if it fails: controller.rollback.
            followed = await self._rollback.follow(key, obj)
            if followed is Followed.CHANGED:
                return False
            log.not_ready(step.reason)
            if followed is Followed.WAITING:
                raise _Following
            # Not an error: the watch event that completes the rollout brings the key back.
            return True
        log.inspecting()
        for source, backup in rewritten_backups(obj, step.images):
            await self.referrers.met(obj, source, backup)
        plan = await self._plan(obj, step, log)
        if not plan:
            await self._keep_pull_secret(key, obj)
            return True
        rewrites = await self._copy_all(plan, log, obj)
        if step.limit is Limit.IMMUTABLE:
            await self._backed_up(key, obj, plan, log)
        elif step.limit is Limit.ADMISSION:
            # Admission mode: Pods get the backup, the workload stays as its owner wrote it.
            log.not_rewritten("admission mode: workloads are never rewritten")
        elif step.limit is Limit.POLICY:
            log.not_rewritten(step.reason, resource_version=obj["metadata"].get("resourceVersion"))
            await self._gate.copied_only(obj, decision)
        else:
            return await self._rewrite_now(key, obj, rewrites, log)
        return True

    async def _rewrite_now(
        self, key: WorkloadKey, obj: JsonObject, rewrites: Sequence[Pinned], log: WorkloadLog
    ) -> bool:
        pull_secret = await self._ensure_pull_secret(key)
        try:
            await self._rewrite(key, obj, rewrites, log, pull_secret=pull_secret)
        except _Changed as changed:
            log_event(
                logger,
                logging.DEBUG,
                "workload changed meanwhile, reading it again",
                name=key.name,
                namespace=key.namespace,
                status=changed.error.status,
                reason=changed.error.reason,
            )
            return False
        return True

    async def _plan(self, obj: JsonObject, step: WorkloadStep, log: WorkloadLog) -> list[Pin]:
        """Each image's log line and metric, then the pins of those to copy (or `_Failed`)."""
        for image in step.images:
            container = image.container
            log.checking_container(container.image, container=container.name)
            if image.verdict is Verdict.EXCLUDED:
                log.excluded(container.image, image.why, container=container.name)
                self._metrics.image_skipped(SkipReason.EXCLUDED)
            elif image.verdict is Verdict.BACKUP:
                log.already_cloned(container.image, container=container.name)
                self._metrics.image_skipped(SkipReason.ALREADY_BACKUP)
            elif image.verdict is Verdict.INVALID:
                self._metrics.image_failed(FailureReason.INVALID_REFERENCE)
                log.clone_failed(container.image, image.why, container=container.name)
        if step.step is Step.FAIL:
            raise _Failed(step.reason)
        wanted = [image.wanted for image in step.copies]
        if not wanted:
            return []
        under_way = [
            task
            for _, source, target in wanted
            if source.digest is None and (task := self.copies.under_way(source, target))
        ]
        if under_way:
            # Another workload's copy of this tag runs: its pods are read once it is done
            # (most likely it is their digest, and then the copy is a remembered one).
            raise _Pending(under_way)
        try:
            # Which digest each container runs, and so what to copy: controller.pinning.
            return await self._pinning.pins(obj, wanted)
        except PinningFailed as e:
            raise _Failed(e.message, reason=REWRITE_REFUSED if e.refused else CLONE_FAILED) from e

    async def _copy_all(
        self, plan: Sequence[Pin], log: WorkloadLog, obj: JsonObject
    ) -> list[Pinned]:
        outcomes = await asyncio.gather(*(self._copy(pin, log, obj) for pin in plan))
        failures = [outcome for outcome in outcomes if isinstance(outcome, _CopyFailed)]
        if failures:
            # Come back when the images' backoff allows; else the queue's own backoff decides.
            after = max(failure.after for failure in failures)
            message = "; ".join(failure.message for failure in failures)
            raise _Failed(message, after=after if after > 0 else None)
        pending = [outcome.copy for outcome in outcomes if isinstance(outcome, _CopyPending)]
        if pending:
            # Nothing is written before every copy is verified; the worker is free meanwhile.
            raise _Pending(pending)
        return [
            pin.rewritten(outcome)
            for pin, outcome in zip(plan, outcomes, strict=True)
            if isinstance(outcome, CopyResult)
        ]

    async def _copy(
        self, pin: Pin, log: WorkloadLog, obj: JsonObject
    ) -> CopyResult | _CopyPending | _CopyFailed:
        """Copy one image: its result; the copy still under way after `COPY_PATIENCE`; or
        what failed and the retry delay when it failed."""
        source, target, name = pin.source, pin.target, pin.container.name
        blocked = self.copies.blocked(source, target)
        if blocked is not None:
            # The same words as the failure itself, so repeated Events count up as one.
            left, reason = blocked
            return _CopyFailed(f"{source} → {target}: {reason}", left)
        log.cloning(str(pin.container.image), container=name, target=str(target))
        try:
            if self._access is not None:  # with the workload's own, proven, source login
                started = await self._access.start(self.copies, obj, source, target)
            else:
                started = self.copies.start(source, target)
            if isinstance(started, asyncio.Task):
                done, _ = await asyncio.wait({started}, timeout=COPY_PATIENCE)
                if not done:
                    return _CopyPending(started)
                started = started.result()
            result = started
        except RegistryError as e:
            log.clone_failed(pin.container.image, str(e), container=name, target=str(target))
            retry = self.copies.blocked(source, target)
            return _CopyFailed(f"{source} → {target}: {e}", retry[0] if retry else 0.0)
        copied_from = source.with_digest(result.digest)
        if result.already_present:
            log.already_cloned(pin.container.image, container=name, target=str(target))
            await self.referrers.met(obj, copied_from, result.pinned)
        else:
            self.referrers.copied(copied_from, result.pinned)
        if self._index is not None:
            # The admission webhook may now point Pods naming this image at the copy.
            credentials = self._settings.registry_options.credentials
            anonymous = copied_anonymously(source, credentials)
            written = parse_reference(pin.container.image)
            self._index.record(written, result.pinned, anonymous=anonymous)
        return result

    async def _ensure_pull_secret(self, key: WorkloadKey) -> str | None:
        try:
            return await self._pull_secrets.ensure(key.namespace)
        except KubeApiError as e:
            raise _Failed(f"cannot write pull secret {self._pull_secrets.name}: {e}") from None

    async def _keep_pull_secret(self, key: WorkloadKey, obj: JsonObject) -> None:
        """An already rewritten workload: its namespace's pull Secret holds the current login."""
        try:
            await self._pull_secrets.keep_current(key.namespace, obj)
        except KubeApiError as e:
            raise _Failed(f"cannot update pull secret {self._pull_secrets.name}: {e}") from None

    async def _rewrite(
        self,
        key: WorkloadKey,
        obj: JsonObject,
        plan: Sequence[Pinned],
        log: WorkloadLog,
        *,
        pull_secret: str | None,
    ) -> None:
        rewrites = {r.pin.container.name: r.image for r in plan}
        try:
            patch = build_patch(obj, rewrites, pull_secret=pull_secret)
        except PatchError as e:
            raise _Failed(f"cannot build the patch: {e}") from None
        if not patch:
            return
        for r in plan:
            log.updating(r.pin.container.image, r.image, container=r.pin.container.name)
        try:
            patched = await self._kube.patch_workload(
                KINDS[key.kind], key.namespace, key.name, patch
            )
        except NotFound:
            return  # deleted while its images were copied: nothing left to rewrite
        except KubeApiError as e:
            if changed_meanwhile(e):
                raise _Changed(e) from None
            # Refused for what it is (an admission policy, validation): re-reading would
            # only repeat that.
            raise _Failed(f"images copied, but the workload cannot be patched: {e}") from None
        for r in plan:
            log.updated(r.image, container=r.pin.container.name)
        self._metrics.workload_rewritten(key.kind)
        message = "; ".join(str(r) for r in plan)
        self._kube.record_event(patched, reason=IMAGES_CLONED, message=message)

    async def _backed_up(
        self, key: WorkloadKey, obj: JsonObject, plan: Sequence[Pin], log: WorkloadLog
    ) -> None:
        # docs/controller.md says why: a Job's template is immutable, a Pod's images change
        # only by restarting its containers in place, without a pull Secret.
        why = f"a {key.kind} is backed up, never rewritten"
        log.not_rewritten(why)
        self._metrics.workload_not_rewritten(key.kind, NotRewrittenReason.IMMUTABLE_TEMPLATE)
        copies = "; ".join(f"{r.container.image} → {r.target}" for r in plan)
        # Repeats (every pass over a running Pod) count up this one Event: same message.
        message = f"{copies} ({why})"
        self._kube.record_event(obj, reason=IMAGES_BACKED_UP, message=message)

    async def _report_failure(self, obj: JsonObject, failure: _Failed, key: WorkloadKey) -> None:
        log_event(
            logger,
            logging.WARNING,
            "workload left untouched",
            name=key.name,
            namespace=key.namespace,
            reason=failure.message,
        )
        self._kube.record_event(obj, reason=failure.reason, message=failure.message, warning=True)
