"""SingleFlight: shared work, cancellation only when nobody waits, clean-up on cancel_all."""

from __future__ import annotations

import asyncio

import pytest

from image_cloner.singleflight import SingleFlight


async def _winding_down(started: asyncio.Event, cleaned: list[str]) -> str:
    """Work that, once cancelled, needs a moment to clean up (DELETE an upload session)."""
    started.set()
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(0.05)
        cleaned.append("done")
        raise
    return "first"


async def test_a_new_caller_does_not_join_work_that_is_being_cancelled() -> None:
    flights: SingleFlight[str] = SingleFlight()
    started, cleaned = asyncio.Event(), list[str]()
    first = asyncio.create_task(flights.run("blob", lambda: _winding_down(started, cleaned)))
    await started.wait()
    first.cancel()  # its only caller gave up: the work is cancelled and cleans up
    with pytest.raises(asyncio.CancelledError):
        await first

    async def again() -> str:
        return "second"

    # A later copy needing the same blob gets its own work, not a CancelledError.
    assert await flights.run("blob", again) == "second"


async def test_cancel_all_lets_cancelled_work_finish_its_clean_up() -> None:
    flights: SingleFlight[str] = SingleFlight()
    started, cleaned = asyncio.Event(), list[str]()
    first = asyncio.create_task(flights.run("blob", lambda: _winding_down(started, cleaned)))
    await started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await flights.cancel_all()  # what Copier.__aexit__ does after an interrupted copy
    assert cleaned == ["done"]


async def test_concurrent_callers_of_one_key_share_one_run() -> None:
    flights: SingleFlight[int] = SingleFlight()
    runs: list[str] = []
    release = asyncio.Event()

    async def work() -> int:
        runs.append("run")
        await release.wait()
        return 42

    callers = [asyncio.create_task(flights.run("blob", work)) for _ in range(5)]
    await asyncio.sleep(0)
    assert len(flights) == 1
    release.set()
    assert await asyncio.gather(*callers) == [42] * 5
    assert runs == ["run"]
    assert len(flights) == 0


async def test_work_goes_on_while_one_of_its_callers_is_still_waiting() -> None:
    flights: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        return "done"

    gives_up = asyncio.create_task(flights.run("blob", work))
    stays = asyncio.create_task(flights.run("blob", work))
    await asyncio.sleep(0)
    gives_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gives_up
    release.set()
    assert await stays == "done"


async def test_a_failure_reaches_every_caller_and_the_next_call_starts_afresh() -> None:
    flights: SingleFlight[str] = SingleFlight()
    attempts: list[int] = []

    async def work() -> str:
        attempts.append(1)
        await asyncio.sleep(0)
        if len(attempts) == 1:
            raise RuntimeError("registry down")
        return "ok"

    first = [asyncio.create_task(flights.run("blob", work)) for _ in range(3)]
    results = await asyncio.gather(*first, return_exceptions=True)
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await flights.run("blob", work) == "ok"
    assert len(attempts) == 2
