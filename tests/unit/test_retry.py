"""RetryPolicy as data, Retry-After parsing, and the transport's retry loop."""

from __future__ import annotations

import email.utils
import time

import pytest

from image_cloner.backoff import Backoff
from image_cloner.oci.errors import (
    NotFoundError,
    RegistryUnavailableError,
    error_for_status,
    parse_retry_after,
)
from image_cloner.oci.options import RegistryOptions
from image_cloner.oci.retries import RetryPolicy
from image_cloner.oci.transport import Transport


def test_default_policy_retries_the_documented_statuses() -> None:
    assert RetryPolicy().statuses == {408, 429, 500, 502, 503, 504}


def test_backoff_grows_exponentially_and_is_capped() -> None:
    policy = RetryPolicy(backoff=Backoff(base=1.0, multiplier=2.0, cap=5.0))
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999])
def test_jitter_only_ever_shortens_a_delay_within_its_fraction(rand: float) -> None:
    policy = RetryPolicy(backoff=Backoff(base=2.0, cap=10.0, jitter=0.5))
    delay = policy.delay(1, rand=lambda: rand)
    assert 1.0 < delay <= 2.0
    assert delay == pytest.approx(2.0 * (1 - 0.5 * rand))


def test_retry_after_wins_over_backoff_and_is_capped() -> None:
    policy = RetryPolicy(backoff=Backoff(base=1.0), max_retry_after=30.0)
    assert policy.delay(1, retry_after=7.0) == 7.0
    assert policy.delay(3, retry_after=0.0) == 0.0
    assert policy.delay(1, retry_after=3600.0) == 30.0


@pytest.mark.parametrize(
    ("status", "attempt", "expected"),
    [
        (503, 1, True),
        (429, 4, True),
        (429, 5, False),  # attempts are used up
        (None, 1, True),  # connection failure
        (501, 1, False),  # not in the policy's statuses
    ],
)
def test_should_retry(status: int | None, attempt: int, expected: bool) -> None:
    error = RegistryUnavailableError("x", status=status)
    assert RetryPolicy(attempts=5).should_retry(error, attempt) is expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [(None, None), ("", None), ("120", 120.0), (" 3 ", 3.0), ("soon", None), ("-1", None)],
)
def test_parse_retry_after_seconds(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == expected


def test_parse_retry_after_http_date() -> None:
    now = time.time()
    header = email.utils.formatdate(now + 90, usegmt=True)
    assert parse_retry_after(header, now=now) == pytest.approx(90, abs=1)
    past = email.utils.formatdate(now - 90, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


class _Flaky:
    """Fails with the given errors in turn, then returns "done"."""

    def __init__(self, *errors: Exception) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "done"


def _transport(policy: RetryPolicy, sleeps: list[float]) -> Transport:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    return Transport(RegistryOptions(), retry=policy, sleep=sleep)


async def test_transient_failures_are_retried_honouring_retry_after() -> None:
    sleeps: list[float] = []
    transport = _transport(RetryPolicy(backoff=Backoff(base=1.0)), sleeps)
    work = _Flaky(
        error_for_status("GET x", 503),
        error_for_status("GET x", 429, retry_after=4.0),
        RegistryUnavailableError("GET x: connection reset"),
    )
    assert await transport.with_retries(work) == "done"
    assert work.calls == 4
    assert sleeps == [1.0, 4.0, 4.0]


async def test_retries_stop_after_the_policy_attempts() -> None:
    sleeps: list[float] = []
    transport = _transport(RetryPolicy(attempts=3, backoff=Backoff(base=0.5)), sleeps)
    work = _Flaky(*(error_for_status("GET x", 502) for _ in range(5)))
    with pytest.raises(RegistryUnavailableError, match="502"):
        await transport.with_retries(work)
    assert work.calls == 3
    assert sleeps == [0.5, 1.0]


async def test_other_failures_are_not_retried() -> None:
    sleeps: list[float] = []
    transport = _transport(RetryPolicy(), sleeps)
    work = _Flaky(NotFoundError("GET x: 404"))
    with pytest.raises(NotFoundError):
        await transport.with_retries(work)
    assert work.calls == 1
    assert sleeps == []


async def test_unlisted_5xx_is_not_retried() -> None:
    transport = _transport(RetryPolicy(), [])
    work = _Flaky(error_for_status("GET x", 501))
    with pytest.raises(RegistryUnavailableError):
        await transport.with_retries(work)
    assert work.calls == 1
