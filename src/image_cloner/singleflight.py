"""Single-flight: concurrent callers that need the same thing share one piece of work.

Copies of many images need the same blob, many workloads the same image, many requests
the same registry token. `SingleFlight` runs one task per key; whoever asks for that key
while it runs awaits the same task. The work is cancelled only when every caller waiting
for it has been cancelled (all copies that needed a blob failed elsewhere, say), so that
it can clean up after itself (cancel its upload session) instead of being cut short.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


@dataclass
class _Flight(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0


class SingleFlight(Generic[T]):
    """One task per key; everyone asking for the same key while it runs awaits that task."""

    def __init__(self) -> None:
        self._flights: dict[Hashable, _Flight[T]] = {}
        self._winding_down: set[asyncio.Task[T]] = set()
        """Work cancelled because nobody waits for it any more, still cleaning up."""

    def __len__(self) -> int:
        """Keys whose work is running now."""
        return len(self._flights)

    async def run(self, key: Hashable, work: Callable[[], Coroutine[Any, Any, T]]) -> T:
        flight = self._flights.get(key)
        if flight is None:
            flight = _Flight(asyncio.create_task(work()))
            self._flights[key] = flight
            flight.task.add_done_callback(lambda done: self._forget(key, done))
        flight.waiters += 1
        try:
            # shield: one waiter being cancelled must not cancel the work for the others.
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if flight.waiters == 0 and not flight.task.done():
                self._abandon(key, flight.task)

    def _abandon(self, key: Hashable, task: asyncio.Task[T]) -> None:
        """Cancel work nobody waits for; a later caller starts afresh rather than join a
        task that is winding down (it would get that task's CancelledError)."""
        task.cancel()
        if (flight := self._flights.get(key)) is not None and flight.task is task:
            del self._flights[key]
        self._winding_down.add(task)
        task.add_done_callback(self._winding_down.discard)

    def _forget(self, key: Hashable, task: asyncio.Task[T]) -> None:
        flight = self._flights.get(key)
        if flight is not None and flight.task is task:
            del self._flights[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters that got cancelled must not leave it unreported

    async def cancel_all(self) -> None:
        """Cancel what still runs and wait for it to clean up (e.g. cancel upload sessions)."""
        tasks = [flight.task for flight in self._flights.values()]
        for task in tasks:
            task.cancel()
        # Work already cancelled is not cancelled again: that would cut its clean-up short.
        await asyncio.gather(*tasks, *self._winding_down, return_exceptions=True)
