"""A hand-driven monotonic clock: expiry, backoff and staleness tested without sleeping."""

from __future__ import annotations

__all__ = ["Clock"]


class Clock:
    """Called like `time.monotonic`; tests move `now` on."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
