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

__all__ = ["Results", "render", "save_json"]


@dataclass
class Results:
    machine: dict[str, str]
    image: str
    """What was copied, in words (platforms, layers, size)."""
    big_image: str
    floor: Measurement
    """`/bin/true` measured the same way: the smallest peak RSS the method can report."""
    rounds: dict[Tool, list[Measurement]] = field(default_factory=dict)
    start_up: dict[Tool, list[Measurement]] = field(default_factory=dict)
    """`TOOL --version`, once per round: the fixed cost inside each copy's figures."""
    big: dict[Tool, Measurement] = field(default_factory=dict)
    requests: dict[Tool, RequestCount] = field(default_factory=dict)

    def median(self, tool: Tool) -> Measurement:
        return median(self.rounds[tool])

    @property
    def ratios(self) -> dict[str, float]:
        """image-cloner / skopeo of each median figure."""
        ours, theirs = self.median(Tool.IMAGE_CLONER), self.median(Tool.SKOPEO)
        return {
            "wall": ours.wall_s / theirs.wall_s,
            "cpu": ours.cpu_s / theirs.cpu_s,
            "max_rss": ours.max_rss_bytes / theirs.max_rss_bytes,
        }

    @property
    def rss_big_vs_small(self) -> float:
        """image-cloner's peak RSS copying the big layer / its median peak RSS on the image."""
        big = self.big[Tool.IMAGE_CLONER].max_rss_bytes
        return big / self.median(Tool.IMAGE_CLONER).max_rss_bytes


def render(results: Results) -> str:
    """Human-readable tables of every figure."""
    lines = [
        "machine: " + ", ".join(f"{k} {v}" for k, v in results.machine.items()),
        f"peak RSS floor of the method (/bin/true): {results.floor.max_rss_mib:.1f} MiB",
        "",
        f"1. Full copy of {results.image}",
        _row("", "tool", "wall s", "CPU s", "peak RSS MiB"),
    ]
    rounds = len(results.rounds[Tool.IMAGE_CLONER])
    for number in range(rounds):
        for tool in Tool:
            lines.append(_measured(f"round {number + 1}", tool, results.rounds[tool][number]))
    for tool in Tool:
        lines.append(_measured("median", tool, results.median(tool)))
    for tool in Tool:
        lines.append(_measured("start-up", tool, median(results.start_up[tool])))
    ratios = results.ratios
    lines.append(
        _row(
            "ratio",
            "ic/skopeo",
            f"{ratios['wall']:.2f}x",
            f"{ratios['cpu']:.2f}x",
            f"{ratios['max_rss']:.2f}x",
        )
    )
    net = {t: results.median(t).wall_s - median(results.start_up[t]).wall_s for t in Tool}
    ours, theirs = net[Tool.IMAGE_CLONER], net[Tool.SKOPEO]
    lines.append(
        f"wall time without start-up (median copy - median start-up): image-cloner {ours:.2f} s, "
        f"skopeo {theirs:.2f} s, ratio {ours / theirs:.2f}x"
    )
    lines += ["", f"2. Peak RSS with a big layer: {results.big_image}"]
    lines.append(_row("", "tool", "wall s", "CPU s", "peak RSS MiB"))
    for tool, measurement in results.big.items():
        lines.append(_measured("big layer", tool, measurement))
    small = results.median(Tool.IMAGE_CLONER).max_rss_mib
    big = results.big[Tool.IMAGE_CLONER].max_rss_mib
    lines.append(
        f"image-cloner peak RSS: {big:.1f} MiB with the big layer vs {small:.1f} MiB "
        f"for the image above ({results.rss_big_vs_small:.2f}x)"
    )
    lines += ["", "3. HTTP requests to copy an image that is already backed up"]
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
        "rounds": {str(t): [asdict(m) for m in ms] for t, ms in results.rounds.items()},
        "median": {str(t): asdict(results.median(t)) for t in results.rounds},
        "start_up": {str(t): asdict(median(ms)) for t, ms in results.start_up.items()},
        "ratios": results.ratios,
        "big": {str(t): asdict(m) for t, m in results.big.items()},
        "rss_big_vs_small": results.rss_big_vs_small,
        "requests": {
            str(t): {
                "source": c.source,
                "destination": c.destination,
                "destination_kinds": c.destination_kinds,
            }
            for t, c in results.requests.items()
        },
    }
    path.write_text(json.dumps(document, indent=2) + "\n")


def _measured(label: str, tool: Tool, m: Measurement) -> str:
    return _row(label, str(tool), f"{m.wall_s:.2f}", f"{m.cpu_s:.2f}", f"{m.max_rss_mib:.1f}")


def _row(label: str, tool: str, wall: str, cpu: str, rss: str) -> str:
    return f"{label:<10} {tool:<13} {wall:>8} {cpu:>8} {rss:>13}"
