"""The watch tracker on a fake API: events become keys, listings repair what the watch missed."""

from __future__ import annotations

from typing import Any

from image_cloner.controller.queue import WorkQueue
from image_cloner.controller.watch import Delivered, WatchTracker
from image_cloner.health import Health
from image_cloner.settings import Settings
from image_cloner.workloads import DEPLOYMENT, POD, WorkloadKey
from tests.support.fake_kube import FakeKube, deployment

KEY = WorkloadKey("Deployment", "demo", "web")


def tracker_on(
    kube: FakeKube, clock: list[float]
) -> tuple[WatchTracker, WorkQueue[WorkloadKey], Health]:
    settings = Settings.from_env({"IMAGE_CLONER_REGISTRY": "localhost:5000"})
    health = Health(staleness=60, clock=lambda: clock[0])
    queue: WorkQueue[WorkloadKey] = WorkQueue()
    return WatchTracker(queue=queue, health=health, kube=kube, settings=settings), queue, health


async def test_a_watch_event_is_remembered_and_a_ready_workload_queued() -> None:
    kube = FakeKube()
    obj = kube.add(deployment("web", {"app": "nginx:1"}))
    tracker, queue, health = tracker_on(kube, [0.0])
    tracker.observe(DEPLOYMENT, "ADDED", obj)
    assert (KEY in tracker, len(tracker), queue.depth) == (True, 1, 1)
    assert await tracker.resync(DEPLOYMENT) == 0, "the listing matches the watch"
    assert health.watch_age("Deployment") == 0.0
    tracker.observe(DEPLOYMENT, "DELETED", obj)
    assert KEY not in tracker


async def test_a_repaired_miss_is_repaired_once_and_the_watch_counts_as_current_again() -> None:
    kube = FakeKube()
    obj = kube.add(deployment("web", {"app": "nginx:1"}))
    clock = [0.0]
    tracker, queue, health = tracker_on(kube, clock)
    tracker.observe(DEPLOYMENT, "ADDED", obj)
    # An event the watch never delivered: the label changes a quiet workload's version.
    kube.edit("Deployment", "demo", "web", lambda o: o["metadata"].update(labels={"a": "b"}))

    clock[0] = 10.0
    assert await tracker.resync(DEPLOYMENT) == 1, "the listing repairs the missed event"
    assert queue.depth == 1
    clock[0] = 130.0
    assert await tracker.resync(DEPLOYMENT) == 0, "the repaired version counts as seen"
    assert health.watch_age("Deployment") == 0.0, "so the listing proves the stream current"
    assert "Deployment watch is stale" not in " ".join(health.problems())


def pod(name: str, *, owner: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "demo", "resourceVersion": "5"}
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "apps/v1", "kind": owner, "name": "x", "uid": "u", "controller": True}
        ]
    return {"kind": "Pod", "metadata": meta, "spec": {}, "status": {"phase": "Running"}}


async def test_only_bare_pods_are_queued_and_owned_ones_cost_one_entry() -> None:
    tracker, queue, _ = tracker_on(FakeKube(), [0.0])
    tracker.observe(POD, "ADDED", pod("web-7f9-abcde", owner="ReplicaSet"))
    tracker.observe(POD, "ADDED", pod("bare", owner=None))
    # Both remembered (the listing must still match the watch), only the bare one queued.
    assert len(tracker) == 2
    assert queue.depth == 1
    assert WorkloadKey("Pod", "demo", "bare") in tracker


def ready(version: str, *, is_ready: bool = True) -> dict[str, Any]:
    obj = deployment("web", {"app": "nginx:1"}, ready=is_ready)
    obj["metadata"]["resourceVersion"] = version
    return obj


async def test_the_newest_delivered_object_of_a_queued_workload_is_its_pass_s() -> None:
    tracker, queue, _ = tracker_on(FakeKube(), [0.0])
    tracker.observe(DEPLOYMENT, "ADDED", ready("1"))
    # Not ready any more before its pass: not queued for that, but it replaces the older
    # object, so the pass never starts from a version older than the watch has shown.
    tracker.observe(DEPLOYMENT, "MODIFIED", ready("2", is_ready=False))
    taken = tracker.delivered.take(KEY)
    assert taken is not None
    assert taken["metadata"]["resourceVersion"] == "2"
    assert tracker.delivered.take(KEY) is None, "taken once"
    assert queue.depth == 1


async def test_an_object_given_back_is_kept_only_while_it_is_the_newest_and_not_deleted() -> None:
    tracker, _, _ = tracker_on(FakeKube(), [0.0])
    tracker.observe(DEPLOYMENT, "ADDED", ready("1"))
    first = tracker.delivered.take(KEY)
    assert first is not None
    tracker.observe(DEPLOYMENT, "MODIFIED", ready("2", is_ready=False))  # not queued
    tracker.delivered.give_back(KEY, first)
    assert tracker.delivered.take(KEY) is None, "version 1 is older than what the watch showed"

    tracker.observe(DEPLOYMENT, "MODIFIED", ready("3"))
    third = tracker.delivered.take(KEY)
    assert third is not None
    tracker.delivered.give_back(KEY, third)
    assert tracker.delivered.take(KEY) is third
    tracker.delivered.give_back(KEY, third)
    tracker.observe(DEPLOYMENT, "DELETED", ready("4"))
    assert (tracker.delivered.take(KEY), len(tracker.delivered)) == (None, 0)


def test_past_its_limit_the_store_keeps_no_more_workloads_but_still_renews_those_it_has() -> None:
    keys = [WorkloadKey("Deployment", "demo", name) for name in ("a", "b", "c")]
    delivered = Delivered({}, limit=2)
    for key in keys:
        delivered.put(key, {"metadata": {"name": key.name, "resourceVersion": "1"}})
    assert len(delivered) == 2
    assert delivered.take(keys[2]) is None, "the third one's pass reads it"
    newer = {"metadata": {"name": "a", "resourceVersion": "2"}}
    delivered.put(keys[0], newer)
    assert delivered.take(keys[0]) is newer, "a kept workload's newer object replaces it"
