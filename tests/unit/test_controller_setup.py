"""How the controller is set up: kopf reduced to watching, and bad configuration refused.

Decided without a cluster: kopf is configured to write nothing to the cluster, and
`image-cloner run` exits 2 (`exits.EXIT_BAD_INPUT`) with one line on a bad environment.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from image_cloner.controller.handlers import operator_settings
from image_cloner.exits import EXIT_BAD_INPUT


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
            {
                "IMAGE_CLONER_REGISTRY": "localhost:5000",
                "IMAGE_CLONER_PULL_USER": "reader",
                "IMAGE_CLONER_PULL_PASS_FILE": "/nonexistent/pull-password",
            },
            [],
            "IMAGE_CLONER_PULL_PASS_FILE: cannot read /nonexistent/pull-password",
        ),
        (
            {"IMAGE_CLONER_REGISTRY": "localhost:5000"},
            ["--kubeconfig=/nonexistent/kubeconfig"],
            "no such kubeconfig file",
        ),
        (
            {"IMAGE_CLONER_REGISTRY": "localhost:5000"},
            [f"--kubeconfig={__file__}"],  # a file, but no kubeconfig
            "cannot load Kubernetes configuration",
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
    assert result.returncode == EXIT_BAD_INPUT == 2
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
