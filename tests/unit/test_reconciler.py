"""The reconciler's decisions, on a fake Kubernetes API and a fake copier: milliseconds each.

What a user sees is asserted on the fake's state: the workload's images and annotation,
the patches applied, the Events posted. tests/e2e proves the same paths on a real
apiserver and real registries.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from image_cloner.controller.queue import Retry, WorkQueue
from image_cloner.controller.reconcile import (
    CLONE_FAILED,
    IMAGES_BACKED_UP,
    IMAGES_CLONED,
    Reconciler,
)
from image_cloner.controller.watch import WatchTracker
from image_cloner.health import Health
from image_cloner.metrics import Metrics
from image_cloner.oci.errors import NotFoundError
from image_cloner.settings import Settings
from image_cloner.workloads import DEPLOYMENT, ORIGINAL_IMAGES_ANNOTATION, WorkloadKey
from tests.support.fake_copier import FakeCopier, pinned
from tests.support.fake_kube import FakeKube, deployment

BACKUP = "backup.example:5000"
SETTINGS = Settings.from_env(
    {"IMAGE_CLONER_REGISTRY": BACKUP, "IMAGE_CLONER_USER": "robot", "IMAGE_CLONER_PASS": "pw"}
)
PULL_SECRET = "image-cloner-pull"
WEB = WorkloadKey("Deployment", "demo", "web")


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def copier() -> FakeCopier:
    return FakeCopier()


@pytest.fixture
def reconciler(kube: FakeKube, copier: FakeCopier) -> Reconciler:
    metrics = Metrics(health=Health())
    return Reconciler(kube=kube, copier=copier, settings=SETTINGS, metrics=metrics)


def containers(obj: dict[str, Any]) -> dict[str, str]:
    pod_spec = obj["spec"]["template"]["spec"]
    return {c["name"]: c["image"] for c in pod_spec["containers"]}


async def test_a_workload_not_rolled_out_is_left_alone(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1"}, ready=False))
    await reconciler(WEB)
    assert (copier.copied, kube.patches, kube.events) == ([], [], [])


async def test_a_ready_workload_is_copied_then_patched_once(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1", "side": "busybox:1"}))
    await reconciler(WEB)

    assert sorted(copier.copied) == [
        (pinned("busybox:1"), f"{BACKUP}/{pinned('busybox:1')}"),
        (pinned("nginx:1"), f"{BACKUP}/{pinned('nginx:1')}"),
    ]
    assert len(kube.patches) == 1
    obj = kube.get("Deployment", "demo", "web")
    assert containers(obj) == {
        "app": f"{BACKUP}/{pinned('nginx:1')}",
        "side": f"{BACKUP}/{pinned('busybox:1')}",
    }
    annotation = json.loads(obj["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION])
    assert annotation == {"app": "nginx:1", "side": "busybox:1"}
    assert obj["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": PULL_SECRET}]
    assert kube.secrets == {("demo", PULL_SECRET): BACKUP}
    (event,) = kube.events
    assert (event.reason, event.warning) == (IMAGES_CLONED, False)

    await reconciler(WEB)  # level-triggered: the rewritten workload needs nothing more
    assert len(kube.patches) == 1


async def test_a_concurrent_edit_is_read_again_and_decided_again(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1"}))
    edits = iter([lambda obj: obj["metadata"].update(labels={"edited": "yes"})])

    def user_edits_first() -> None:
        # The first patch meets an object changed since it was read; later ones do not.
        for edit in edits:
            kube.edit("Deployment", "demo", "web", edit)
            return

    kube.before_patch = user_edits_first
    await reconciler(WEB)

    obj = kube.get("Deployment", "demo", "web")
    assert obj["metadata"]["labels"] == {"edited": "yes"}, "the user's edit is kept"
    assert containers(obj) == {"app": f"{BACKUP}/{pinned('nginx:1')}"}
    assert len(kube.patches) == 1
    assert [e.reason for e in kube.events] == [IMAGES_CLONED]


def watched(kube: FakeKube, copier: FakeCopier) -> tuple[WatchTracker, Reconciler]:
    """A reconciler that starts its passes from what the tracker's watch delivered, and
    the watch's event for a new, ready Deployment `web`."""
    tracker = WatchTracker(queue=WorkQueue(), health=Health(), kube=kube, settings=SETTINGS)
    metrics = Metrics(health=Health())
    reconciler = Reconciler(
        kube=kube,
        copier=copier,
        settings=SETTINGS,
        metrics=metrics,
        delivered=tracker.delivered,
    )
    kube.add(deployment("web", {"app": "nginx:1"}))
    tracker.observe(DEPLOYMENT, "ADDED", kube.read_now("Deployment", "demo", "web"))
    return tracker, reconciler


