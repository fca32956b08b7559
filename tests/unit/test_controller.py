"""The controller's pure parts: per-image backoff, kopf's settings, and refusing bad config.

Everything that talks to a cluster is tested on the test bed (tests/e2e); what is left here
is decided without I/O: when a failing image may be tried again, that kopf is configured to
write nothing to the cluster, and that `image-cloner run` exits 2 on a bad environment.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from image_cloner.controller.handlers import operator_settings
from image_cloner.controller.reconcile import ImageBackoff

KEY = ("docker.io/library/nginx:1", "localhost:5000/nginx:1")


def test_image_backoff_blocks_then_doubles_and_success_clears_it() -> None:
    now = [0.0]
    backoff = ImageBackoff(base=5, cap=30, clock=lambda: now[0])
    assert backoff.blocked(KEY) is None

    assert backoff.failed(KEY, "unauthorized") == 5
    assert backoff.blocked(KEY) == (5, "unauthorized")
    now[0] = 4.0
    assert backoff.blocked(KEY) == (1, "unauthorized")
    now[0] = 5.0
    assert backoff.blocked(KEY) is None, "free again once the delay has passed"

    assert [backoff.failed(KEY, "down") for _ in range(4)] == [10, 20, 30, 30]
    backoff.succeeded(KEY)
    assert backoff.blocked(KEY) is None
    assert backoff.failed(KEY, "down") == 5, "a success starts the doubling over"


def test_image_backoff_is_per_image() -> None:
    backoff = ImageBackoff(base=5, cap=30, clock=lambda: 0.0)
    backoff.failed(KEY, "down")
    assert backoff.blocked(("docker.io/library/redis:7", "localhost:5000/redis:7")) is None


def test_kopf_is_reduced_to_watching() -> None:
    settings = operator_settings()
    assert settings.posting.enabled is False  # no kopf Events
    assert settings.scanning.disabled is True  # no Namespace / CRD list-watch
    assert settings.peering.standalone is True  # no KopfPeering objects


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({}, [], "IMAGE_CLONER_REGISTRY is not set"),
        ({"IMAGE_CLONER_REGISTRY": "localhost:5000", "IMAGE_CLONER_USER": "u"}, [], "_PASS"),
        (
            {"IMAGE_CLONER_REGISTRY": "localhost:5000"},
            ["--kubeconfig=/nonexistent/kubeconfig"],
            "no such kubeconfig file",
        ),
    ],
)
def test_run_refuses_bad_configuration_with_exit_2_and_one_line(
    env: dict[str, str], args: list[str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "image_cloner", "run", *args],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
