"""Image copies as the controller runs them: once per image, counted, backed off when failing.

Many workloads share an image, and all of them are reconciled at about the same time after
a start. `ImageCopies` makes sure that an image is copied by one attempt however many
workloads wait for it (single-flight), that the attempt is counted once in the metrics,
and that an image that keeps failing waits out its backoff (`ImageBackoff`) instead of
being retried by every workload that uses it.

A copy pinned to a digest that succeeded is remembered as verified for `VERIFIED_FOR`
seconds (at most `VERIFIED_MAX` of them, least recently used out first): the next workload
running the same digest gets that result without a request to the backup registry (a
thousand workloads on thirty images would otherwise cost a thousand HEADs). Only pinned
copies: a digest names the same bytes for ever, while a tag may move. What can make a
remembered copy untrue is someone deleting it from the backup registry; the period bounds
how long a new workload could be pointed at it, and the rollout that follows a rewrite
(`controller.rollback`) undoes one whose pods cannot pull it.

`start` runs a copy in the background (its task shared by every workload waiting for it),
so that a reconcile worker does not wait out a large copy: the workload is queued again
when the task is done (`queue.Retry.until`). A workload on a tag whose copy is under way
waits for that copy before its pods are even read (`under_way`): after a start, a thousand
workloads on thirty images would otherwise each be read twice. `stop` cancels what still
runs, when this replica stops working (shutdown, or a lost Lease): only the leader copies.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Protocol

from image_cloner.backoff import Backoff, KeyedBackoff
from image_cloner.metrics import FailureReason, Metrics, SkipReason
from image_cloner.oci.copying import CopyResult, TagOutcome
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.references import Reference
from image_cloner.singleflight import SingleFlight

__all__ = [
    "IMAGE_BACKOFF",
    "VERIFIED_FOR",
    "VERIFIED_MAX",
    "ImageBackoff",
    "ImageCopier",
    "ImageCopies",
    "ImageKey",
]

IMAGE_BACKOFF = Backoff(base=5.0, cap=600.0)
"""A failing image is tried again after 5 s, 10 s, 20 s, ... at most every 10 minutes."""

VERIFIED_FOR = 600.0
"""Seconds a verified copy of a digest is trusted without asking the backup registry again."""

VERIFIED_MAX = 8192
"""Verified copies remembered at most (a few hundred bytes each)."""

ImageKey = tuple[str, str]
"""(source name, target name): one copy job."""


class ImageCopier(Protocol):
    """What the controller needs of `oci.copying.Copier` (a fake in unit tests)."""

    async def copy_image(self, source: Reference, target: Reference) -> CopyResult: ...


class ImageBackoff:
    """When each failing image may be tried again; shared by every workload using it."""

    def __init__(
        self,
        backoff: Backoff = IMAGE_BACKOFF,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._delays: KeyedBackoff[ImageKey] = KeyedBackoff(backoff)
        self._clock = clock
        self._blocked: dict[ImageKey, tuple[float, str]] = {}

    @property
    def size(self) -> int:
        """Images remembered as failing (blocked now, or recently)."""
        return len(self._blocked)

    def blocked(self, key: ImageKey) -> tuple[float, str] | None:
        """(seconds left, last failure) while `key` is backing off, else None."""
        entry = self._blocked.get(key)
        if entry is None:
            return None
        left = entry[0] - self._clock()
        return (left, entry[1]) if left > 0 else None

    def failed(self, key: ImageKey, reason: str) -> float:
        """Record a failed attempt; returns the seconds until the next one."""
        now = self._clock()
        self._prune(now)
        delay = self._delays.when(key)
        self._blocked[key] = (now + delay, reason)
        return delay

    def succeeded(self, key: ImageKey) -> None:
        self._delays.forget(key)
        self._blocked.pop(key, None)

    def _prune(self, now: float) -> None:
        # An image free for longer than the cap that nobody tried again belongs to workloads
        # that were deleted or fixed; without this its entry would stay for the process's life.
        cap = self._delays.backoff.cap
        for key in [k for k, (until, _) in self._blocked.items() if now - until > cap]:
            self.succeeded(key)


class ImageCopies:
    """The controller's copies: one attempt per image at a time, metrics, per-image backoff."""

    def __init__(
        self,
        copier: ImageCopier,
        *,
        metrics: Metrics,
        backoff: ImageBackoff | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._copier = copier
        self._metrics = metrics
        self.backoff = backoff or ImageBackoff()
        self._clock = clock
        self._flights: SingleFlight[CopyResult] = SingleFlight()
        self._verified: OrderedDict[ImageKey, tuple[float, CopyResult]] = OrderedDict()
        self._background: dict[ImageKey, asyncio.Task[CopyResult]] = {}

    def blocked(self, source: Reference, target: Reference) -> tuple[float, str] | None:
        """(seconds left, last failure) while this copy is backing off, else None."""
        return self.backoff.blocked((source.name, target.name))

    def verified(self, source: Reference, target: Reference) -> CopyResult | None:
        """The result of this pinned copy if it succeeded lately, as "already present"."""
        key = (source.name, target.name)
        entry = self._verified.get(key)
        if entry is None:
            return None
        if self._clock() - entry[0] >= VERIFIED_FOR:
            del self._verified[key]
            return None
        self._verified.move_to_end(key)
        self._metrics.image_skipped(SkipReason.ALREADY_PRESENT)
        return entry[1]

    async def copy(self, source: Reference, target: Reference) -> CopyResult:
        """Copy `source` to `target`, joining an attempt already under way; `RegistryError`."""
        if (known := self.verified(source, target)) is not None:
            return known
        key = (source.name, target.name)
        return await self._flights.run(key, lambda: self._attempt(key, source, target))

    def start(self, source: Reference, target: Reference) -> CopyResult | asyncio.Task[CopyResult]:
        """A verified result, else the background copy of this image (started, or joined).

        The task is started in the caller's context: it copies with the source login in
        force there (`SourceLogins.using`), as an awaited `copy` would.
        """
        if (known := self.verified(source, target)) is not None:
            return known
        key = (source.name, target.name)
        task = self._background.get(key)
        if task is None:
            task = asyncio.create_task(self.copy(source, target), name=f"copy {target.name}")
            self._background[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return task

    def under_way(self, source: Reference, target: Reference) -> asyncio.Task[CopyResult] | None:
        """The background copy of this tag (to any digest) running now, if there is one."""
        wanted = _tagged((source.name, target.name))
        # A scan: background copies are a handful at a time, not one per workload.
        return next((t for k, t in self._background.items() if _tagged(k) == wanted), None)

    def _finished(self, key: ImageKey, task: asyncio.Task[CopyResult]) -> None:
        if self._background.get(key) is task:
            del self._background[key]
        if not task.cancelled():
            # Retrieved here: a failure is in the image's backoff, reported by the next pass.
            task.exception()

    async def stop(self) -> None:
        """Cancel the background copies (interrupting one is safe: the tag is pushed last)."""
        tasks = list(self._background.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _attempt(self, key: ImageKey, source: Reference, target: Reference) -> CopyResult:
        started = time.monotonic()
        try:
            with self._metrics.copying():
                result = await self._copier.copy_image(source, target)
        except RegistryError as e:
            self._metrics.image_failed(FailureReason.of(e))
            self.backoff.failed(key, str(e))
            raise
        self.backoff.succeeded(key)
        if source.digest is not None and target.digest is not None:
            self._remember(key, result)
        if result.already_present:
            self._metrics.image_skipped(SkipReason.ALREADY_PRESENT)
        else:
            seconds = time.monotonic() - started
            self._metrics.image_copied(bytes_copied=result.bytes_copied, seconds=seconds)
        return result

    def _remember(self, key: ImageKey, result: CopyResult) -> None:
        # As the next workload would find it: present, its tag (if pushed now) already there.
        tag = TagOutcome.ALREADY if result.tag is TagOutcome.PUSHED else result.tag
        seen = CopyResult(
            result.source,
            result.target,
            result.digest,
            already_present=True,
            tag=tag,
            tag_digest=result.tag_digest,
        )
        self._verified[key] = (self._clock(), seen)
        self._verified.move_to_end(key)
        if len(self._verified) > VERIFIED_MAX:
            self._verified.popitem(last=False)


def _tagged(key: ImageKey) -> ImageKey:
    """A copy's key without its digests: which tag of which source, to which backup tag."""
    return (key[0].partition("@")[0], key[1].partition("@")[0])
