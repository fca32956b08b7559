"""What the controller reports about itself: Prometheus metrics, liveness and readiness.

Labels come from small fixed sets (a reason, a workload kind), never from image names,
namespaces or anything a user controls, so series stay few and nothing secret leaks
into a scrape. All collectors live on one dedicated `CollectorRegistry` (no global
state; tests make as many as they like).

Readiness answers "is this process doing its job": the start-up registry check passed,
and every watch stream delivered an event or a successful (re)list recently. A silently
dead watch stream is a known failure of operators, so its age is both a metric and a
readiness condition.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from typing import Self

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from image_cloner.oci.errors import (
    AuthenticationError,
    DigestMismatchError,
    InvalidManifestError,
    NotFoundError,
    RegistryUnavailableError,
    UnsupportedMediaTypeError,
)
from image_cloner.oci.references import InvalidReference
from image_cloner.workloads import KINDS

__all__ = [
    "DEFAULT_METRICS_PORT",
    "DEFAULT_WATCH_STALENESS",
    "FailureReason",
    "Health",
    "Metrics",
    "MetricsServer",
    "SkipReason",
    "make_app",
]

DEFAULT_METRICS_PORT = 8080
DEFAULT_WATCH_STALENESS = 300.0
"""Seconds without a watch event or (re)list after which a stream counts as stale."""

COPY_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class SkipReason(StrEnum):
    """Why an image was not copied."""

    ALREADY_BACKUP = "already_backup"
    """The workload already points into the backup location."""
    ALREADY_PRESENT = "already_present"
    """The backup registry already holds it (one HEAD request)."""


class FailureReason(StrEnum):
    """Why copying an image failed; one per `RegistryError` family, plus `other`."""

    AUTHENTICATION = "authentication"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    DIGEST_MISMATCH = "digest_mismatch"
    INVALID_REFERENCE = "invalid_reference"
    INVALID_MANIFEST = "invalid_manifest"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
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


class Health:
    """The facts `/readyz` decides on, fed by the controller as they happen."""

    def __init__(
        self,
        *,
        kinds: Iterable[str] = tuple(KINDS),
        staleness: float = DEFAULT_WATCH_STALENESS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kinds: tuple[str, ...] = tuple(kinds)
        self.staleness = staleness
        self._clock = clock
        self._registry_ok: bool | None = None
        self._last_event: dict[str, float | None] = dict.fromkeys(self.kinds)

    def set_registry_ok(self, ok: bool) -> None:
        """Record the outcome of the backup-registry check (start-up, or a later re-check)."""
        self._registry_ok = ok

    def mark_watch_event(self, kind: str) -> None:
        """A watch stream for `kind` delivered an event, or a (re)list of `kind` succeeded."""
        if kind not in self._last_event:
            raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(self.kinds)}")
        self._last_event[kind] = self._clock()

    def watch_age(self, kind: str) -> float:
        """Seconds since the last event of `kind`; infinite when there was none yet."""
        last = self._last_event[kind]
        return math.inf if last is None else max(0.0, self._clock() - last)

    def problems(self) -> list[str]:
        """Why the process is not ready, one line each; empty when it is ready."""
        found: list[str] = []
        if self._registry_ok is None:
            found.append("backup registry check has not run yet")
        elif not self._registry_ok:
            found.append("backup registry check failed")
        for kind in self.kinds:
            age = self.watch_age(kind)
            if math.isinf(age):
                found.append(f"{kind} watch has had no event or listing yet")
            elif age > self.staleness:
                found.append(
                    f"{kind} watch is stale: last event {age:.0f}s ago "
                    f"(limit {self.staleness:.0f}s)"
                )
        return found

    @property
    def ready(self) -> bool:
        return not self.problems()


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


def make_app(*, metrics: Metrics, health: Health) -> web.Application:
    """`/metrics` (Prometheus text or OpenMetrics), `/healthz` (alive), `/readyz`."""

    async def serve_metrics(request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(metrics.registry), headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        problems = health.problems()
        if problems:
            return web.Response(status=503, text="".join(f"{p}\n" for p in problems))
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class MetricsServer:
    """Serves `make_app` on `port` (0: any free port; see `.port` once started)."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        health: Health,
        port: int = DEFAULT_METRICS_PORT,
        host: str | None = None,
    ) -> None:
        """`host=None` listens on all interfaces, as a pod must."""
        self._runner = web.AppRunner(make_app(metrics=metrics, health=health), access_log=None)
        self._host = host
        self._port = port

    @property
    def port(self) -> int:
        """The port actually listened on."""
        addresses = self._runner.addresses
        if not addresses:
            raise RuntimeError("metrics server is not started")
        return int(addresses[0][1])

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
