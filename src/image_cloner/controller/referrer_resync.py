"""Signatures attached upstream after an image was backed up reach the backup too.

A copy takes an image's signatures, SBOMs and attestations along (`oci.referrers`), but
what is attached later (a new signature after a key rotation, a new attestation) would never
follow: a backup that already holds the image ends the copy at its first HEAD, and a
rewritten workload names the backup and is not copied again. A cluster whose policy moves
to the new key would then reject the backup.

So each backed-up image, (source repository, backup repository, digest), is examined again,
at most once per `IMAGE_CLONER_REFERRERS_RESYNC` (default an hour), when a reconcile pass
meets it: the workloads whose copy found the image present, and rewritten workloads through
the original image our annotation records (pinned backups only: a tag-form backup names no
digest). Whatever workload meets it first claims the turn; the others sharing the image
cost nothing, not even a request (the rule issue 14 sets: no request per additional
workload). An image this process copied is due an interval after its copy; one it first
meets already backed up (after a restart, say) at a random point within the first
interval, so a restart on a converged fleet costs no request at once and the fleet's
re-examinations spread out instead of coming together. A quiet workload gets no pass of
its own (no watch event, and the resync lists versions only), so every `TICK` seconds the
workload that last met each due image is queued (`keep_due`): one per image, not per
workload.

One re-examination of an image with P platforms costs, at the source, 1 + P referrers
listings (plus 1 + P `sha256-<hex>` tag GETs where the source has no referrers API) and
3 (1 + P) lookups of cosign's tags; at the backup one HEAD per referrer found (and a GET
of its tag-schema index where the backup keeps one); only what is missing is copied.
It runs with the workload's proven source login (`controller.access`). A failure is logged
and counted (`image_cloner_referrer_resyncs_total{outcome="failed"}`) and never fails the
workload, which runs a complete backup; the image is tried again after `RETRY` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from functools import partial
from typing import Protocol

from image_cloner.backups import ImagePlan, Verdict
from image_cloner.controller.access import SourceAccess
from image_cloner.controller.kube import JsonObject
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.metrics import Metrics, ResyncOutcome
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.references import InvalidReference, Reference, parse_reference
from image_cloner.workloads import InvalidAnnotation, WorkloadKey, key_of, original_images

__all__ = [
    "KNOWN_IMAGES",
    "RETRY",
    "TICK",
    "ReferrerResync",
    "ReferrerSyncer",
    "rewritten_backups",
]

logger = logging.getLogger(CONTROLLER_LOGGER)

KNOWN_IMAGES = 20_000
"""Images whose next re-examination we remember; one forgotten is treated as first met."""
RETRY = 300.0
"""Seconds before a failed re-examination is tried again (at most the interval)."""
TICK = 60.0
"""Seconds between looks for images due whose workloads no event brings back."""

_Key = tuple[str, str, str]


class ReferrerSyncer(Protocol):
    """What re-examination needs of `oci.copying.Copier`."""

    async def sync_referrers(self, source: Reference, target: Reference) -> int: ...


class ReferrerResync:
    """When each backed-up image is next examined for new referrers, and the examination."""

    def __init__(
        self,
        syncer: ReferrerSyncer,
        *,
        interval: float | None,
        metrics: Metrics,
        access: SourceAccess | None = None,
        clock: Callable[[], float] = time.monotonic,
        spread: Callable[[], float] = random.random,
    ) -> None:
        """`interval` None: never examined again. `spread` picks the share (0 to 1) of the
        interval after which an image first met already backed up is due. `access` None
        (unit tests) reads sources with the controller's own logins."""
        self._syncer = syncer
        self._access = access
        self._interval = interval
        self._metrics = metrics
        self._clock = clock
        self._spread = spread
        self._due: OrderedDict[_Key, float] = OrderedDict()
        self._met_by: dict[_Key, WorkloadKey] = {}
        """The workload whose pass last met each image: the one to queue when it is due."""

    def copied(self, source: Reference, backup: Reference) -> None:
        """`backup` was just copied with every referrer `source` had: due an interval on."""
        if self._interval is not None:
            self._remember(_key(source, backup), self._clock() + self._interval)

    async def met(self, obj: JsonObject, source: Reference, backup: Reference) -> None:
        """A pass over the workload `obj` met `backup`, a copy of `source` (both by digest):
        examine it if due, reading `source` as `obj` may."""
        if self._interval is None:
            return
        key, now = _key(source, backup), self._clock()
        self._met_by[key] = key_of(obj)
        due = self._due.get(key)
        if due is None:
            self._remember(key, now + self._spread() * self._interval)
            return
        if now < due:
            return
        # Claimed before the first await: the workloads sharing the image skip it meanwhile.
        self._remember(key, now + self._interval)
        try:
            work = partial(self._syncer.sync_referrers, source, backup)
            if self._access is None:
                pushed = await work()
            else:
                pushed = await self._access.reading(obj, source, work)
        except RegistryError as e:
            self._remember(key, now + min(RETRY, self._interval))
            self._metrics.referrers_resynced(ResyncOutcome.FAILED)
            log_event(
                logger,
                logging.WARNING,
                "new referrers not copied",
                image=str(source),
                target=str(backup),
                error=str(e),
            )
            return
        self._metrics.referrers_resynced(ResyncOutcome.COPIED if pushed else ResyncOutcome.CURRENT)
        level = logging.INFO if pushed else logging.DEBUG
        log_event(
            logger, level, "referrers synced", image=str(source), target=str(backup), pushed=pushed
        )

    def due_workloads(self) -> set[WorkloadKey]:
        """A workload for each image now due that a pass met: queued by `keep_due`, so a
        quiet fleet (no watch event brings its workloads back) is examined too. Each is
        handed out once; the pass it gets meets the image again and claims its turn."""
        now = self._clock()
        due = [key for key, when in self._due.items() if when <= now and key in self._met_by]
        return {self._met_by.pop(key) for key in due}

    async def keep_due(self, queue: Callable[[WorkloadKey], None]) -> None:
        """Forever: every `TICK` seconds (or the interval, if shorter), `queue` the
        workloads of the images due."""
        if self._interval is None:
            return
        while True:
            await asyncio.sleep(min(TICK, self._interval))
            for workload in self.due_workloads():
                queue(workload)

    def _remember(self, key: _Key, due: float) -> None:
        self._due[key] = due
        self._due.move_to_end(key)
        if len(self._due) > KNOWN_IMAGES:
            forgotten, _ = self._due.popitem(last=False)
            self._met_by.pop(forgotten, None)


def _key(source: Reference, backup: Reference) -> _Key:
    assert backup.digest is not None, "a backup is re-examined by digest"
    return source.repository.name, backup.repository.name, backup.digest


def rewritten_backups(
    obj: JsonObject, images: Sequence[ImagePlan]
) -> list[tuple[Reference, Reference]]:
    """(source, backup) by digest of each container we rewrote to a pinned backup, the
    source being the original our annotation records. Pure."""
    try:
        originals = original_images(obj)
    except InvalidAnnotation:
        return []  # reported where the annotation matters (revert); nothing to examine here
    found = []
    for image in images:
        backup, original = image.source, originals.get(image.container.name)
        if image.verdict is not Verdict.BACKUP or backup is None or backup.digest is None:
            continue
        if original is None:
            continue
        try:
            source = parse_reference(original)
        except InvalidReference:
            continue
        found.append((source.with_digest(backup.digest), backup))
    return found
