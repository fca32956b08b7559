"""Metrics, health and the HTTP server that serves both (`/metrics`, `/healthz`, `/readyz`)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from image_cloner.controller.server import MetricsServer
from image_cloner.health import Health
from image_cloner.metrics import FailureReason, Metrics, ResyncOutcome, SkipReason
from image_cloner.oci.errors import (
    AuthenticationError,
    DigestMismatchError,
    InvalidManifestError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
    UnsupportedMediaTypeError,
)
from image_cloner.oci.references import InvalidReference
from tests.support.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def health(clock: Clock) -> Health:
    return Health(kinds=("Deployment", "DaemonSet"), staleness=60, clock=clock)


@pytest.fixture
def metrics(health: Health) -> Metrics:
    return Metrics(health=health)


@pytest.fixture
async def server(metrics: Metrics, health: Health) -> AsyncIterator[str]:
    async with MetricsServer(metrics=metrics, health=health, host="127.0.0.1", port=0) as running:
        yield f"http://127.0.0.1:{running.port}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get(http: aiohttp.ClientSession, url: str, **headers: str) -> tuple[int, str, str]:
    async with http.get(url, headers=headers) as response:
        return response.status, response.headers["Content-Type"], await response.text()


async def scrape(
    http: aiohttp.ClientSession, base: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, _, text = await get(http, f"{base}/metrics")
    assert status == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_healthz_is_ok_while_the_process_runs(
    server: str, http: aiohttp.ClientSession
) -> None:
    assert (await get(http, f"{server}/healthz"))[0::2] == (200, "ok\n")


async def test_readyz_needs_the_registry_check_and_fresh_watches(
    server: str, http: aiohttp.ClientSession, health: Health, clock: Clock
) -> None:
    status, _, text = await get(http, f"{server}/readyz")
    assert status == 503
    assert text.splitlines() == [
        "backup registry check has not run yet",
        "Deployment watch has had no event or listing yet",
        "DaemonSet watch has had no event or listing yet",
    ]

    health.set_registry_ok(True)
    health.mark_watch_event("Deployment")
    status, _, text = await get(http, f"{server}/readyz")
    assert (status, text) == (503, "DaemonSet watch has had no event or listing yet\n")

    health.mark_watch_event("DaemonSet")
    assert (await get(http, f"{server}/readyz"))[0::2] == (200, "ok\n")
    assert health.ready

    clock.now += 45
    health.mark_watch_event("DaemonSet")
    clock.now += 30  # Deployment: 75 s without an event, over the 60 s limit
    status, _, text = await get(http, f"{server}/readyz")
    assert (status, text) == (503, "Deployment watch is stale: last event 75s ago (limit 60s)\n")

    health.mark_watch_event("Deployment")
    health.set_registry_ok(False)
    status, _, text = await get(http, f"{server}/readyz")
    assert (status, text) == (503, "backup registry check failed\n")


async def test_metrics_report_what_was_recorded(
    server: str, http: aiohttp.ClientSession, metrics: Metrics, health: Health, clock: Clock
) -> None:
    metrics.image_copied(bytes_copied=1234, seconds=2.0)
    metrics.image_copied(bytes_copied=66, seconds=0.2)
    metrics.image_skipped(SkipReason.ALREADY_PRESENT)
    metrics.image_skipped(SkipReason.ALREADY_BACKUP)
    metrics.image_skipped(SkipReason.ALREADY_BACKUP)
    metrics.image_failed(FailureReason.AUTHENTICATION)
    metrics.workload_rewritten("DaemonSet")
    depth = [3]
    metrics.track_queue(lambda: depth[0])
    health.mark_watch_event("Deployment")
    clock.now += 12.5

    samples = await scrape(http, server)
    assert samples[("image_cloner_images_copied_total", ())] == 2
    assert samples[("image_cloner_copied_bytes_total", ())] == 1300
    assert samples[("image_cloner_copy_duration_seconds_count", ())] == 2
    assert samples[("image_cloner_copy_duration_seconds_sum", ())] == pytest.approx(2.2)
    assert samples[("image_cloner_copy_duration_seconds_bucket", (("le", "0.25"),))] == 1
    assert samples[("image_cloner_images_skipped_total", (("reason", "already_backup"),))] == 2
    assert samples[("image_cloner_images_skipped_total", (("reason", "already_present"),))] == 1
    assert samples[("image_cloner_images_failed_total", (("reason", "authentication"),))] == 1
    # Series for reasons and kinds that did not happen yet exist, at zero.
    assert samples[("image_cloner_images_failed_total", (("reason", "unavailable"),))] == 0
    assert samples[("image_cloner_workloads_rewritten_total", (("kind", "Deployment"),))] == 0
    assert samples[("image_cloner_workloads_rewritten_total", (("kind", "DaemonSet"),))] == 1
    assert samples[("image_cloner_queue_depth", ())] == 3
    assert samples[("image_cloner_watch_last_event_age_seconds", (("kind", "Deployment"),))] == 12.5
    assert math.isinf(
        samples[("image_cloner_watch_last_event_age_seconds", (("kind", "DaemonSet"),))]
    )

    depth[0] = 0
    clock.now += 10
    samples = await scrape(http, server)
    assert samples[("image_cloner_queue_depth", ())] == 0
    assert samples[("image_cloner_watch_last_event_age_seconds", (("kind", "Deployment"),))] == 22.5


async def test_labels_come_only_from_fixed_sets(
    server: str, http: aiohttp.ClientSession, metrics: Metrics
) -> None:
    metrics.image_failed(FailureReason.NOT_FOUND)
    samples = await scrape(http, server)
    ours = {key for key in samples if key[0].startswith("image_cloner_")}
    assert {"image_cloner_images_copied_total", "image_cloner_queue_depth"} <= {
        name for name, _ in ours
    }
    label_names = {label for _, labels in ours for label, _ in labels}
    assert label_names == {"reason", "kind", "le", "registry", "outcome"}
    values = {value for _, labels in ours for label, value in labels if label != "le"}
    fixed = {r.value for r in SkipReason} | {r.value for r in FailureReason}
    assert values == fixed | {r.value for r in ResyncOutcome} | {
        "Deployment",
        "DaemonSet",
        "other",  # the registry label of every host the configuration does not name
    }


async def test_openmetrics_is_served_when_asked_for(
    server: str, http: aiohttp.ClientSession
) -> None:
    status, content_type, text = await get(
        http, f"{server}/metrics", Accept="application/openmetrics-text; version=1.0.0"
    )
    assert status == 200
    assert content_type.startswith("application/openmetrics-text")
    assert text.endswith("# EOF\n")


async def test_stopped_server_no_longer_listens(
    metrics: Metrics, health: Health, http: aiohttp.ClientSession
) -> None:
    server = MetricsServer(metrics=metrics, health=health, host="127.0.0.1", port=0)
    await server.start()
    url = f"http://127.0.0.1:{server.port}/healthz"
    assert (await get(http, url))[0] == 200
    await server.stop()
    with pytest.raises(aiohttp.ClientConnectionError):
        await get(http, url)


def test_registries_are_independent(health: Health) -> None:
    first, second = Metrics(health=health), Metrics(health=health)
    first.image_copied(bytes_copied=1, seconds=1)
    assert first.registry.get_sample_value("image_cloner_images_copied_total") == 1
    assert second.registry.get_sample_value("image_cloner_images_copied_total") == 0


def test_unknown_labels_are_refused(metrics: Metrics, health: Health) -> None:
    with pytest.raises(ValueError, match="StatefulSet"):
        metrics.workload_rewritten("StatefulSet")
    with pytest.raises(ValueError, match="StatefulSet"):
        health.mark_watch_event("StatefulSet")
    with pytest.raises(ValueError, match="nginx"):
        metrics.image_failed("nginx:1.21.4-alpine")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (AuthenticationError("401 from r.io"), FailureReason.AUTHENTICATION),
        (NotFoundError("404 from r.io"), FailureReason.NOT_FOUND),
        (RegistryUnavailableError("503 from r.io"), FailureReason.UNAVAILABLE),
        (DigestMismatchError("sha256:ab != sha256:cd"), FailureReason.DIGEST_MISMATCH),
        (InvalidReference("invalid reference 'Nginx'"), FailureReason.INVALID_REFERENCE),
        (InvalidManifestError("bad json"), FailureReason.INVALID_MANIFEST),
        (UnsupportedMediaTypeError("schema 1"), FailureReason.UNSUPPORTED_MEDIA_TYPE),
        (RegistryError("odd"), FailureReason.OTHER),
        (OSError("disk full"), FailureReason.OTHER),
    ],
)
def test_failure_reason_of_each_error_family(error: Exception, reason: FailureReason) -> None:
    assert FailureReason.of(error) is reason


def test_port_is_unknown_before_start(metrics: Metrics, health: Health) -> None:
    with pytest.raises(RuntimeError, match="not started"):
        _ = MetricsServer(metrics=metrics, health=health, port=0).port
