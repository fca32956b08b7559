"""Image copies as the controller runs them: once per image, counted, backed off when failing.

Many workloads share an image, and all of them are reconciled at about the same time after
a start. `ImageCopies` makes sure that an image is copied by one attempt however many
workloads wait for it (single-flight), that the attempt is counted once in the metrics,
and that an image that keeps failing waits out its backoff (`ImageBackoff`) instead of
being retried by every workload that uses it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from image_cloner.backoff import Backoff, KeyedBackoff
from image_cloner.metrics import FailureReason, Metrics, SkipReason
from image_cloner.oci.copying import CopyResult
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.references import Reference
from image_cloner.singleflight import SingleFlight

__all__ = ["IMAGE_BACKOFF", "ImageBackoff", "ImageCopier", "ImageCopies", "ImageKey"]

IMAGE_BACKOFF = Backoff(base=5.0, cap=600.0)
"""A failing image is tried again after 5 s, 10 s, 20 s, ... at most every 10 minutes."""

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
        self, copier: ImageCopier, *, metrics: Metrics, backoff: ImageBackoff | None = None
    ) -> None:
        self._copier = copier
        self._metrics = metrics
        self.backoff = backoff or ImageBackoff()
        self._flights: SingleFlight[CopyResult] = SingleFlight()

    def blocked(self, source: Reference, target: Reference) -> tuple[float, str] | None:
        """(seconds left, last failure) while this copy is backing off, else None."""
        return self.backoff.blocked((source.name, target.name))

    async def copy(self, source: Reference, target: Reference) -> CopyResult:
        """Copy `source` to `target`, joining an attempt already under way; `RegistryError`."""
        key = (source.name, target.name)
        return await self._flights.run(key, lambda: self._attempt(key, source, target))

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
        if result.already_present:
            self._metrics.image_skipped(SkipReason.ALREADY_PRESENT)
        else:
            seconds = time.monotonic() - started
            self._metrics.image_copied(bytes_copied=result.bytes_copied, seconds=seconds)
        return result