async def test_a_pass_starts_from_the_delivered_object_without_reading_it(
    kube: FakeKube, copier: FakeCopier
) -> None:
    _, reconciler = watched(kube, copier)
    await reconciler(WEB)
    assert kube.workload_reads == [], "the watch's object was the pass's"
    assert containers(kube.get("Deployment", "demo", "web")) == {
        "app": f"{BACKUP}/{pinned('nginx:1')}"
    }
    await reconciler(WEB)  # no event since: the object is read as it is now
    assert kube.workload_reads == [("Deployment", "demo", "web")]
    assert len(kube.patches) == 1


async def test_a_delivered_object_older_than_the_cluster_is_read_again_before_the_patch(
    kube: FakeKube, copier: FakeCopier
) -> None:
    _, reconciler = watched(kube, copier)
    # A user's edit the watch has not delivered yet: the delivered object is out of date.
    kube.edit("Deployment", "demo", "web", lambda o: o["metadata"].update(labels={"a": "b"}))
    await reconciler(WEB)
    obj = kube.get("Deployment", "demo", "web")
    assert kube.workload_reads == [("Deployment", "demo", "web")], "read after the conflict"
    assert obj["metadata"]["labels"] == {"a": "b"}, "the user's edit is kept"
    assert containers(obj) == {"app": f"{BACKUP}/{pinned('nginx:1')}"}
    assert len(kube.patches) == 1


async def test_a_pass_that_comes_back_keeps_its_object_unless_a_newer_one_arrives(
    kube: FakeKube, copier: FakeCopier
) -> None:
    tracker, reconciler = watched(kube, copier)
    copier.gate = asyncio.Event()
    with pytest.raises(Retry) as pending:
        await reconciler(WEB)  # its copy goes on in the background
    # Meanwhile the watch delivers a newer version (a label): that one is the next pass's.
    kube.edit("Deployment", "demo", "web", lambda o: o["metadata"].update(labels={"a": "b"}))
    tracker.observe(DEPLOYMENT, "MODIFIED", kube.read_now("Deployment", "demo", "web"))
    copier.gate.set()
    await asyncio.gather(*pending.value.until)
    await reconciler(WEB)
    assert kube.workload_reads == [], "neither pass read the workload"
    assert len(kube.patches) == 1, "the newer version was patched at the first try"
    assert kube.get("Deployment", "demo", "web")["metadata"]["labels"] == {"a": "b"}


