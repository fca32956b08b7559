"""What the operator commands print: one row per object, as a table for people or JSON for scripts.

`revert`, `plan` and `status` all answer "what happened to which workload", so
they share one row shape and one way to print it. The table fits an 80-column terminal
(the detail column wraps instead of running off the edge), and is coloured only when it
goes to a terminal. The JSON is a list of objects with fixed keys (see `Row.as_json`),
sorted like the table, so scripts can rely on it. Pure: rows in, text out.
"""

from __future__ import annotations

import enum
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Change", "Row", "Tone", "render_json", "render_table", "size_text"]

MIN_DETAIL = 24
"""Narrowest detail column; the workload column is shortened before the detail gets less."""

_GAP = "  "
_HEADERS = ("KIND", "WORKLOAD", "OUTCOME", "DETAIL")
_ELLIPSIS = "…"


class Tone(enum.StrEnum):
    """How a row's outcome reads: it also decides the command's exit status."""

    DONE = "done"
    """Something was changed as asked (green)."""
    PLANNED = "planned"
    """A dry run: this would be changed (cyan)."""
    NOTHING = "nothing"
    """Nothing to do (uncoloured)."""
    PROBLEM = "problem"
    """Could not be done as asked: exit status 1 (red)."""


_COLOURS = {Tone.DONE: "32", Tone.PLANNED: "36", Tone.PROBLEM: "31"}


@dataclass(frozen=True)
class Change:
    """One container's image, before and after."""

    container: str
    before: str
    after: str
    facts: tuple[tuple[str, Any], ...] = ()
    """More keys of this image for `-o json` (`plan`: the backup's digest, platforms, bytes)."""


@dataclass(frozen=True, kw_only=True)
class Row:
    """One object and what became of it."""

    kind: str
    namespace: str
    name: str
    outcome: str
    """A fixed word per command (`reverted`, `changed`, ...), stable for scripts."""
    tone: Tone
    detail: str = ""
    """Why, in words; empty when the outcome says it all."""
    changes: tuple[Change, ...] = ()
    facts: tuple[tuple[str, Any], ...] = ()
    """More keys for `-o json`, fixed per command (`status`: `last_event`)."""

    def as_json(self) -> dict[str, Any]:
        """The row for `-o json`: kind, namespace, name, outcome, detail, images, and the
        command's own `facts`."""
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "outcome": self.outcome,
            "detail": self.detail,
            "images": [
                {"container": c.container, "from": c.before, "to": c.after, **dict(c.facts)}
                for c in self.changes
            ],
            **dict(self.facts),
        }


def render_json(rows: Sequence[Row]) -> str:
    """The rows as a JSON array (newline-terminated)."""
    return json.dumps([row.as_json() for row in rows], indent=2) + "\n"


def render_table(rows: Sequence[Row], *, width: int = 80, colour: bool = False) -> str:
    """The rows as aligned columns no wider than `width`; the detail column wraps."""
    cells = [(r.kind, f"{r.namespace}/{r.name}", r.outcome) for r in rows]
    widths = [max([len(h), *(len(c[i]) for c in cells)]) for i, h in enumerate(_HEADERS[:3])]
    fixed = widths[0] + widths[2] + 3 * len(_GAP)
    # A shortened name loses information, a wrapped detail does not: the workload column
    # takes what it needs as long as the detail keeps `MIN_DETAIL`.
    widths[1] = max(len(_HEADERS[1]), min(widths[1], width - fixed - MIN_DETAIL))
    detail_width = max(MIN_DETAIL, width - fixed - widths[1])
    lines = [_line(_HEADERS, widths)]
    for row, (kind, workload, outcome) in zip(rows, cells, strict=True):
        wrapped = textwrap.wrap(row.detail, detail_width, break_on_hyphens=False) or [""]
        paint = _COLOURS.get(row.tone) if colour else None
        first = (kind, _shorten(workload, widths[1]), outcome, wrapped[0])
        lines.append(_line(first, widths, paint=paint))
        indent = " " * (fixed + widths[1])
        lines.extend(indent + more for more in wrapped[1:])
    return "\n".join(lines) + "\n"


def _line(cells: Sequence[str], widths: Sequence[int], *, paint: str | None = None) -> str:
    # Padding is added outside the colour codes, so widths count what the eye sees.
    kind, workload, outcome, detail = cells
    shown = f"\x1b[{paint}m{outcome}\x1b[0m" if paint else outcome
    padding = " " * (widths[2] - len(outcome))
    text = _GAP.join([kind.ljust(widths[0]), workload.ljust(widths[1]), shown + padding, detail])
    return text.rstrip()


def _shorten(text: str, width: int) -> str:
    # Keep both ends: the namespace and the end of the name tell workloads apart best.
    if len(text) <= width:
        return text
    head = (width - 1) // 2
    return text[:head] + _ELLIPSIS + text[len(text) - (width - 1 - head) :]


def size_text(size: int) -> str:
    """Bytes for people: `512 B`, `4.1 MB` (powers of 1000, as registries' UIs count)."""
    if size < 1000:
        return f"{size} B"
    scaled = float(size)
    for unit in ("kB", "MB", "GB"):
        scaled /= 1000
        if scaled < 1000 or unit == "GB":
            return f"{scaled:.1f} {unit}"
    raise AssertionError("unreachable")
