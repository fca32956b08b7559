"""What the controller counts about its work: Prometheus collectors, and their label sets.

Labels come from small fixed sets (`SkipReason`, `FailureReason`, a workload kind), never
from image names, namespaces or anything a user controls, so series stay few and nothing
secret leaks into a scrape. All collectors live on one dedicated `CollectorRegistry` (no
global state; tests make as many as they like). The age of each watch stream comes from
`health.Health` at scrape time; `controller.server` serves all of it over HTTP.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from image_cloner.health import Health
from image_cloner.oci.errors import (
    AuthenticationError,
    DigestMismatchError,
    InvalidManifestError,
    NotFoundError,
    RegistryUnavailableError,
    UnsupportedMediaTypeError,
)
from image_cloner.oci.references import InvalidReference

__all__ = ["FailureReason", "Metrics", "SkipReason"]

COPY_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class SkipReason(StrEnum):
    """Why an image was not copied."""

    ALREADY_BACKUP = "already_backup"
    """The workload already points into the backup location."""
    ALREADY_PRESENT = "already_present"
    """The backup registry already holds it (one HEAD request)."""


class FailureReason(StrEnum):
    """Why backing up an image failed; one per `RegistryError` family, the two refusals
    to rewrite what runs (`controller.pinning`), plus `other`."""

    AUTHENTICATION = "authentication"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    DIGEST_MISMATCH = "digest_mismatch"
    INVALID_REFERENCE = "invalid_reference"
    INVALID_MANIFEST = "invalid_manifest"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    DIGESTS_DISAGREE = "digests_disagree"
    """The workload's pods run different digests of the image: which to keep is unknown."""
    SOURCE_DIGEST_GONE = "source_digest_gone"
    """The pods run a digest the source no longer has: it cannot be backed up."""
    OTHER = "other"

    @classmethod
    def of(cls, error: BaseException) -> FailureReason:
        """The reason label for an exception raised while copying."""
        for error_type, reason in _REASONS:
            if isinstance(error, error_type):
                return reason
        return cls.OTHER


_REASONS: tuple[tuple[type[Exception], FailureReason], ...] = (
    (AuthenticationError, FailureReason.AUTHENTICATION),
    (NotFoundError, FailureReason.NOT_FOUND),
    (RegistryUnavailableError, FailureReason.UNAVAILABLE),
    (DigestMismatchError, FailureReason.DIGEST_MISMATCH),
    (InvalidReference, FailureReason.INVALID_REFERENCE),
    (InvalidManifestError, FailureReason.INVALID_MANIFEST),
    (UnsupportedMediaTypeError, FailureReason.UNSUPPORTED_MEDIA_TYPE),
)


class _WatchAgeCollector(Collector):
    # Computed at scrape time, so the age grows while a stream is silent.
    def __init__(self, health: Health) -> None:
        self._health = health

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "image_cloner_watch_last_event_age_seconds",
            "Seconds since the last watch event or (re)list per kind (+Inf before the first).",
            labels=["kind"],
        )

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for kind in self._health.kinds:
            family.add_metric([kind], self._health.watch_age(kind))
        yield family


class Metrics:
    """The controller's Prometheus collectors, recorded through typed methods."""

    def __init__(self, *, health: Health, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._kinds = health.kinds
        self._copied = Counter(
            "image_cloner_images_copied",
            "Images copied into the backup registry.",
            registry=self.registry,
        )
        self._skipped = Counter(
            "image_cloner_images_skipped",
            "Images not copied because there was nothing to copy.",
            ["reason"],
            registry=self.registry,
        )
        self._failed = Counter(
            "image_cloner_images_failed",
            "Image copies that failed (retried with backoff).",
            ["reason"],
            registry=self.registry,
        )
        self._bytes = Counter(
            "image_cloner_copied_bytes",
            "Blob and manifest bytes uploaded to the backup registry.",
            registry=self.registry,
        )
        self._duration = Histogram(
            "image_cloner_copy_duration_seconds",
            "Time to copy one image that was not yet in the backup registry.",
            buckets=COPY_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._rewritten = Counter(
            "image_cloner_workloads_rewritten",
            "Workloads patched to use backup images.",
            ["kind"],
            registry=self.registry,
        )
        self._queue_depth = Gauge(
            "image_cloner_queue_depth",
            "Workloads waiting to be reconciled.",
            registry=self.registry,
        )
        # Every series exists from the first scrape, so rate() and alerts see zeros.
        for skip in SkipReason:
            self._skipped.labels(skip.value)
        for failure in FailureReason:
            self._failed.labels(failure.value)
        for kind in self._kinds:
            self._rewritten.labels(kind)
        self.registry.register(_WatchAgeCollector(health))

    def image_copied(self, *, bytes_copied: int, seconds: float) -> None:
        self._copied.inc()
        self._bytes.inc(bytes_copied)
        self._duration.observe(seconds)

    def image_skipped(self, reason: SkipReason) -> None:
        self._skipped.labels(SkipReason(reason).value).inc()

    def image_failed(self, reason: FailureReason) -> None:
        self._failed.labels(FailureReason(reason).value).inc()

    def workload_rewritten(self, kind: str) -> None:
        if kind not in self._kinds:
            raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(self._kinds)}")
        self._rewritten.labels(kind).inc()

    def track_queue(self, depth: Callable[[], float]) -> None:
        """Report `depth()` (e.g. `lambda: queue.depth`) as the queue depth at each scrape."""
        self._queue_depth.set_function(depth)
