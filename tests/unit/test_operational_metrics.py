"""The operational metrics: reconcile passes, copies in progress, requests per registry.

The request counters are fed by `oci.observing` through `RegistryOptions.request_listener`;
they are checked here over real HTTP against a small in-process server, through the
`Transport` the copier uses (retries included).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import MappingProxyType

import pytest
from aiohttp import web
from yarl import URL

from image_cloner.health import Health
from image_cloner.metrics import Metrics, registry_labels
from image_cloner.oci.errors import RegistryUnavailableError
from image_cloner.oci.options import Credentials, RegistryOptions
from image_cloner.oci.retries import RetryPolicy
from image_cloner.oci.transport import Transport
from tests.support.processes import free_port


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(health=Health(kinds=("Deployment", "DaemonSet")))


def value(metrics: Metrics, name: str, **labels: str) -> float:
    found = metrics.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_reconcile_passes_are_counted_timed_and_failures_counted_as_errors(
    metrics: Metrics,
) -> None:
    with metrics.reconciling("Deployment"):
        pass
    with pytest.raises(RuntimeError), metrics.reconciling("Deployment"):
        raise RuntimeError("failed pass")
    assert value(metrics, "image_cloner_reconciles_total", kind="Deployment") == 2
    assert value(metrics, "image_cloner_reconcile_errors_total", kind="Deployment") == 1
    assert value(metrics, "image_cloner_reconcile_duration_seconds_count", kind="Deployment") == 2
    # Every kind's series exists from the start, so alerts and rate() see zeros.
    assert (
        metrics.registry.get_sample_value(
            "image_cloner_reconcile_errors_total", {"kind": "DaemonSet"}
        )
        == 0
    )


async def test_a_cancelled_pass_is_no_error(metrics: Metrics) -> None:
    async def pass_() -> None:
        with metrics.reconciling("DaemonSet"):
            await asyncio.sleep(10)

    task = asyncio.create_task(pass_())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert value(metrics, "image_cloner_reconciles_total", kind="DaemonSet") == 1
    assert value(metrics, "image_cloner_reconcile_errors_total", kind="DaemonSet") == 0


def test_active_copies_rise_and_fall(metrics: Metrics) -> None:
    with metrics.copying(), metrics.copying():
        assert value(metrics, "image_cloner_copies_active") == 2
    assert value(metrics, "image_cloner_copies_active") == 0


def test_only_configured_hosts_are_labelled_by_name() -> None:
    options = RegistryOptions(
        credentials=MappingProxyType({"quay.io": Credentials("u", "p")}),
        insecure_hosts=frozenset({"10.0.0.5:5000"}),
        mirrors=MappingProxyType({"docker.io": ("https://mirror.local:5001/v2-cache",)}),
    )
    labels = registry_labels(options, backup_host="backup.example:5000")
    assert labels == {
        "backup.example:5000": "backup.example:5000",
        "registry-1.docker.io": "docker.io",
        "quay.io": "quay.io",
        "10.0.0.5:5000": "10.0.0.5:5000",
        "mirror.local:5001": "mirror.local:5001",
    }


@pytest.fixture
async def flaky_registry() -> AsyncIterator[URL]:
    """`/ok` answers 200; `/busy` 503 once, then 200."""
    seen: list[str] = []

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def busy(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(status=503 if len(seen) == 1 else 200)

    app = web.Application()
    app.router.add_get("/ok", ok)
    app.router.add_get("/busy", busy)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield URL(f"http://127.0.0.1:{runner.addresses[0][1]}")
    finally:
        await runner.cleanup()


async def test_every_request_sent_is_counted_by_registry_and_status(
    metrics: Metrics, flaky_registry: URL
) -> None:
    host = flaky_registry.raw_authority
    options = RegistryOptions(
        insecure_hosts=frozenset({host}), request_listener=metrics.registry_request
    )
    metrics.observe_registries(registry_labels(options, backup_host=host))

    async def no_wait(seconds: float) -> None:
        return None

    refused = URL(f"http://127.0.0.1:{free_port()}/v2/")
    async with Transport(options, retry=RetryPolicy(attempts=2), sleep=no_wait) as transport:
        await transport.request("GET", flaky_registry.with_path("/ok"))
        await transport.request("GET", flaky_registry.with_path("/busy"))  # 503, then 200
        with pytest.raises(RegistryUnavailableError):
            await transport.request("GET", refused)

    assert value(metrics, "image_cloner_registry_requests_total", registry=host, code="2xx") == 2
    assert value(metrics, "image_cloner_registry_requests_total", registry=host, code="5xx") == 1
    assert value(metrics, "image_cloner_registry_errors_total", registry=host) == 1
    # The refused host is not configured: `other`, and no answer twice (both attempts).
    assert (
        value(metrics, "image_cloner_registry_requests_total", registry="other", code="none") == 2
    )
    assert value(metrics, "image_cloner_registry_errors_total", registry="other") == 2


def test_ready_follows_what_readyz_answers() -> None:
    health = Health(kinds=("Deployment",))
    metrics = Metrics(health=health)
    assert value(metrics, "image_cloner_ready") == 0  # no registry check, no watch event yet
    health.set_registry_ok(True)
    health.mark_watch_event("Deployment")
    assert not health.problems()
    assert value(metrics, "image_cloner_ready") == 1
