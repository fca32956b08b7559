"""Exponential backoff, as data: one rule for every "wait, then try again" in the program.

The registry transport's request retries, the work queue's per-workload requeues, the
per-image copy backoff and the controller's re-checks of a failing backup registry all
wait the same way: `base` seconds, times `multiplier` per further failure, at most `cap`,
shortened at random by up to `jitter` so that many clients do not retry in step.
`Backoff` is that rule; `KeyedBackoff` counts failures per key (a workload, an image)
until the key succeeds.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

__all__ = ["Backoff", "KeyedBackoff"]

K = TypeVar("K", bound=Hashable)

_MAX_EXPONENT = 62  # beyond this the delay is capped anyway; avoids float overflow


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Seconds to wait after the n-th failure in a row."""

    base: float = 1.0
    """Seconds after the first failure."""
    cap: float = 300.0
    """Longest wait, however many failures."""
    multiplier: float = 2.0
    jitter: float = 0.0
    """Fraction of each delay drawn at random (0: none; 0.5: between half and all of it)."""

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base:
            raise ValueError(f"backoff needs 0 < base <= cap, got base={self.base}, cap={self.cap}")
        if self.multiplier < 1 or not 0 <= self.jitter < 1:
            raise ValueError("backoff needs multiplier >= 1 and 0 <= jitter < 1")

    def delay(self, failures: int, *, rand: Callable[[], float] = random.random) -> float:
        """The wait after `failures` (>= 1) failures in a row."""
        exponent = min(max(failures, 1) - 1, _MAX_EXPONENT)
        delay = min(self.cap, self.base * self.multiplier**exponent)
        return delay * (1 - self.jitter * rand()) if self.jitter else delay


class KeyedBackoff(Generic[K]):
    """Failures counted per key; each one's wait follows `backoff`, until `forget(key)`."""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()
        self._failures: dict[K, int] = {}

    def when(self, key: K) -> float:
        """Record one more failure of `key`; return how long to wait before the next try."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        return self.backoff.delay(failures)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """`key` succeeded: its next failure starts from `base` again."""
        self._failures.pop(key, None)
