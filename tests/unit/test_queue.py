"""The work queue on a real event loop: dedup, one in flight per key, delays, backoff, shutdown.

Tests wait for outcomes (events, polled conditions with a generous deadline) and assert
orders and counts, never that something happened within a tight time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable

import pytest

from image_cloner.backoff import Backoff, KeyedBackoff
from image_cloner.controller.queue import Retry, WorkQueue

DEADLINE = 5.0


async def until(condition: Callable[[], bool]) -> None:
    # Polling keeps the code under test free of test hooks; the deadline only bounds failures.
    async with asyncio.timeout(DEADLINE):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.001)


@pytest.fixture
async def queue() -> AsyncIterator[WorkQueue[str]]:
    q: WorkQueue[str] = WorkQueue(backoff=KeyedBackoff(Backoff(base=0.01, cap=0.04)), name="test")
    yield q
    await q.shutdown(grace=1)


def start(
    q: WorkQueue[str], worker: Callable[[str], object], *, workers: int = 1
) -> asyncio.Task[None]:
    return asyncio.create_task(q.run(worker, workers=workers))  # type: ignore[arg-type]


async def test_pending_key_is_processed_once(queue: WorkQueue[str]) -> None:
    seen: list[str] = []

    async def worker(key: str) -> None:
        seen.append(key)

    for key in ["a", "a", "b", "a", "end"]:
        queue.add(key)
    assert queue.depth == 3
    start(queue, worker)
    await until(lambda: "end" in seen)
    assert seen == ["a", "b", "end"]


async def test_add_while_in_flight_requeues_once_and_never_runs_a_key_twice_at_once(
    queue: WorkQueue[str],
) -> None:
    gate = asyncio.Event()
    running: Counter[str] = Counter()
    most: Counter[str] = Counter()
    done: list[str] = []

    async def worker(key: str) -> None:
        running[key] += 1
        most[key] = max(most[key], running[key])
        if key == "a" and not gate.is_set():
            await gate.wait()
        running[key] -= 1
        done.append(key)

    start(queue, worker, workers=3)
    queue.add("a")
    await until(lambda: running["a"] == 1)
    for _ in range(3):
        queue.add("a")  # three events while in flight: one more pass, after this one
    queue.add("b")
    await until(lambda: "b" in done)  # other keys are not held up by "a"
    assert queue.depth == 0, "the in-flight key is not queued a second time"
    gate.set()
    await until(lambda: done.count("a") == 2 and queue.in_flight == 0)
    assert queue.depth == 0
    assert most["a"] == 1
    assert done.count("a") == 2


async def test_workers_run_different_keys_concurrently(queue: WorkQueue[str]) -> None:
    gate = asyncio.Event()
    started: list[str] = []

    async def worker(key: str) -> None:
        started.append(key)
        await gate.wait()

    for key in "abc":
        queue.add(key)
    start(queue, worker, workers=2)
    await until(lambda: len(started) == 2)
    assert started == ["a", "b"]
    assert (queue.in_flight, queue.depth) == (2, 1)
    gate.set()
    await until(lambda: queue.in_flight == 0)
    assert started == ["a", "b", "c"]


async def test_add_after_waits_at_least_the_delay(queue: WorkQueue[str]) -> None:
    loop = asyncio.get_running_loop()
    processed: dict[str, float] = {}

    async def worker(key: str) -> None:
        processed[key] = loop.time()

    start(queue, worker)
    began = loop.time()
    queue.add_after("a", 0.05)
    assert (queue.waiting, queue.depth) == (1, 0)
    await until(lambda: "a" in processed)
    assert processed["a"] - began >= 0.045
    assert queue.waiting == 0


async def test_add_after_keeps_the_earliest_due_time(queue: WorkQueue[str]) -> None:
    seen: list[str] = []

    async def worker(key: str) -> None:
        seen.append(key)

    start(queue, worker)
    queue.add_after("a", 60)
    queue.add_after("a", 0.01)  # earlier: replaces the 60 s one
    queue.add_after("b", 0.01)
    queue.add_after("b", 60)  # later: ignored
    await until(lambda: {"a", "b"} <= set(seen))
    assert queue.waiting == 0, "no timer is left behind for either key"
    assert sorted(seen) == ["a", "b"]


async def test_retry_backs_off_exponentially_and_success_forgets(queue: WorkQueue[str]) -> None:
    loop = asyncio.get_running_loop()
    requeues: list[int] = []
    times: list[float] = []

    async def worker(key: str) -> None:
        requeues.append(queue.num_requeues(key))
        times.append(loop.time())
        if len(requeues) <= 4:
            raise Retry("registry unavailable")

    queue.add("a")
    start(queue, worker)
    await until(lambda: len(requeues) == 5 and queue.in_flight == 0)
    assert requeues == [0, 1, 2, 3, 4]
    assert queue.num_requeues("a") == 0
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # 0.01, 0.02, 0.04 and then capped at 0.04; small slack for the clock's resolution.
    for gap, delay in zip(gaps, [0.01, 0.02, 0.04, 0.04], strict=True):
        assert gap >= delay - 0.005


async def test_retry_after_a_fixed_delay_does_not_count_as_failure(queue: WorkQueue[str]) -> None:
    calls: list[int] = []

    async def worker(key: str) -> None:
        calls.append(queue.num_requeues(key))
        if len(calls) == 1:
            raise Retry("not yet", after=0.01)

    queue.add("a")
    start(queue, worker)
    await until(lambda: len(calls) == 2)
    assert calls == [0, 0]


async def test_unexpected_error_is_logged_with_traceback_and_retried(
    queue: WorkQueue[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="image_cloner.controller.queue")
    calls: list[str] = []

    async def worker(key: str) -> None:
        calls.append(key)
        if len(calls) == 1:
            raise ValueError("bug in reconcile")

    queue.add("a")
    start(queue, worker)
    await until(lambda: len(calls) == 2 and queue.in_flight == 0)
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.getMessage() == "unexpected error, retrying later"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    assert record.fields["key"] == "a"  # type: ignore[attr-defined]


async def test_shutdown_finishes_in_flight_drops_pending_and_ignores_new_keys(
    queue: WorkQueue[str],
) -> None:
    gate = asyncio.Event()
    started: list[str] = []
    finished: list[str] = []

    async def worker(key: str) -> None:
        started.append(key)
        await gate.wait()
        finished.append(key)

    queue.add("a")
    queue.add("b")
    queue.add_after("c", 0.01)
    runner = start(queue, worker)
    await until(lambda: started == ["a"])
    stopping = asyncio.create_task(queue.shutdown(grace=DEADLINE))
    await asyncio.sleep(0.05)  # the delay of "c" has passed; nothing must start
    assert not stopping.done(), "shutdown waits for the in-flight key"
    queue.add("d")
    queue.add_after("e", 0)
    gate.set()
    await stopping
    await asyncio.wait_for(runner, DEADLINE)
    assert started == finished == ["a"]
    assert (queue.depth, queue.waiting, queue.in_flight) == (0, 0, 0)


async def test_shutdown_cancels_workers_stuck_past_the_grace_period(queue: WorkQueue[str]) -> None:
    cancelled: list[str] = []

    async def worker(key: str) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(key)
            raise

    queue.add("a")
    runner = start(queue, worker)
    await until(lambda: queue.in_flight == 1)
    await queue.shutdown(grace=0.01)
    await asyncio.wait_for(runner, DEADLINE)
    assert cancelled == ["a"]
    assert queue.in_flight == 0


async def test_cancelling_run_stops_its_workers(queue: WorkQueue[str]) -> None:
    async def worker(key: str) -> None:
        await asyncio.Event().wait()

    queue.add("a")
    runner = start(queue, worker, workers=2)
    await until(lambda: queue.in_flight == 1)
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert queue.in_flight == 0


async def test_a_cancelled_run_keeps_its_keys_for_the_next_run(queue: WorkQueue[str]) -> None:
    # A leader that loses its Lease stops the workers; leading again must miss nothing.
    done: list[str] = []
    hold = True

    async def worker(key: str) -> None:
        if hold:
            await asyncio.Event().wait()
        done.append(key)

    queue.add("interrupted")
    runner = start(queue, worker)
    await until(lambda: queue.in_flight == 1)
    queue.add("waiting")
    runner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runner
    assert queue.depth == 2
    hold = False
    start(queue, worker)
    await until(lambda: len(done) == 2)
    assert sorted(done) == ["interrupted", "waiting"]


async def test_run_rejects_bad_worker_counts_and_a_second_run(queue: WorkQueue[str]) -> None:
    async def worker(key: str) -> None:
        return None

    with pytest.raises(ValueError, match="at least 1"):
        await queue.run(worker, workers=0)
    start(queue, worker)
    await asyncio.sleep(0)
    with pytest.raises(RuntimeError, match="already running"):
        await queue.run(worker)


async def test_a_key_waiting_for_its_work_frees_the_worker_and_comes_back_when_done(
    queue: WorkQueue[str],
) -> None:
    copies = [asyncio.get_running_loop().create_future() for _ in range(2)]
    seen: list[str] = []

    async def worker(key: str) -> None:
        seen.append(key)
        if key == "big" and not all(c.done() for c in copies):
            raise Retry("copying", until=copies)

    queue.add("big")
    start(queue, worker)  # one worker: "small" gets it while "big" waits for its copies
    await until(lambda: seen == ["big"])
    queue.add("small")
    await until(lambda: seen == ["big", "small"])
    copies[0].set_result(None)
    await asyncio.sleep(0.01)
    assert seen == ["big", "small"], "back only when all of its work is done"
    copies[1].set_result(None)
    await until(lambda: seen == ["big", "small", "big"])
    assert queue.num_requeues("big") == 0, "waiting is no failure: no backoff"


def test_backoff_doubles_up_to_the_cap_per_key() -> None:
    backoff: KeyedBackoff[str] = KeyedBackoff(Backoff(base=1, cap=8))
    assert [backoff.when("a") for _ in range(5)] == [1, 2, 4, 8, 8]
    assert backoff.when("b") == 1
    assert backoff.failures("a") == 5
    backoff.forget("a")
    assert (backoff.failures("a"), backoff.when("a")) == (0, 1)


def test_backoff_survives_many_failures() -> None:
    backoff: KeyedBackoff[str] = KeyedBackoff(Backoff(base=0.5, cap=300))
    for _ in range(2000):
        delay = backoff.when("a")
    assert delay == 300


@pytest.mark.parametrize(("base", "cap"), [(0, 1), (2, 1), (-1, 5)])
def test_backoff_rejects_nonsense(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=base, cap=cap)
