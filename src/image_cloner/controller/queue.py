"""A level-triggered work queue, after client-go's `workqueue`, for asyncio.

Watch events only say "look at this workload again"; the reconcile reads the current
object and decides. So the queue holds keys, not events, and guarantees what makes that
safe and cheap:

- a key waiting in the queue is there once, however many events arrive (dedup);
- a key is processed by one worker at a time; an `add` while it is in flight marks it
  dirty and it is queued again when the worker is done, so no change is missed;
- failures are retried after a per-key exponential backoff (`backoff.KeyedBackoff`),
  reset by the next success;
- a key waiting for background work (`Retry.until`: an image copy) is queued again when
  that work is done, without holding a worker meanwhile and without a backoff;
- `shutdown` stops taking work, lets in-flight keys finish (within a grace period),
  and drops what is pending: a restart re-lists everything anyway;
- cancelling `run` (a leader that lost its Lease) stops the workers and keeps every key,
  the interrupted ones included, so `run` can be called again and misses nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Any, Generic, TypeVar

from image_cloner.backoff import Backoff, KeyedBackoff
from image_cloner.logs import log_event

__all__ = ["DEFAULT_BACKOFF", "Retry", "WorkQueue"]

K = TypeVar("K", bound=Hashable)

DEFAULT_BACKOFF = Backoff(base=1.0, cap=300.0)
"""A failing workload is retried after 1 s, 2 s, 4 s, ... at most every 5 minutes."""

logger = logging.getLogger(__name__)


class Retry(Exception):
    """Raised by a worker for an expected failure it has already reported (log, Event).

    The queue retries the key: when every future in `until` is done if given (no failure:
    the key waits for work it started), else after `after` seconds if given, else after the
    key's exponential backoff. Any other exception is a bug: logged with its traceback,
    then retried with backoff as well.
    """

    def __init__(
        self,
        reason: str,
        *,
        after: float | None = None,
        until: Collection[asyncio.Future[Any]] = (),
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after = after
        self.until = until


class WorkQueue(Generic[K]):
    """Keys to reconcile, deduplicated, one in flight per key, with delayed and backed-off adds.

    Must be created and used inside one running event loop.
    """

    def __init__(self, *, backoff: KeyedBackoff[K] | None = None, name: str = "work") -> None:
        self.name = name
        self.backoff: KeyedBackoff[K] = backoff or KeyedBackoff(DEFAULT_BACKOFF)
        self._queue: deque[K] = deque()
        self._dirty: set[K] = set()  # needs processing: queued, or to re-queue when done
        self._processing: set[K] = set()
        self._waiting: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._not_empty = asyncio.Event()
        self._shutting_down = False
        self._workers: list[asyncio.Task[None]] = []

    @property
    def depth(self) -> int:
        """Keys ready to be processed (not in flight, not waiting for a delay)."""
        return len(self._queue)

    @property
    def in_flight(self) -> int:
        return len(self._processing)

    @property
    def waiting(self) -> int:
        """Keys scheduled by `add_after` / `add_rate_limited` whose delay has not passed."""
        return len(self._waiting)

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    def add(self, key: K) -> None:
        """Ask for `key` to be processed (again). Ignored once shutting down."""
        if self._shutting_down or key in self._dirty:
            return
        self._dirty.add(key)
        if key in self._processing:
            return  # re-queued by _done, so it is never processed twice at once
        self._queue.append(key)
        self._not_empty.set()

    def add_after(self, key: K, delay: float) -> None:
        """`add(key)` after `delay` seconds; of several pending delays the earliest wins."""
        if self._shutting_down:
            return
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        due = loop.time() + delay
        scheduled = self._waiting.get(key)
        if scheduled is not None:
            if scheduled[0] <= due:
                return
            scheduled[1].cancel()
        self._waiting[key] = (due, loop.call_at(due, self._fire, key))

    def add_rate_limited(self, key: K) -> float:
        """`add_after(key)` by the key's backoff; returns the delay chosen."""
        delay = self.backoff.when(key)
        self.add_after(key, delay)
        return delay

    def add_when_done(self, key: K, futures: Collection[asyncio.Future[Any]]) -> None:
        """`add(key)` once every one of `futures` is done (at once if there are none)."""
        waiting = set(futures)

        def done(future: asyncio.Future[Any]) -> None:
            waiting.discard(future)
            if not waiting:
                self.add(key)

        if not waiting:
            self.add(key)
        for future in list(waiting):
            future.add_done_callback(done)

    def forget(self, key: K) -> None:
        """Reset the key's backoff (it succeeded)."""
        self.backoff.forget(key)

    def num_requeues(self, key: K) -> int:
        return self.backoff.failures(key)

    def _fire(self, key: K) -> None:
        self._waiting.pop(key, None)
        self.add(key)

    async def _get(self) -> K | None:
        while not self._queue:
            if self._shutting_down:
                return None
            self._not_empty.clear()
            await self._not_empty.wait()
        if self._shutting_down:
            return None
        key = self._queue.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def _done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._not_empty.set()

    async def run(self, worker: Callable[[K], Awaitable[None]], *, workers: int = 1) -> None:
        """Process keys with `workers` concurrent calls of `worker` until `shutdown`.

        A normal return forgets the key's backoff; `Retry` and other exceptions re-queue it.
        """
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if self._workers:
            raise RuntimeError(f"{self.name} queue is already running")
        self._workers = [
            asyncio.create_task(self._work(worker), name=f"{self.name}-worker-{n}")
            for n in range(workers)
        ]
        try:
            await asyncio.gather(*self._workers)
        except asyncio.CancelledError:
            # Workers cancelled by `shutdown` after the grace period end `run` normally;
            # a cancellation of `run` itself propagates.
            task = asyncio.current_task()
            if not self._shutting_down or (task is not None and task.cancelling()):
                raise
        finally:
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
            self._workers = []

    async def _work(self, worker: Callable[[K], Awaitable[None]]) -> None:
        while (key := await self._get()) is not None:
            try:
                await worker(key)
            except asyncio.CancelledError:
                # Cut short (leadership lost, `run` cancelled), not done: whoever runs the
                # queue next must look at it again. A shutdown drops it like the rest.
                if not self._shutting_down:
                    self._dirty.add(key)
                raise
            except Retry as retry:
                self._retry(key, retry)
            except Exception as exc:
                delay = self.add_rate_limited(key)
                log_event(
                    logger,
                    logging.ERROR,
                    "unexpected error, retrying later",
                    exc_info=exc,
                    queue=self.name,
                    key=str(key),
                    retry_in=round(delay, 3),
                    failures=self.num_requeues(key),
                )
            else:
                self.forget(key)
            finally:
                self._done(key)

    def _retry(self, key: K, retry: Retry) -> None:
        if retry.until:
            self.add_when_done(key, retry.until)
            log_event(
                logger,
                logging.DEBUG,
                "queued again when its work is done",
                queue=self.name,
                key=str(key),
                reason=retry.reason,
            )
            return
        if retry.after is not None:
            delay = retry.after
            self.add_after(key, delay)
        else:
            delay = self.add_rate_limited(key)
        log_event(
            logger,
            logging.DEBUG,
            "retrying later",
            queue=self.name,
            key=str(key),
            reason=retry.reason,
            retry_in=round(delay, 3),
            failures=self.num_requeues(key),
        )

    async def shutdown(self, *, grace: float | None = None) -> None:
        """Stop taking keys; wait up to `grace` seconds (None: forever) for in-flight ones.

        Workers still busy after the grace period are cancelled. `run` then returns.
        """
        self._shutting_down = True
        for _, handle in self._waiting.values():
            handle.cancel()
        self._waiting.clear()
        self._queue.clear()
        self._dirty.clear()
        self._not_empty.set()  # wake idle workers so they see the shutdown
        busy = [task for task in self._workers if not task.done()]
        if not busy:
            return
        _, stuck = await asyncio.wait(busy, timeout=grace)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
