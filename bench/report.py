"""The benchmark's figures: collected in one dataclass, printed as tables, saved as JSON.

Ratios are always image-cloner / a peer (skopeo, crane, regctl), so below 1.00x means
image-cloner used less; "best" is, for each figure on its own, the peer with the lowest median.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.lab import PEERS, RequestCount, Tool
from bench.measure import Measurement, median

__all__ = ["FIGURES", "Results", "ratios", "render", "save_json", "versus_best"]

Rounds = dict[Tool, list[Measurement]]
FIGURES = ("wall", "cpu", "max_rss")


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


def _figures(m: Measurement) -> dict[str, float]:
    return {"wall": m.wall_s, "cpu": m.cpu_s, "max_rss": float(m.max_rss_bytes)}


def ratios(rounds: Rounds) -> dict[str, dict[str, float]]:
    """image-cloner / each peer, of each median figure: {peer: {figure: ratio}}."""
    ours = _figures(median(rounds[Tool.IMAGE_CLONER]))
    result = {}
    for peer in PEERS:
        theirs = _figures(median(rounds[peer]))
        result[str(peer)] = {f: ours[f] / theirs[f] for f in FIGURES}
    return result


def versus_best(rounds: Rounds) -> dict[str, dict[str, Any]]:
    """For each figure, the peer with the lowest median and image-cloner / that median."""
    ours = _figures(median(rounds[Tool.IMAGE_CLONER]))
    medians = {peer: _figures(median(rounds[peer])) for peer in PEERS}
    result: dict[str, dict[str, Any]] = {}
    for figure in FIGURES:
        best = min(PEERS, key=lambda peer: medians[peer][figure])
        result[figure] = {"peer": str(best), "ratio": ours[figure] / medians[best][figure]}
    return result


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
        + ", ".join(f"{tool} {net[tool]:.2f} s" for tool in Tool)
        + "; image-cloner / "
        + ", ".join(f"{peer} {net[Tool.IMAGE_CLONER] / net[peer]:.2f}x" for peer in PEERS),
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
        "versus_best": versus_best(results.rounds),
        "without_start_up": {str(tool): results.without_start_up(tool) for tool in Tool},
        "big_rounds": _rounds_json(results.big),
        "big": _medians_json(results.big),
        "big_ratios": ratios(results.big),
        "big_versus_best": versus_best(results.big),
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
    """Every round of every tool, their medians and image-cloner's ratios to each peer."""
    lines = [_row("", "tool", "wall s", "CPU s", "peak RSS MiB")]
    for number in range(len(rounds[Tool.IMAGE_CLONER])):
        lines += [_measured(f"round {number + 1}", tool, rounds[tool][number]) for tool in Tool]
    lines += [_measured("median", tool, median(rounds[tool])) for tool in Tool]
    for peer, r in ratios(rounds).items():
        lines.append(_row("ratio", f"ic/{peer}", *(f"{r[f]:.2f}x" for f in FIGURES)))
    best = versus_best(rounds)
    lines.append(
        _row("ratio", "ic/best", *(f"{best[f]['ratio']:.2f}x {best[f]['peer']}" for f in FIGURES))
    )
    return lines


def _rounds_json(rounds: Rounds) -> dict[str, list[dict[str, Any]]]:
    return {str(tool): [asdict(m) for m in ms] for tool, ms in rounds.items()}


def _medians_json(rounds: Rounds) -> dict[str, dict[str, Any]]:
    return {str(tool): asdict(median(ms)) for tool, ms in rounds.items()}


def _measured(label: str, tool: Tool, m: Measurement) -> str:
    return _row(label, str(tool), f"{m.wall_s:.2f}", f"{m.cpu_s:.2f}", f"{m.max_rss_mib:.1f}")


def _row(label: str, tool: str, wall: str, cpu: str, rss: str) -> str:
    return f"{label:<10} {tool:<13} {wall:>14} {cpu:>14} {rss:>16}"
