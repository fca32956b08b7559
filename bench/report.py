"""The benchmark's figures: collected in one dataclass, printed as tables, saved as JSON.

Ratios are always image-cloner / skopeo, so below 1.00x means image-cloner used less.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.lab import RequestCount, Tool
from bench.measure import Measurement, median

__all__ = ["Results", "ratios", "render", "save_json"]

Rounds = dict[Tool, list[Measurement]]


@dataclass
class Results:
    machine: dict[str, str]
    image: str
    """What was copied, in words (platforms, layers, size)."""
    big_image: str
    floor: Measurement
    """`/bin/true` measured the same way: the smallest peak RSS the method can report."""
    rounds: Rounds = field(default_factory=dict)
    start_up: Rounds = field(default_factory=dict)
    """`TOOL --version`, once per round: the fixed cost inside each copy's figures."""
    big: Rounds = field(default_factory=dict)
    requests: dict[Tool, RequestCount] = field(default_factory=dict)

    def median(self, tool: Tool) -> Measurement:
        return median(self.rounds[tool])

    def without_start_up(self, tool: Tool) -> float:
        """Median wall time of a copy minus median wall time of starting the program."""
        return self.median(tool).wall_s - median(self.start_up[tool]).wall_s

    @property
    def rss_big_vs_small(self) -> float:
        """image-cloner's median peak RSS with the big layer / with the image."""
        big = median(self.big[Tool.IMAGE_CLONER]).max_rss_bytes
        return big / self.median(Tool.IMAGE_CLONER).max_rss_bytes


def ratios(rounds: Rounds) -> dict[str, float]:
    """image-cloner / skopeo of each median figure."""
    ours, theirs = median(rounds[Tool.IMAGE_CLONER]), median(rounds[Tool.SKOPEO])
    return {
        "wall": ours.wall_s / theirs.wall_s,
        "cpu": ours.cpu_s / theirs.cpu_s,
        "max_rss": ours.max_rss_bytes / theirs.max_rss_bytes,
    }


def render(results: Results) -> str:
    """Human-readable tables of every figure."""
    net = {tool: results.without_start_up(tool) for tool in Tool}
    small_rss = results.median(Tool.IMAGE_CLONER).max_rss_mib
    big_rss = median(results.big[Tool.IMAGE_CLONER]).max_rss_mib
    lines = [
        "machine: " + ", ".join(f"{k} {v}" for k, v in results.machine.items()),
        f"peak RSS floor of the method (/bin/true): {results.floor.max_rss_mib:.1f} MiB",
        "",
        f"1. Full copy of {results.image}",
        *_table(results.rounds),
        *(_measured("start-up", tool, median(results.start_up[tool])) for tool in Tool),
        "wall time without start-up (median copy - median start-up): "
        f"image-cloner {net[Tool.IMAGE_CLONER]:.2f} s, skopeo {net[Tool.SKOPEO]:.2f} s, "
        f"ratio {net[Tool.IMAGE_CLONER] / net[Tool.SKOPEO]:.2f}x",
        "",
        f"2. Big layer: {results.big_image}",
        *_table(results.big),
        f"image-cloner peak RSS: {big_rss:.1f} MiB with the big layer vs {small_rss:.1f} MiB "
        f"for the image above ({results.rss_big_vs_small:.2f}x)",
        "",
        "3. HTTP requests to copy an image that is already backed up",
    ]
    for tool, count in results.requests.items():
        lines.append(
            f"{tool}: {count.destination} to the destination, {count.source} to the source"
        )
        lines += [f"    {n} x {what}" for what, n in count.destination_kinds.items()]
    return "\n".join(lines)


def save_json(results: Results, path: Path) -> None:
    """Every measurement and the derived figures, for docs and tests."""
    document: dict[str, Any] = {
        "machine": results.machine,
        "image": results.image,
        "big_image": results.big_image,
        "floor": asdict(results.floor),
        "rounds": _rounds_json(results.rounds),
        "median": _medians_json(results.rounds),
        "start_up": _medians_json(results.start_up),
        "ratios": ratios(results.rounds),
        "without_start_up": {str(tool): results.without_start_up(tool) for tool in Tool},
        "big_rounds": _rounds_json(results.big),
        "big": _medians_json(results.big),
        "big_ratios": ratios(results.big),
        "rss_big_vs_small": results.rss_big_vs_small,
        "requests": {
            str(tool): {
                "source": count.source,
                "destination": count.destination,
                "destination_kinds": count.destination_kinds,
            }
            for tool, count in results.requests.items()
        },
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _table(rounds: Rounds) -> list[str]:
    """Every round of both tools, their medians and the ratios of the medians."""
    lines = [_row("", "tool", "wall s", "CPU s", "peak RSS MiB")]
    for number in range(len(rounds[Tool.IMAGE_CLONER])):
        lines += [_measured(f"round {number + 1}", tool, rounds[tool][number]) for tool in Tool]
    lines += [_measured("median", tool, median(rounds[tool])) for tool in Tool]
    r = ratios(rounds)
    lines.append(
        _row("ratio", "ic/skopeo", f"{r['wall']:.2f}x", f"{r['cpu']:.2f}x", f"{r['max_rss']:.2f}x")
    )
    return lines


def _rounds_json(rounds: Rounds) -> dict[str, list[dict[str, Any]]]:
    return {str(tool): [asdict(m) for m in ms] for tool, ms in rounds.items()}


def _medians_json(rounds: Rounds) -> dict[str, dict[str, Any]]:
    return {str(tool): asdict(median(ms)) for tool, ms in rounds.items()}


def _measured(label: str, tool: Tool, m: Measurement) -> str:
    return _row(label, str(tool), f"{m.wall_s:.2f}", f"{m.cpu_s:.2f}", f"{m.max_rss_mib:.1f}")


def _row(label: str, tool: str, wall: str, cpu: str, rss: str) -> str:
    return f"{label:<10} {tool:<13} {wall:>8} {cpu:>8} {rss:>13}"
