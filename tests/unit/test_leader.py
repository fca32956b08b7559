"""Leader election against a small in-process Lease store (the e2e suite has the real apiserver).

The store does what the apiserver does where the elector's safety depends on it: a PUT
whose `resourceVersion` is stale is a Conflict, a second create is AlreadyExists. Each
candidate reaches it through its own client, which a test can cut (requests fail at once)
or hang (requests never answer), the two ways an apiserver goes away.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import time
from collections.abc import Mapping
from typing import Any

import pytest

from image_cloner.controller.kube import JsonObject
from image_cloner.controller.kube_errors import AlreadyExists, Conflict, Unreachable
from image_cloner.controller.leader import LeaderElector, default_identity
from image_cloner.settings import LeaderElection

CONFIG = LeaderElection(
    namespace="system",
    lease_name="cloner",
    lease_duration=1.0,
    renew_deadline=0.6,
    retry_period=0.1,
)


class LeaseStore:
    def __init__(self) -> None:
        self.lease: JsonObject | None = None
        self._versions = itertools.count(1)

    def write(self, lease: Mapping[str, Any]) -> JsonObject:
        stored = copy.deepcopy(dict(lease))
        stored.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        self.lease = stored
        return copy.deepcopy(stored)


class LeaseClient:
    """One candidate's way to the store: `mode` "ok", "down" (refused) or "hang"."""

    def __init__(self, store: LeaseStore) -> None:
        self.store = store
        self.mode = "ok"

    async def _reach(self) -> None:
        if self.mode == "down":
            raise Unreachable(0, "cannot reach the apiserver: refused")
        if self.mode == "hang":
            await asyncio.Event().wait()

    async def read_lease(self, namespace: str, name: str) -> JsonObject | None:
        await self._reach()
        return copy.deepcopy(self.store.lease)

    async def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> JsonObject:
        await self._reach()
        if self.store.lease is not None:
            raise AlreadyExists(409, "exists", reason="AlreadyExists")
        return self.store.write(lease)

    async def replace_lease(
        self, namespace: str, name: str, lease: Mapping[str, Any]
    ) -> JsonObject:
        await self._reach()
        current = self.store.lease
        assert current is not None
        if lease["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise Conflict(409, "stale", reason="Conflict")
        return self.store.write(lease)


class Candidate:
    """An elector whose work records when it ran."""

    def __init__(self, store: LeaseStore, name: str) -> None:
        self.client = LeaseClient(store)
        self.elector = LeaderElector(self.client, CONFIG, identity=name)
        self.working = False
        self.started: list[float] = []
        self.stopped: list[float] = []
        self.task: asyncio.Task[None] | None = None

    async def _work(self) -> None:
        self.working = True
        self.started.append(time.monotonic())
        try:
            await asyncio.Event().wait()
        finally:
            self.working = False
            self.stopped.append(time.monotonic())

    def start(self) -> None:
        self.task = asyncio.create_task(self.elector.run(self._work))

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.elector.release()


async def wait_for(condition: Any, *, within: float = 5.0) -> float:
    """Poll `condition`; the moment it held (the deadline only bounds failures)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    return time.monotonic()


@pytest.fixture
def store() -> LeaseStore:
    return LeaseStore()


async def test_one_of_two_candidates_leads_and_the_lease_names_it(store: LeaseStore) -> None:
    a, b = Candidate(store, "a"), Candidate(store, "b")
    a.start()
    await wait_for(lambda: a.working)
    b.start()
    await asyncio.sleep(CONFIG.lease_duration * 1.5)  # renewals keep it: b never takes over
    assert a.working
    assert not b.working
    assert a.elector.leading
    assert not b.elector.leading
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] == "a"
    assert store.lease["spec"]["leaseDurationSeconds"] == 1
    assert b.elector.holder == "a"
    await a.stop()
    await b.stop()


async def test_release_hands_over_on_the_next_retry(store: LeaseStore) -> None:
    a, b = Candidate(store, "a"), Candidate(store, "b")
    a.start()
    await wait_for(lambda: a.working)
    b.start()
    await asyncio.sleep(0.3)
    released = time.monotonic()
    await a.stop()
    assert store.lease is not None
    assert store.lease["spec"]["holderIdentity"] == ""
    took_over = await wait_for(lambda: b.working)
    # Well before the lease duration: retry x (1 + jitter) at most, plus scheduling.
    assert took_over - released < CONFIG.retry_period * 2.2 + 0.2
    assert store.lease["spec"]["holderIdentity"] == "b"
    assert store.lease["spec"]["leaseTransitions"] == 1
    await b.stop()


@pytest.mark.parametrize("mode", ["down", "hang"])
async def test_a_leader_cut_off_stops_before_anyone_can_take_over(
    store: LeaseStore, mode: str
) -> None:
    a, b = Candidate(store, "a"), Candidate(store, "b")
    a.start()
    await wait_for(lambda: a.working)
    b.start()
    await asyncio.sleep(0.3)
    cut = time.monotonic()
    a.client.mode = mode
    stopped = await wait_for(lambda: not a.working)
    took_over = await wait_for(lambda: b.working)
    # At most the renew deadline after the last renewal (at most a retry before the cut)...
    assert stopped - cut <= CONFIG.renew_deadline + 0.1
    # ...so strictly before the follower may count the lease as expired.
    assert a.stopped[-1] < b.started[-1]
    assert took_over - a.stopped[-1] > (CONFIG.lease_duration - CONFIG.renew_deadline) / 2
    assert not a.elector.leading
    # Back on the network, the old leader follows the new one.
    a.client.mode = "ok"
    await asyncio.sleep(CONFIG.lease_duration * 1.5)
    assert not a.working
    assert b.working
    assert a.elector.holder == "b"
    await a.stop()
    await b.stop()


async def test_a_leader_whose_lease_was_taken_stops_at_once(store: LeaseStore) -> None:
    a = Candidate(store, "a")
    a.start()
    await wait_for(lambda: a.working)
    assert store.lease is not None
    spec = {**store.lease["spec"], "holderIdentity": "intruder"}
    store.write({**store.lease, "spec": spec})
    stopped = await wait_for(lambda: not a.working, within=1.0)
    assert stopped - a.started[-1] < CONFIG.renew_deadline
    await a.stop()
    assert store.lease["spec"]["holderIdentity"] == "intruder"  # not ours to release


def test_identity_is_the_pod_name_and_a_random_suffix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOSTNAME", "image-cloner-5d9c-x2b")
    first, second = default_identity(), default_identity()
    assert first.startswith("image-cloner-5d9c-x2b_")
    assert first != second
