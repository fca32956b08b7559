"""`bench/scale_bench.py --quick` runs end to end and produces every figure.

No timing is asserted (how fast the controller is on a shared machine is a measurement,
`make bench-scale`, not a test result). What must hold whatever the machine: every
Deployment is rewritten by exactly one patch, each image is tagged in the backup once,
a restart on the converged fleet patches nothing and costs at most one backup request per
image, and a second cluster sharing the backup registry pushes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_WORKLOADS, QUICK_IMAGES, QUICK_SHARED = 12, 3, 3


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """Run the benchmark as `make bench-scale` does, `--quick`; (stdout, JSON figures)."""
    path = tmp_path_factory.mktemp("scale") / "figures.json"
    result = subprocess.run(
        [sys.executable, "bench/scale_bench.py", "--quick", f"--json={path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout, json.loads(path.read_text())


def test_every_figure_is_produced(figures: tuple[str, dict[str, Any]]) -> None:
    out, f = figures
    assert (f["workloads"], f["images"]) == (QUICK_WORKLOADS, QUICK_IMAGES)
    for phase in ("first", "restart"):
        assert f[phase]["seconds"] > 0
        assert f[phase]["cpu_s"] > 0
        assert f[phase]["max_rss_mib"] > 0
    assert f["idle_window_s"] > 0
    assert f["idle_cpu_s"] >= 0
    for row in ("all rewritten after", "restart: backup requests", "idle CPU over"):
        assert row in out


def test_the_first_pass_patches_each_workload_once_and_tags_each_image_once(
    figures: tuple[str, dict[str, Any]],
) -> None:
    _, f = figures
    first = f["first"]
    assert first["patches"] == {"1": QUICK_WORKLOADS}
    assert len(first["tag_puts"]) == QUICK_IMAGES
    assert set(first["tag_puts"].values()) == {1}


def test_a_restart_on_the_converged_fleet_patches_nothing(
    figures: tuple[str, dict[str, Any]],
) -> None:
    _, f = figures
    restart = f["restart"]
    assert restart["patches"] == {"0": QUICK_WORKLOADS}
    images = sum(n for kind, n in restart["backup_requests"].items() if not kind.endswith("check"))
    assert images <= QUICK_IMAGES


def test_a_second_cluster_sharing_the_backup_pushes_nothing(
    figures: tuple[str, dict[str, Any]],
) -> None:
    _, f = figures
    shared = f["shared"]
    assert shared["patches"] == {"1": QUICK_SHARED}, "its workloads are rewritten too"
    assert shared["tag_puts"] == {}
    pushes = {kind: n for kind, n in shared["backup_requests"].items() if kind.startswith("PUT")}
    assert pushes == {}, "a HEAD answers that the image is there"
