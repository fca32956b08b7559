"""One retry budget per unit of work, and the per-host circuit breaker (`oci.retries`)."""

from __future__ import annotations

import pytest

from image_cloner.backoff import Backoff
from image_cloner.oci.errors import RegistryUnavailableError, error_for_status
from image_cloner.oci.options import RegistryOptions
from image_cloner.oci.retries import (
    CircuitBreaker,
    CircuitOpenError,
    RetryPolicy,
    shared_budget,
)
from image_cloner.oci.transport import Transport


def _transport(policy: RetryPolicy) -> Transport:
    async def sleep(seconds: float) -> None:
        pass

    return Transport(RegistryOptions(), retry=policy, sleep=sleep)


async def test_nested_retries_share_one_budget() -> None:
    """A whole-blob retry around request retries: attempts in all, not attempts squared."""
    policy = RetryPolicy(attempts=5, backoff=Backoff(base=0.01))
    transport = _transport(policy)
    calls = 0

    async def post() -> None:
        nonlocal calls
        calls += 1
        raise error_for_status("POST x", 503)

    with pytest.raises(RegistryUnavailableError), shared_budget(policy):
        await transport.with_retries(lambda: transport.with_retries(post))
    assert calls == 5


async def test_without_a_shared_budget_each_loop_has_its_own() -> None:
    policy = RetryPolicy(attempts=3, backoff=Backoff(base=0.01))
    transport = _transport(policy)
    calls = 0

    async def post() -> None:
        nonlocal calls
        calls += 1
        raise error_for_status("POST x", 503)

    with pytest.raises(RegistryUnavailableError):
        await transport.with_retries(lambda: transport.with_retries(post))
    assert calls == 9  # what the copy engine no longer does around a blob


def test_the_circuit_opens_after_the_threshold_and_probes_after_the_cooldown() -> None:
    now = [0.0]
    policy = RetryPolicy(breaker_threshold=3, breaker_cooldown=30.0)
    breaker = CircuitBreaker(policy, clock=lambda: now[0])
    error = RegistryUnavailableError("GET https://r/v2/: 429 TOOMANYREQUESTS (slow down)")
    for _ in range(3):
        breaker.check("r")
        breaker.failed("r", error)
    with pytest.raises(CircuitOpenError, match="TOOMANYREQUESTS") as caught:
        breaker.check("r")
    assert not policy.should_retry(caught.value, 1)  # fails fast: frees its transfer slot
    breaker.check("other")  # other hosts are not affected
    now[0] = 31.0
    breaker.check("r")  # half open: one probe
    breaker.failed("r", error)
    assert breaker.is_open("r")  # one more failure opens it again
    now[0] = 62.0
    breaker.check("r")
    breaker.succeeded("r")
    breaker.failed("r", error)
    assert not breaker.is_open("r")  # a success resets the count
