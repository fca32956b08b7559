"""Backoff as data: doubling, cap, jitter bounds, validation; KeyedBackoff per key."""

from __future__ import annotations

import pytest

from image_cloner.backoff import Backoff, KeyedBackoff


def test_delay_doubles_from_base_up_to_the_cap() -> None:
    backoff = Backoff(base=1.0, cap=10.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]


def test_multiplier_sets_the_growth() -> None:
    assert [Backoff(base=1.0, cap=100.0, multiplier=3.0).delay(n) for n in (1, 2, 3)] == [
        1.0,
        3.0,
        9.0,
    ]


def test_zero_or_negative_failures_count_as_the_first() -> None:
    assert Backoff(base=2.0, cap=8.0).delay(0) == 2.0
    assert Backoff(base=2.0, cap=8.0).delay(-3) == 2.0


def test_a_huge_failure_count_is_capped_without_overflow() -> None:
    assert Backoff(base=0.25, cap=300.0).delay(10_000) == 300.0


@pytest.mark.parametrize("rand", [0.0, 0.25, 0.999])
def test_jitter_shortens_a_delay_by_at_most_its_fraction(rand: float) -> None:
    delay = Backoff(base=4.0, cap=4.0, jitter=0.5).delay(1, rand=lambda: rand)
    assert 2.0 < delay <= 4.0
    assert delay == pytest.approx(4.0 * (1 - 0.5 * rand))


def test_jitter_uses_real_randomness_within_bounds() -> None:
    backoff = Backoff(base=1.0, cap=1.0, jitter=0.5)
    delays = {backoff.delay(1) for _ in range(50)}
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(delays) > 1


def test_without_jitter_randomness_is_not_used() -> None:
    def never() -> float:
        raise AssertionError("rand called")

    assert Backoff(base=1.0, cap=5.0).delay(2, rand=never) == 2.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": 0.0},
        {"base": -1.0},
        {"base": 5.0, "cap": 1.0},
        {"multiplier": 0.5},
        {"jitter": 1.0},
        {"jitter": -0.1},
    ],
)
def test_nonsense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff needs"):
        Backoff(**kwargs)


def test_keyed_backoff_counts_per_key_until_forgotten() -> None:
    keyed: KeyedBackoff[str] = KeyedBackoff(Backoff(base=1.0, cap=60.0))
    assert [keyed.when("a") for _ in range(3)] == [1.0, 2.0, 4.0]
    assert keyed.when("b") == 1.0
    assert keyed.failures("a") == 3
    keyed.forget("a")
    assert keyed.failures("a") == 0
    assert keyed.when("a") == 1.0
    assert keyed.failures("b") == 1
    keyed.forget("never-failed")  # forgetting an unknown key is harmless


def test_keyed_backoff_defaults_to_the_default_rule() -> None:
    assert KeyedBackoff[str]().backoff == Backoff()