async def test_a_patch_refused_by_admission_is_a_clone_failed_event_and_a_retry(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1"}))
    kube.admission = lambda obj: "backup images refused"

    with pytest.raises(Retry) as caught:
        await reconciler(WEB)

    assert "backup images refused" in caught.value.reason
    assert caught.value.after is None, "backed off by the queue, not re-read at once"
    (event,) = kube.events
    assert (event.reason, event.warning) == (CLONE_FAILED, True)
    assert "backup images refused" in event.message
    assert containers(kube.get("Deployment", "demo", "web")) == {"app": "nginx:1"}


async def test_a_failed_copy_is_a_clone_failed_event_and_nothing_is_patched(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1", "side": "typo:1"}))
    copier.failing["typo:1"] = NotFoundError("manifest unknown")

    with pytest.raises(Retry) as caught:
        await reconciler(WEB)

    assert (caught.value.after or 0) > 0, "retried when the image's backoff allows"
    assert kube.patches == []
    (event,) = kube.events
    assert (event.reason, event.warning) == (CLONE_FAILED, True)
    assert "typo:1" in event.message
    assert "manifest unknown" in event.message


async def test_an_image_two_workloads_share_is_copied_once(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1"}))
    kube.add(deployment("api", {"app": "nginx:1"}))
    copier.gate = asyncio.Event()

    both = asyncio.gather(reconciler(WEB), reconciler(WorkloadKey("Deployment", "demo", "api")))
    await asyncio.sleep(0.01)  # both wait on the same copy
    copier.gate.set()
    await both

    assert copier.copied == [(pinned("nginx:1"), f"{BACKUP}/{pinned('nginx:1')}")]
    assert len(kube.patches) == 2
    for name in ("web", "api"):
        wanted = {"app": f"{BACKUP}/{pinned('nginx:1')}"}
        assert containers(kube.get("Deployment", "demo", name)) == wanted


async def test_a_slow_copy_frees_the_worker_and_the_workload_is_patched_once_it_is_done(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1"}))
    copier.gate = asyncio.Event()

    with pytest.raises(Retry) as caught:
        await reconciler(WEB)  # returns after COPY_PATIENCE; the copy goes on

    (copy,) = caught.value.until
    assert not copy.done()
    assert (kube.patches, kube.events) == ([], []), "nothing written before the copy is done"
    copier.gate.set()
    await copy
    await reconciler(WEB)  # what the queue does when the copy is done
    assert copier.copied == [(pinned("nginx:1"), f"{BACKUP}/{pinned('nginx:1')}")]
    assert len(kube.patches) == 1
    assert containers(kube.get("Deployment", "demo", "web")) == {
        "app": f"{BACKUP}/{pinned('nginx:1')}"
    }


async def test_a_workload_on_a_tag_being_copied_waits_for_that_copy_before_reading_pods(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1"}))
    kube.add(deployment("api", {"app": "nginx:1"}))
    copier.gate = asyncio.Event()
    with pytest.raises(Retry) as first:
        await reconciler(WEB)
    lists = len(kube.pod_lists)
    with pytest.raises(Retry) as second:
        await reconciler(WorkloadKey("Deployment", "demo", "api"))
    assert second.value.until == first.value.until, "the same copy is awaited"
    assert len(kube.pod_lists) == lists, "no pods read for a pass that could only wait"
    copier.gate.set()
    await asyncio.gather(*first.value.until)
    await reconciler(WorkloadKey("Deployment", "demo", "api"))
    assert len(kube.patches) == 1
    assert len(copier.copied) == 1


async def test_a_pending_copy_does_not_hold_the_only_worker(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    big = WorkloadKey("Deployment", "demo", "big")
    kube.add(deployment("big", {"app": "big:1"}))
    kube.add(deployment("web", {"app": f"{BACKUP}/{pinned('nginx:1')}"}))  # nothing to do
    copier.gate = asyncio.Event()
    queue: WorkQueue[WorkloadKey] = WorkQueue()
    done: list[str] = []

    async def worker(key: WorkloadKey) -> None:
        await reconciler(key)
        done.append(key.name)

    queue.add(big)
    run = asyncio.create_task(queue.run(worker, workers=1))
    queue.add(WEB)
    async with asyncio.timeout(5):
        while "web" not in done:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert kube.patches == [], "big waits for its copy, off the worker"
    copier.gate.set()
    async with asyncio.timeout(5):
        while "big" not in done:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert len(kube.patches) == 1
    assert containers(kube.get("Deployment", "demo", "big")) == {
        "app": f"{BACKUP}/{pinned('big:1')}"
    }
    await queue.shutdown(grace=1)
    await run


# --- the other kinds ----------------------------------------------------------------


def job(name: str, image: str, *, owner: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "demo"}
    if owner is not None:
        meta["ownerReferences"] = [
            {"apiVersion": "batch/v1", "kind": owner, "name": "x", "uid": "u", "controller": True}
        ]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}},
        "status": {"succeeded": 1},
    }


def bare_pod(name: str, image: str, *, phase: str = "Running") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo"},
        "spec": {"containers": [{"name": "app", "image": image}]},
        "status": {"phase": phase},
    }


@pytest.mark.parametrize("obj", [job("once", "nginx:1"), bare_pod("bare", "nginx:1")])
async def test_a_job_or_bare_pod_is_backed_up_and_never_patched(
    kube: FakeKube, copier: FakeCopier, obj: dict[str, Any]
) -> None:
    metrics = Metrics(health=Health())
    reconciler = Reconciler(kube=kube, copier=copier, settings=SETTINGS, metrics=metrics)
    stored = kube.add(obj)
    kind, name = obj["kind"], obj["metadata"]["name"]
    await reconciler(WorkloadKey(kind, "demo", name))

    assert copier.copied == [(pinned("nginx:1"), f"{BACKUP}/{pinned('nginx:1')}")]
    assert (kube.patches, kube.secrets) == ([], {})
    assert kube.get(kind, "demo", name) == stored
    (event,) = kube.events
    assert (event.reason, event.warning) == (IMAGES_BACKED_UP, False)
    backup = f"{BACKUP}/{pinned('nginx:1')}"
    assert event.message == f"nginx:1 → {backup} (a {kind} is backed up, never rewritten)"
    labels = {"kind": kind, "reason": "immutable_template"}
    assert (
        metrics.registry.get_sample_value("image_cloner_workloads_not_rewritten_total", labels)
        == 1.0
    )
    assert (
        metrics.registry.get_sample_value("image_cloner_workloads_rewritten_total", {"kind": kind})
        is None
    ), "no rewritten series for a kind that is never rewritten"


async def test_a_pending_bare_pod_waits(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(bare_pod("bare", "nginx:1", phase="Pending"))
    await reconciler(WorkloadKey("Pod", "demo", "bare"))
    assert (copier.copied, kube.events) == ([], [])


async def test_a_cronjob_is_rewritten_in_its_job_template(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    pod_spec = {"containers": [{"name": "app", "image": "nginx:1"}], "restartPolicy": "Never"}
    kube.add(
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "nightly", "namespace": "demo"},
            "spec": {
                "schedule": "0 3 * * *",
                "jobTemplate": {"spec": {"template": {"spec": pod_spec}}},
            },
        }
    )
    await reconciler(WorkloadKey("CronJob", "demo", "nightly"))

    obj = kube.get("CronJob", "demo", "nightly")
    template = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert template["containers"] == [{"name": "app", "image": f"{BACKUP}/{pinned('nginx:1')}"}]
    assert template["imagePullSecrets"] == [{"name": PULL_SECRET}]
    assert [e.reason for e in kube.events] == [IMAGES_CLONED]
