"""What the controller counts about its work: Prometheus collectors, and their label sets.

Labels come from small fixed sets (`SkipReason`, `FailureReason`, a workload kind, a status
class), never from image names, namespaces or anything a user controls, so series stay few
and nothing secret leaks into a scrape. The `registry` label of the request counters is a
registry host only when the configuration names it (the backup registry, mirrored source
registries and their mirrors, hosts with credentials or marked insecure); every other host
is `other`. Source hosts come from users' pod templates, so naming them would let anyone
who can create a Deployment add series; the hosts an SRE alerts on are configured ones.

All collectors live on one dedicated `CollectorRegistry` (no global state; tests make as
many as they like). The age of each watch stream comes from `health.Health` at scrape
time; `controller.server` serves all of it over HTTP.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from enum import StrEnum
from urllib.parse import urlsplit

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
from image_cloner.oci.options import RegistryOptions
from image_cloner.oci.references import InvalidReference, Registry
from image_cloner.protection import State
from image_cloner.workloads import KINDS

__all__ = [
    "FailureReason",
    "Metrics",
    "NotRewrittenReason",
    "ResyncOutcome",
    "SkipReason",
    "registry_labels",
]

COPY_DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
RECONCILE_DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 1800)
"""A reconcile with nothing to copy takes milliseconds; one that copies, minutes."""
OTHER_REGISTRY = "other"
"""The `registry` label of every host the configuration does not name."""
NO_RESPONSE = "none"
"""The `code` label of a request that got no answer (refused, reset, timed out)."""


class SkipReason(StrEnum):
    """Why an image was not copied."""

    ALREADY_BACKUP = "already_backup"
    """The workload already points into the backup location."""
    ALREADY_PRESENT = "already_present"
    """The backup registry already holds it (one HEAD request)."""
    EXCLUDED = "excluded"
    """It matches `IMAGE_CLONER_EXCLUDE_IMAGES`: never backed up nor rewritten."""


class NotRewrittenReason(StrEnum):
    """Why a workload whose images were backed up was left as it is."""

    IMMUTABLE_TEMPLATE = "immutable_template"
    """Its pod template cannot be changed (Job, bare Pod)."""


class ResyncOutcome(StrEnum):
    """How re-examining a backed-up image for new referrers ended (`controller.referrer_resync`)."""

    CURRENT = "current"
    """The backup had every referrer the source has."""
    COPIED = "copied"
    """Referrers attached upstream since the copy were copied."""
    FAILED = "failed"


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


def registry_labels(options: RegistryOptions, *, backup_host: str) -> dict[str, str]:
    """Request host (`host[:port]`, as URLs have it) → `registry` label, for configured hosts.

    The label is the host as the configuration spells it (`docker.io`, whose API answers on
    registry-1.docker.io); a mirror endpoint is labelled with its own host.
    """
    labels: dict[str, str] = {}
    named = {backup_host, *options.mirrors, *options.credentials, *options.insecure_hosts}
    for host in sorted(named):
        try:
            labels[Registry(host).api_host] = host
        except InvalidReference:
            continue
    for urls in options.mirrors.values():
        for url in urls:
            labels.setdefault(urlsplit(url).netloc, urlsplit(url).netloc)
    return labels


def _code_class(status: int | None) -> str:
    return NO_RESPONSE if status is None else f"{status // 100}xx"


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
        yield GaugeMetricFamily("image_cloner_ready", "", value=0.0)

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        for kind in self._health.kinds:
            family.add_metric([kind], self._health.watch_age(kind))
        yield family
        # What /readyz answers, for alerts that cannot probe the pod themselves.
        yield GaugeMetricFamily(
            "image_cloner_ready",
            "1 when /readyz passes (backup registry checked, every watch current), else 0.",
            value=0.0 if self._health.problems() else 1.0,
        )


class _WorkloadsCollector(Collector):
    # Counted at scrape time from `controller.census`: always the current state.
    def __init__(
        self, kinds: tuple[str, ...], counts: Callable[[], Mapping[tuple[str, State], int]]
    ) -> None:
        self._kinds = kinds
        self._counts = counts

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "image_cloner_workloads",
            "Workloads by state (protected, unprotected, failing, excluded; see image-cloner"
            " status), owned objects counted through their owner.",
            labels=["kind", "state"],
        )

    def describe(self) -> Iterator[Metric]:
        yield self._family()

    def collect(self) -> Iterator[Metric]:
        family = self._family()
        counts = self._counts()
        for kind in self._kinds:
            for state in State:
                family.add_metric([kind, state.value], float(counts.get((kind, state), 0)))
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
        self._push_login_handed_out = Gauge(
            "image_cloner_pull_secret_uses_push_credentials",
            "1 when pull Secrets get the push login (no pull-only login is set), else 0.",
            registry=self.registry,
        )
        self._not_rewritten = Counter(
            "image_cloner_workloads_not_rewritten",
            "Passes that backed up a workload's images and left the workload as it is.",
            ["kind", "reason"],
            registry=self.registry,
        )
        self._queue_depth = Gauge(
            "image_cloner_queue_depth",
            "Workloads waiting to be reconciled.",
            registry=self.registry,
        )
        self._leader = Gauge(
            "image_cloner_leader",
            "1 while this replica holds the leader-election Lease (or runs without one), else 0.",
            registry=self.registry,
        )

        self._reconciles = Counter(
            "image_cloner_reconciles",
            "Reconcile passes (one workload read, decided on and acted on), failed ones included.",
            ["kind"],
            registry=self.registry,
        )
        self._reconcile_errors = Counter(
            "image_cloner_reconcile_errors",
            "Reconcile passes that failed and were put back with backoff.",
            ["kind"],
            registry=self.registry,
        )
        self._reconcile_duration = Histogram(
            "image_cloner_reconcile_duration_seconds",
            "Time of one reconcile pass, image copies included.",
            ["kind"],
            buckets=RECONCILE_DURATION_BUCKETS,
            registry=self.registry,
        )
        self._copies_active = Gauge(
            "image_cloner_copies_active",
            "Image copies in progress now.",
            registry=self.registry,
        )
        self._requests = Counter(
            "image_cloner_registry_requests",
            "HTTP requests sent to registries, by registry and status class (none: no answer).",
            ["registry", "code"],
            registry=self.registry,
        )
        self._request_errors = Counter(
            "image_cloner_registry_errors",
            "Registry requests that failed: no answer, 429 or 5xx (each retry counts).",
            ["registry"],
            registry=self.registry,
        )
        self._resyncs = Counter(
            "image_cloner_referrer_resyncs",
            "Re-examinations of backed-up images for signatures attached upstream since.",
            ["outcome"],
            registry=self.registry,
        )
        self._registry_labels: Mapping[str, str] = {}
        # Every series exists from the first scrape, so rate() and alerts see zeros.
        for skip in SkipReason:
            self._skipped.labels(skip.value)
        for failure in FailureReason:
            self._failed.labels(failure.value)
        for kind in self._kinds:
            if _rewritable(kind):
                self._rewritten.labels(kind)
            else:
                for why in NotRewrittenReason:
                    self._not_rewritten.labels(kind, why.value)
            self._reconciles.labels(kind)
            self._reconcile_errors.labels(kind)
            self._reconcile_duration.labels(kind)
        self._request_errors.labels(OTHER_REGISTRY)
        for outcome in ResyncOutcome:
            self._resyncs.labels(outcome.value)
        self.registry.register(_WatchAgeCollector(health))

    def image_copied(self, *, bytes_copied: int, seconds: float) -> None:
        self._copied.inc()
        self._bytes.inc(bytes_copied)
        self._duration.observe(seconds)

    def image_skipped(self, reason: SkipReason) -> None:
        self._skipped.labels(SkipReason(reason).value).inc()

    def image_failed(self, reason: FailureReason) -> None:
        self._failed.labels(FailureReason(reason).value).inc()

    def referrers_resynced(self, outcome: ResyncOutcome) -> None:
        self._resyncs.labels(ResyncOutcome(outcome).value).inc()

    def workload_rewritten(self, kind: str) -> None:
        if kind not in self._kinds:
            raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(self._kinds)}")
        self._rewritten.labels(kind).inc()

    def pull_secret_uses_push_login(self, uses: bool) -> None:
        self._push_login_handed_out.set(1 if uses else 0)

    def workload_not_rewritten(self, kind: str, reason: NotRewrittenReason) -> None:
        if kind not in self._kinds:
            raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(self._kinds)}")
        self._not_rewritten.labels(kind, NotRewrittenReason(reason).value).inc()

    def set_leader(self, leading: bool) -> None:
        """This replica started (True) or stopped (False) doing the work."""
        self._leader.set(1 if leading else 0)

    @contextmanager
    def reconciling(self, kind: str) -> Iterator[None]:
        """Count and time the reconcile pass run inside; an exception counts as an error."""
        started = time.monotonic()
        try:
            yield
        except Exception:  # cancellation (shutdown) is no error: BaseException passes
            self._reconcile_errors.labels(kind).inc()
            raise
        finally:
            self._reconciles.labels(kind).inc()
            self._reconcile_duration.labels(kind).observe(time.monotonic() - started)

    @contextmanager
    def copying(self) -> Iterator[None]:
        """Count the image copy run inside as active."""
        with self._copies_active.track_inprogress():
            yield

    def observe_registries(self, labels: Mapping[str, str]) -> None:
        """Label requests to these hosts (`registry_labels`) by name, all others `other`."""
        self._registry_labels = dict(labels)
        for label in self._registry_labels.values():
            self._request_errors.labels(label)

    def registry_request(self, host: str, status: int | None) -> None:
        """A `RequestListener` (`RegistryOptions.request_listener`): one request sent."""
        label = self._registry_labels.get(host, OTHER_REGISTRY)
        self._requests.labels(label, _code_class(status)).inc()
        if status is None or status == 429 or status >= 500:
            self._request_errors.labels(label).inc()

    def track_workloads(self, counts: Callable[[], Mapping[tuple[str, State], int]]) -> None:
        """Report `counts()` ((kind, state) → workloads) as `image_cloner_workloads` at each
        scrape; every kind and state is a series, zeros included."""
        self.registry.register(_WorkloadsCollector(tuple(self._kinds), counts))

    def track_queue(self, depth: Callable[[], float]) -> None:
        """Report `depth()` (e.g. `lambda: queue.depth`) as the queue depth at each scrape."""
        self._queue_depth.set_function(depth)


def _rewritable(kind: str) -> bool:
    found = KINDS.get(kind)
    return found is None or found.rewritable
