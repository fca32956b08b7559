"""The benchmark harness runs end to end and produces every figure (`--quick`, tiny sizes).

No timing is asserted: how fast a copy is on a shared machine is a measurement, not a test
result. What must hold is that the harness runs every tool (image-cloner, skopeo, crane,
regctl) against real registries, that every figure it prints exists and makes sense, and that
it exits 0.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
PEERS = ("skopeo", "crane", "regctl")
TOOLS = ("image-cloner", *PEERS)
FIGURES = {"wall", "cpu", "max_rss"}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, Any]]:
    """Run `bench/copy_bench.py --quick` once, as `make bench` runs it; (stdout, JSON figures)."""
    figures_path = tmp_path_factory.mktemp("bench") / "figures.json"
    result = subprocess.run(
        [
            sys.executable,
            "bench/copy_bench.py",
            "--quick",
            "--rounds=2",
            f"--json={figures_path}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout, json.loads(figures_path.read_text())


def _positive(measurement: dict[str, Any]) -> None:
    assert measurement["wall_s"] > 0
    assert measurement["cpu_s"] > 0
    assert measurement["max_rss_bytes"] > 0


def test_every_round_measures_every_tool(bench_run: tuple[str, dict[str, Any]]) -> None:
    _, figures = bench_run
    for tool in TOOLS:
        for rounds in ("rounds", "big_rounds"):
            assert len(figures[rounds][tool]) == 2
            for measurement in figures[rounds][tool]:
                _positive(measurement)
        _positive(figures["median"][tool])
        assert figures["start_up"][tool]["wall_s"] > 0


def test_ratios_to_each_peer_and_to_the_best(bench_run: tuple[str, dict[str, Any]]) -> None:
    _, figures = bench_run
    for key in ("ratios", "big_ratios"):
        assert set(figures[key]) == set(PEERS)
        for peer in PEERS:
            assert set(figures[key][peer]) == FIGURES
            assert all(ratio > 0 for ratio in figures[key][peer].values())
    for key, medians in (("versus_best", "median"), ("big_versus_best", "big")):
        assert set(figures[key]) == FIGURES
        wall = figures[key]["wall"]
        # The best peer's wall time is the lowest of the three, and the ratio is against it.
        fastest = min(PEERS, key=lambda peer: figures[medians][peer]["wall_s"])
        assert wall["peer"] == fastest
        ours = figures[medians]["image-cloner"]["wall_s"]
        assert wall["ratio"] == pytest.approx(ours / figures[medians][fastest]["wall_s"])


def test_peak_rss_is_the_commands_own(bench_run: tuple[str, dict[str, Any]]) -> None:
    """Each tool's RSS is well above what `/bin/true` measures, so no floor hides it."""
    _, figures = bench_run
    floor = figures["floor"]["max_rss_bytes"]
    assert floor < 16 * 1024 * 1024, "the launcher's own memory leaks into the figures"
    for tool in TOOLS:
        assert figures["median"][tool]["max_rss_bytes"] > floor
        assert figures["big"][tool]["max_rss_bytes"] > floor
    assert figures["rss_big_vs_small"] > 0


def test_already_backed_up_image_costs_one_request_each_side(
    bench_run: tuple[str, dict[str, Any]],
) -> None:
    _, figures = bench_run
    ours = figures["requests"]["image-cloner"]
    assert ours["destination"] == 1, ours["destination_kinds"]
    # The bench names no digest: the HEAD of the source tag says which digest counts, so a
    # backup tag left behind by a moved source tag is not taken for "already there".
    assert ours["source"] == 1
    for peer in PEERS:
        assert figures["requests"][peer]["destination"] >= 1


def test_prints_the_tables(bench_run: tuple[str, dict[str, Any]]) -> None:
    stdout, _ = bench_run
    for peer in (*PEERS, "best"):
        assert f"ic/{peer}" in stdout
    assert "with the big layer" in stdout
    assert "already backed up" in stdout
