"""The per-image backoff: when a failing image may be tried again, shared by its workloads.

It also forgets images nobody has tried for a long time, so images of deleted or fixed
workloads do not pile up over weeks.
"""

from __future__ import annotations

from image_cloner.backoff import Backoff
from image_cloner.controller.copies import ImageBackoff

KEY = ("docker.io/library/nginx:1", "localhost:5000/nginx:1")


def test_image_backoff_blocks_then_doubles_and_success_clears_it() -> None:
    now = [0.0]
    backoff = ImageBackoff(Backoff(base=5, cap=30), clock=lambda: now[0])
    assert backoff.blocked(KEY) is None

    assert backoff.failed(KEY, "unauthorized") == 5
    assert backoff.blocked(KEY) == (5, "unauthorized")
    now[0] = 4.0
    assert backoff.blocked(KEY) == (1, "unauthorized")
    now[0] = 5.0
    assert backoff.blocked(KEY) is None, "free again once the delay has passed"

    assert [backoff.failed(KEY, "down") for _ in range(4)] == [10, 20, 30, 30]
    backoff.succeeded(KEY)
    assert backoff.blocked(KEY) is None
    assert backoff.failed(KEY, "down") == 5, "a success starts the doubling over"


def test_image_backoff_is_per_image() -> None:
    backoff = ImageBackoff(Backoff(base=5, cap=30), clock=lambda: 0.0)
    backoff.failed(KEY, "down")
    assert backoff.blocked(("docker.io/library/redis:7", "localhost:5000/redis:7")) is None


def test_image_backoff_forgets_images_nobody_tried_for_longer_than_the_cap() -> None:
    now = [0.0]
    backoff = ImageBackoff(Backoff(base=5, cap=30), clock=lambda: now[0])
    old = ("docker.io/library/gone:1", "localhost:5000/gone:1")
    recent = ("docker.io/library/typo:1", "localhost:5000/typo:1")
    backoff.failed(old, "not found")  # blocked until 5
    now[0] = 20.0
    backoff.failed(recent, "not found")  # blocked until 25
    assert backoff.size == 2

    now[0] = 36.0  # `old` has been free (and untried) for more than the cap: forgotten
    current = ("docker.io/library/new:1", "localhost:5000/new:1")
    backoff.failed(current, "unauthorized")
    assert backoff.size == 2, "memory: `old` is gone, `recent` and `current` are kept"
    assert backoff.blocked(recent) is None  # free since 25, but remembered
    assert backoff.failed(old, "not found") == 5, "a forgotten image starts from base again"
    assert backoff.failed(recent, "not found") == 10, "a recent failure keeps doubling"
