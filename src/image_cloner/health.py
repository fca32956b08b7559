"""Whether the controller is doing its job: the facts `/readyz` decides on.

Ready means: the start-up check of the backup registry passed, and every watch stream
delivered an event or a successful (re)list recently. A silently dead watch stream is a
known failure of operators, so its age is both a readiness condition here and a metric
(`metrics`). The controller feeds the facts as they happen; nothing here does I/O.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from image_cloner.workloads import KINDS

__all__ = ["DEFAULT_WATCH_STALENESS", "Health"]

DEFAULT_WATCH_STALENESS = 300.0
"""Seconds without a watch event or (re)list after which a stream counts as stale."""


class Health:
    """The facts `/readyz` decides on, fed by the controller as they happen."""

    def __init__(
        self,
        *,
        kinds: Iterable[str] = tuple(KINDS),
        staleness: float = DEFAULT_WATCH_STALENESS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kinds: tuple[str, ...] = tuple(kinds)
        self.staleness = staleness
        self._clock = clock
        self._registry_ok: bool | None = None
        self._last_event: dict[str, float | None] = dict.fromkeys(self.kinds)

    def set_registry_ok(self, ok: bool) -> None:
        """Record the outcome of the backup-registry check (start-up, or a later re-check)."""
        self._registry_ok = ok

    @property
    def registry_ok(self) -> bool:
        """The last check of the backup registry passed (False before the first one)."""
        return self._registry_ok is True

    def mark_watch_event(self, kind: str) -> None:
        """A watch stream for `kind` delivered an event, or a (re)list of `kind` succeeded."""
        if kind not in self._last_event:
            raise ValueError(f"unknown kind {kind!r}: expected one of {', '.join(self.kinds)}")
        self._last_event[kind] = self._clock()

    def watch_age(self, kind: str) -> float:
        """Seconds since the last event of `kind`; infinite when there was none yet."""
        last = self._last_event[kind]
        return math.inf if last is None else max(0.0, self._clock() - last)

    def problems(self) -> list[str]:
        """Why the process is not ready, one line each; empty when it is ready."""
        found: list[str] = []
        if self._registry_ok is None:
            found.append("backup registry check has not run yet")
        elif not self._registry_ok:
            found.append("backup registry check failed")
        for kind in self.kinds:
            age = self.watch_age(kind)
            if math.isinf(age):
                found.append(f"{kind} watch has had no event or listing yet")
            elif age > self.staleness:
                found.append(
                    f"{kind} watch is stale: last event {age:.0f}s ago "
                    f"(limit {self.staleness:.0f}s)"
                )
        return found

    @property
    def ready(self) -> bool:
        return not self.problems()
