"""Undoing a rewrite whose rollout fails, on a fake Kubernetes API (`controller.rollback`).

What a user sees is asserted on the fake's state: the workload's images and annotations,
the patches applied, the Events posted. tests/e2e/test_rollback.py proves it on the test bed.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from image_cloner.controller.queue import Retry, WorkQueue
from image_cloner.controller.reconcile import Reconciler
from image_cloner.controller.rollback import RECHECK, REWRITE_ROLLED_BACK
from image_cloner.controller.watch import WatchTracker
from image_cloner.health import Health
from image_cloner.metrics import Metrics
from image_cloner.policy import ROLLED_BACK_ANNOTATION
from image_cloner.settings import Settings
from image_cloner.workloads import DEPLOYMENT, ORIGINAL_IMAGES_ANNOTATION, WorkloadKey
from tests.support.fake_copier import FakeCopier
from tests.support.fake_kube import FakeKube, deployment

BACKUP = "backup.example:5000"
SETTINGS = Settings.from_env(
    {"IMAGE_CLONER_REGISTRY": BACKUP, "IMAGE_CLONER_USER": "robot", "IMAGE_CLONER_PASS": "pw"}
)
PULL_SECRET = "image-cloner-pull"
COPY = f"{BACKUP}/library/nginx:1@sha256:" + "a" * 64
WEB = WorkloadKey("Deployment", "demo", "web")


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def reconciler(kube: FakeKube) -> Reconciler:
    metrics = Metrics(health=Health())
    return Reconciler(kube=kube, copier=FakeCopier(), settings=SETTINGS, metrics=metrics)


def rewritten(*, seconds_ago: float, ready: bool = False) -> dict[str, Any]:
    """A Deployment we rewrote `seconds_ago`, its rollout onto the backup not complete."""
    obj = deployment(
        "web",
        {"app": COPY},
        ready=ready,
        annotations={ORIGINAL_IMAGES_ANNOTATION: json.dumps({"app": "nginx:1"})},
    )
    obj["spec"]["template"]["spec"]["imagePullSecrets"] = [{"name": PULL_SECRET}]
    obj["status"]["conditions"] = [{"type": "Progressing", "reason": "ReplicaSetUpdated"}]
    when = (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%dT%H:%M:%SZ")
    obj["metadata"]["managedFields"] = [
        {"manager": "image-cloner", "operation": "Update", "time": when}
    ]
    return obj


def failing_pod(image: str = COPY) -> dict[str, Any]:
    waiting = {"waiting": {"reason": "ErrImagePull", "message": "401 Unauthorized"}}
    return {
        "metadata": {"name": "web-new", "labels": {"app": "web"}},
        "spec": {"containers": [{"name": "app", "image": image}]},
        "status": {"containerStatuses": [{"name": "app", "image": image, "state": waiting}]},
    }


def template(obj: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = obj["spec"]["template"]["spec"]
    return spec


async def test_pull_errors_on_the_new_pods_restore_the_originals_once(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    kube.add(rewritten(seconds_ago=60))
    kube.pods["demo"] = [failing_pod()]

    await reconciler(WEB)

    obj = kube.get("Deployment", "demo", "web")
    assert template(obj) == {"containers": [{"name": "app", "image": "nginx:1"}]}
    annotations = obj["metadata"]["annotations"]
    assert ORIGINAL_IMAGES_ANNOTATION not in annotations
    assert annotations[ROLLED_BACK_ANNOTATION].startswith(f"ErrImagePull for {COPY}")
    (patch,) = kube.patches
    assert (patch[0]["op"], patch[0]["path"]) == ("test", "/metadata/resourceVersion")
    assert {"op": "test", "path": "/spec/template/spec/containers/0/image", "value": COPY} in patch
    (event,) = kube.events
    assert (event.reason, event.warning) == (REWRITE_ROLLED_BACK, True)
    assert "ErrImagePull" in event.message
    assert "restored app: nginx:1" in event.message

    done = [{"type": "Progressing", "reason": "NewReplicaSetAvailable"}]
    kube.edit(
        "Deployment",
        "demo",
        "web",
        lambda o: o["status"].update(availableReplicas=1, conditions=done),
    )
    await reconciler(WEB)  # rolled out on the originals: copy-only from now on
    assert len(kube.patches) == 1
    assert template(kube.get("Deployment", "demo", "web"))["containers"][0]["image"] == "nginx:1"


async def test_a_rollout_under_way_is_looked_at_again_and_left_alone(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    kube.add(rewritten(seconds_ago=30))
    kube.pods["demo"] = [failing_pod("nginx:1")]  # an old pod's trouble is not ours

    with pytest.raises(Retry) as retry:
        await reconciler(WEB)

    assert retry.value.after == RECHECK
    assert (kube.patches, kube.events) == ([], [])


async def test_within_the_grace_the_pods_are_not_even_listed(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    """A pull error younger than PULL_ERROR_GRACE does not count, so a follower reads no
    pods before it: most rollouts are done by then (one request less per look)."""
    kube.add(rewritten(seconds_ago=2))
    kube.pods["demo"] = [failing_pod()]
    with pytest.raises(Retry):
        await reconciler(WEB)
    assert (kube.pod_lists, kube.patches) == ([], [])
    kube.edit(
        "Deployment",
        "demo",
        "web",
        lambda o: o["metadata"].update(rewritten(seconds_ago=60)["metadata"]),
    )
    await reconciler(WEB)
    assert kube.pod_lists == [("demo", "app=web")]
    assert len(kube.patches) == 1, "past the grace, the same pull error undoes the rewrite"


async def test_a_rollout_past_the_timeout_is_undone(kube: FakeKube, reconciler: Reconciler) -> None:
    kube.add(rewritten(seconds_ago=SETTINGS.rollout_timeout + 5))

    await reconciler(WEB)

    obj = kube.get("Deployment", "demo", "web")
    assert template(obj)["containers"][0]["image"] == "nginx:1"
    assert (
        "not complete 600s after the rewrite"
        in obj["metadata"]["annotations"][ROLLED_BACK_ANNOTATION]
    )


async def test_a_change_meanwhile_is_read_again_and_nothing_is_overwritten(
    kube: FakeKube, reconciler: Reconciler
) -> None:
    kube.add(rewritten(seconds_ago=60))
    kube.pods["demo"] = [failing_pod()]

    def user_sets_an_image() -> None:
        kube.before_patch = None
        kube.edit(
            "Deployment",
            "demo",
            "web",
            lambda o: template(o)["containers"][0].update(image="nginx:2"),
        )

    kube.before_patch = user_sets_an_image

    await reconciler(WEB)

    obj = kube.get("Deployment", "demo", "web")
    assert template(obj)["containers"][0]["image"] == "nginx:2"
    assert ROLLED_BACK_ANNOTATION not in obj["metadata"]["annotations"]
    assert (kube.patches, kube.events) == ([], [])


def test_the_watch_enqueues_a_not_ready_workload_on_our_backups_only() -> None:
    kube = FakeKube()
    queue: WorkQueue[WorkloadKey] = WorkQueue()
    tracker = WatchTracker(queue=queue, health=Health(), kube=kube, settings=SETTINGS)
    tracker.observe(
        DEPLOYMENT, "ADDED", kube.add(deployment("other", {"app": "nginx:1"}, ready=False))
    )
    assert queue.depth == 0
    tracker.observe(DEPLOYMENT, "MODIFIED", kube.add(rewritten(seconds_ago=1)))
    assert queue.depth == 1
