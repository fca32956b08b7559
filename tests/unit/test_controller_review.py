"""Review findings in the controller, each pinned by a test that failed before its fix.

- An apiserver that cannot be reached (connection refused, no answer in time) is a failed
  API request like any other: `KubeApiError`, so the periodic resync survives it instead of
  its task dying for good (after which a quiet cluster's `/readyz` turns stale forever).
- The per-image backoff forgets images nobody has tried for a long time, so images of
  deleted or fixed workloads do not pile up over weeks.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from kubernetes_asyncio import client as k8s

from image_cloner.controller import kube as kube_module
from image_cloner.controller.handlers import WatchTracker
from image_cloner.controller.kube import Kube, KubeApiError
from image_cloner.controller.queue import WorkQueue
from image_cloner.controller.reconcile import ImageBackoff
from image_cloner.metrics import Health
from image_cloner.settings import Settings
from image_cloner.workloads import DEPLOYMENT, WorkloadKey


@pytest.fixture
def refusing_port() -> int:
    """A loopback port nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that takes connections (backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("server", ["refusing_port", "silent_port"])
async def test_an_unreachable_apiserver_is_an_api_error_and_the_resync_survives_it(
    server: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    port: int = request.getfixturevalue(server)
    monkeypatch.setattr(kube_module, "REQUEST_TIMEOUT", 0.5)
    kube = Kube(k8s.Configuration(host=f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(KubeApiError) as caught:
            await kube.read_workload("Deployment", "demo", "web")
        assert caught.value.status == 0
        assert "apiserver" in str(caught.value)

        health = Health(staleness=60)
        queue: WorkQueue[WorkloadKey] = WorkQueue()
        settings = Settings.from_env({"IMAGE_CLONER_REGISTRY": "localhost:5000"})
        tracker = WatchTracker(queue=queue, health=health, kube=kube, settings=settings)
        assert await tracker.resync(DEPLOYMENT) == 0, "a failed listing is logged, not raised"
        assert "Deployment watch has had no event or listing yet" in health.problems()
    finally:
        await kube.close()


def test_image_backoff_forgets_images_nobody_tried_for_longer_than_the_cap() -> None:
    now = [0.0]
    backoff = ImageBackoff(base=5, cap=30, clock=lambda: now[0])
    old = ("docker.io/library/gone:1", "localhost:5000/gone:1")
    recent = ("docker.io/library/typo:1", "localhost:5000/typo:1")
    backoff.failed(old, "not found")  # blocked until 5
    now[0] = 20.0
    backoff.failed(recent, "not found")  # blocked until 25

    now[0] = 36.0  # `old` has been free (and untried) for more than the cap: forgotten
    current = ("docker.io/library/new:1", "localhost:5000/new:1")
    backoff.failed(current, "unauthorized")
    assert set(backoff._blocked) == {recent, current}  # memory: `old` is gone
    assert backoff.failed(old, "not found") == 5, "a forgotten image starts from base again"
    assert backoff.failed(recent, "not found") == 10, "a recent failure keeps doubling"
