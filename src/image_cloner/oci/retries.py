"""Retries as data, in one place: how often, how long to wait, and when to stop asking a host.

Three rules, all read off `RetryPolicy`:

- **A retry budget per unit of work.** A request is retried on 408/429/5xx and connection
  failures, with exponential backoff and jitter, honouring `Retry-After`. A blob transfer is
  retried as a whole too (a streamed body cannot be replayed), and the requests inside it
  (POST, the source GET, the commit) spend from the *same* budget: so a registry answering
  503 sees at most `attempts` POSTs per blob, not `attempts` squared, as a nested retry loop
  (go-containerregistry turns its inner retries off for the same reason) would send.
- **`Retry-After` is obeyed up to `max_retry_after`**; beyond it we rather fail than hang.
- **A circuit breaker per host.** After `breaker_threshold` unavailable answers in a row from
  one host, requests to it fail at once (`CircuitOpenError`, not retried) for
  `breaker_cooldown` seconds, then one request probes it again. A broken registry then costs
  its callers one quick failure instead of holding transfer slots through every backoff.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from image_cloner.backoff import Backoff
from image_cloner.oci.errors import RegistryUnavailableError

__all__ = ["CircuitBreaker", "CircuitOpenError", "RetryBudget", "RetryPolicy"]

RETRY_BACKOFF = Backoff(base=0.25, cap=10.0, jitter=0.5)
"""Default wait between retries (frozen, so one instance serves every policy)."""


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """When and how long to wait before trying again, and when to give up on a host."""

    attempts: int = 5
    """Tries in all per unit of work (a request, or a whole blob transfer), the first included."""
    statuses: frozenset[int] = frozenset({408, 429, 500, 502, 503, 504})
    """Response statuses worth another try; connection failures always are."""
    backoff: Backoff = RETRY_BACKOFF
    """Wait before each retry; jittered so that many clients do not retry in step."""
    max_retry_after: float = 60.0
    """Cap on a server's `Retry-After`; beyond it we rather fail than hang."""
    breaker_threshold: int = 12
    """Unavailable answers in a row from one host that open its circuit (> 2 budgets)."""
    breaker_cooldown: float = 30.0
    """Seconds an open circuit fails requests at once before one probe is let through."""

    def delay(
        self,
        attempt: int,
        *,
        retry_after: float | None = None,
        rand: Callable[[], float] = random.random,
    ) -> float:
        """Seconds to wait after failed try number `attempt` (1-based)."""
        if retry_after is not None:
            return max(0.0, min(retry_after, self.max_retry_after))
        return self.backoff.delay(attempt, rand=rand)

    def should_retry(self, error: RegistryUnavailableError, attempt: int) -> bool:
        if attempt >= self.attempts or isinstance(error, CircuitOpenError):
            return False
        return error.status is None or error.status in self.statuses


class RetryBudget:
    """The failures one unit of work may still retry; shared by every loop inside it."""

    def __init__(self, policy: RetryPolicy) -> None:
        self.policy = policy
        self.failures = 0

    def spend(self, error: RegistryUnavailableError) -> float | None:
        """Count a failure: the seconds to wait before retrying, or None to give up."""
        self.failures += 1
        if not self.policy.should_retry(error, self.failures):
            return None
        return self.policy.delay(self.failures, retry_after=error.retry_after)


_BUDGET: ContextVar[RetryBudget | None] = ContextVar("retry_budget", default=None)


def current_budget(policy: RetryPolicy) -> RetryBudget:
    """The budget of the unit of work we are in (see `shared_budget`), else a fresh one."""
    return _BUDGET.get() or RetryBudget(policy)


@contextmanager
def shared_budget(policy: RetryPolicy) -> Iterator[RetryBudget]:
    """Within this block (and tasks it starts), every retry loop spends from one budget."""
    budget = RetryBudget(policy)
    token = _BUDGET.set(budget)
    try:
        yield budget
    finally:
        _BUDGET.reset(token)


class CircuitOpenError(RegistryUnavailableError):
    """A host failed too often in a row; we do not ask it again until its cooldown ends."""


class CircuitBreaker:
    """Consecutive unavailable answers per host, and which hosts are cooling down."""

    def __init__(self, policy: RetryPolicy, *, clock: Callable[[], float] = time.monotonic):
        self.policy = policy
        self._clock = clock
        self._failures: dict[str, int] = {}
        self._open_until: dict[str, float] = {}
        self._last: dict[str, str] = {}

    def check(self, authority: str) -> None:
        """Raise `CircuitOpenError` while `authority`'s circuit is open."""
        until = self._open_until.get(authority)
        if until is None:
            return
        left = until - self._clock()
        if left > 0:
            raise CircuitOpenError(
                f"{authority}: not asked for {left:.0f} s more after "
                f"{self.policy.breaker_threshold} failures in a row; last: {self._last[authority]}"
            )
        # Half open: let this request probe; one more failure opens the circuit again.
        del self._open_until[authority]
        self._failures[authority] = self.policy.breaker_threshold - 1

    def succeeded(self, authority: str) -> None:
        self._failures.pop(authority, None)

    def failed(self, authority: str, error: RegistryUnavailableError) -> None:
        failures = self._failures.get(authority, 0) + 1
        self._failures[authority] = failures
        self._last[authority] = error.message
        if failures >= self.policy.breaker_threshold:
            self._open_until[authority] = self._clock() + self.policy.breaker_cooldown

    def is_open(self, authority: str) -> bool:
        until = self._open_until.get(authority)
        return until is not None and until > self._clock()
