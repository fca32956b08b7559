"""The controller's own Kubernetes calls against the real apiserver, with the examples' RBAC.

`controller/kube.py` is the whole list of what the controller does to a cluster beyond
watching, so each call is checked here as the ServiceAccount the install gives it: the
guarded JSON patch refuses a stale object, repeated Events count up, the pull Secret is
created, left alone, updated, and never taken from its owner; and the watch-vs-list check
of `WatchTracker` finds a workload the watch never showed, and forgets workloads that
were deleted while the watch did not say so (kopf relists after a broken stream but sends
no DELETED for what vanished meanwhile); Pods are listed bare only (`POD.selector`).
"""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest

from image_cloner.controller.kube import Kube
from image_cloner.controller.kube_errors import Conflict, Invalid
from image_cloner.controller.queue import WorkQueue
from image_cloner.controller.watch import WatchTracker
from image_cloner.health import Health
from image_cloner.oci.options import Credentials
from image_cloner.settings import Settings
from image_cloner.workloads import DEPLOYMENT, POD, WorkloadKey, build_patch
from tests.support.testbed import Testbed

SECRET = "image-cloner-pull"
REGISTRY = "localhost:5000"


def create_deployment(testbed: Testbed, namespace: str, name: str) -> None:
    testbed.kubectl("create", "deployment", name, "--image=nginx:1.21.4-alpine", "-n", namespace)


def cluster_events(testbed: Testbed, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = json.loads(testbed.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    return [e for e in items["items"] if e.get("reason") == reason]


async def read_then_edit(kube: Kube, testbed: Testbed, namespace: str) -> dict[str, Any]:
    """A Deployment `web` as we read it, then labelled by a user: what we hold is stale."""
    create_deployment(testbed, namespace, "web")
    stale = await kube.read_workload(DEPLOYMENT, namespace, "web")
    assert stale is not None
    testbed.kubectl("label", "deployment/web", "edited=yes", "-n", namespace)
    return stale


async def patch_fresh(
    kube: Kube, namespace: str, name: str, rewrites: dict[str, str]
) -> dict[str, Any]:
    """Read, then patch what was read, as the controller does: the Deployment controller may
    update the new object's status in between, so a failed `test` means read again."""
    for _ in range(5):
        fresh = await kube.read_workload(DEPLOYMENT, namespace, name)
        assert fresh is not None
        try:
            return await kube.patch_workload(
                DEPLOYMENT, namespace, name, build_patch(fresh, rewrites)
            )
        except Invalid as e:
            if not e.patch_did_not_apply:
                raise
    raise AssertionError(f"{name} changed under every one of 5 fresh patches")


async def test_patch_guarded_by_resource_version_refuses_a_stale_object(
    kube: Kube, testbed: Testbed, namespace: str
) -> None:
    stale = await read_then_edit(kube, testbed, namespace)
    patch = build_patch(stale, {"nginx": f"{REGISTRY}/nginx:1.21.4-alpine"})
    with pytest.raises(Invalid) as caught:
        await kube.patch_workload(DEPLOYMENT, namespace, "web", patch)
    # What the apiserver answers for a failed `test` op (docs/controller.md): 422 Invalid,
    # naming no object, no causes, and a generic message.
    assert (caught.value.status, caught.value.reason) == (422, "Invalid")
    assert (caught.value.details.get("name"), caught.value.causes) in {(None, ()), ("", ())}
    assert caught.value.patch_did_not_apply
    assert caught.value.message == "the server rejected our request due to an error in our request"

    patched = await patch_fresh(kube, namespace, "web", {"nginx": f"{REGISTRY}/nginx:x"})
    assert patched["metadata"]["labels"]["edited"] == "yes"
    assert patched["spec"]["template"]["spec"]["containers"][0]["image"] == f"{REGISTRY}/nginx:x"
    assert await kube.read_workload(DEPLOYMENT, namespace, "gone") is None


async def test_a_write_with_a_stale_resource_version_is_a_conflict(
    kube: Kube, testbed: Testbed, namespace: str
) -> None:
    stale = await read_then_edit(kube, testbed, namespace)
    # A patch that carries a resourceVersion is checked like an update: 409 Conflict.
    version = stale["metadata"]["resourceVersion"]
    patch = [
        {"op": "replace", "path": "/metadata/resourceVersion", "value": version},
        {"op": "add", "path": "/metadata/labels/touched", "value": "yes"},
    ]
    with pytest.raises(Conflict) as caught:
        await kube.patch_workload(DEPLOYMENT, namespace, "web", patch)
    assert (caught.value.status, caught.value.reason) == (409, "Conflict")
    assert caught.value.details.get("name") == "web"
    assert "the object has been modified" in caught.value.message


async def test_repeated_events_count_up_instead_of_piling_up(
    kube: Kube, testbed: Testbed, namespace: str
) -> None:
    create_deployment(testbed, namespace, "web")
    obj = await kube.read_workload(DEPLOYMENT, namespace, "web")
    assert obj is not None
    for _ in range(3):
        await kube.post_event(obj, reason="CloneFailed", message="registry down", warning=True)
    await kube.post_event(obj, reason="ImagesCloned", message="a → b")

    (failed,) = cluster_events(testbed, namespace, "CloneFailed")
    assert (failed["type"], failed["count"], failed["message"]) == ("Warning", 3, "registry down")
    assert failed["involvedObject"]["uid"] == obj["metadata"]["uid"]
    assert failed["involvedObject"]["kind"] == "Deployment"
    assert failed["reportingComponent"] == "image-cloner"
    (cloned,) = cluster_events(testbed, namespace, "ImagesCloned")
    assert (cloned["type"], cloned["count"]) == ("Normal", 1)


async def test_pull_secret_is_created_kept_updated_and_never_taken_over(
    kube: Kube, testbed: Testbed, namespace: str
) -> None:
    login = Credentials("robot", "first-password")
    ensure = kube.ensure_pull_secret
    assert await ensure(namespace, SECRET, registry_host=REGISTRY, credentials=login) == "created"
    assert await ensure(namespace, SECRET, registry_host=REGISTRY, credentials=login) == "unchanged"
    rotated = Credentials("robot", "second-password")
    assert await ensure(namespace, SECRET, registry_host=REGISTRY, credentials=rotated) == "updated"

    secret = json.loads(
        testbed.kubectl("get", "secret", SECRET, "-n", namespace, "-o", "json").stdout
    )
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    config = json.loads(base64.b64decode(secret["data"][".dockerconfigjson"]))
    assert config["auths"][REGISTRY]["password"] == "second-password"
    assert base64.b64decode(config["auths"][REGISTRY]["auth"]) == b"robot:second-password"

    # A Secret of that name the user made is theirs: read, never changed.
    other = f"{namespace}-user"
    testbed.kubectl("create", "namespace", other)
    try:
        testbed.kubectl("create", "secret", "generic", SECRET, "--from-literal=k=v", "-n", other)
        outcome = await ensure(other, SECRET, registry_host=REGISTRY, credentials=login)
        assert outcome == "not-managed"
        kept = json.loads(
            testbed.kubectl("get", "secret", SECRET, "-n", other, "-o", "json").stdout
        )
        assert kept["data"] == {"k": base64.b64encode(b"v").decode()}
    finally:
        testbed.kubectl("delete", "namespace", other, "--wait=false", check=False)


async def test_resync_finds_what_the_watch_did_not_show(
    kube: Kube, testbed: Testbed, namespace: str
) -> None:
    create_deployment(testbed, namespace, "web")
    testbed.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s")
    settings = Settings.from_env(
        {"IMAGE_CLONER_REGISTRY": REGISTRY, "IMAGE_CLONER_NAMESPACE": namespace}
    )
    now = [0.0]
    health = Health(staleness=60, clock=lambda: now[0])
    queue: WorkQueue[WorkloadKey] = WorkQueue()
    tracker = WatchTracker(queue=queue, health=health, kube=kube, settings=settings)

    # Nothing seen on the watch: the listing shows the watch is behind; the Ready one is queued.
    assert await tracker.resync(DEPLOYMENT) == 1
    assert queue.depth == 1
    assert "Deployment watch has had no event or listing yet" in health.problems()

    # Once the watch has delivered the current version, a listing proves the stream current.
    current = await kube.read_workload(DEPLOYMENT, namespace, "web")
    assert current is not None
    tracker.observe(DEPLOYMENT, "MODIFIED", current)
    now[0] = 100.0
    assert health.watch_age("Deployment") == 100.0
    assert await tracker.resync(DEPLOYMENT) == 0
    assert health.watch_age("Deployment") == 0.0


async def test_the_watch_tracker_forgets_workloads_deleted_behind_its_back(
    kube: Kube, testbed: Testbed, namespace: str
) -> None:
    for name in ("gone", "kept"):
        testbed.kubectl("create", "deployment", name, "--image=nginx:1", "-n", namespace)
    settings = Settings.from_env(
        {"IMAGE_CLONER_REGISTRY": "localhost:5000", "IMAGE_CLONER_NAMESPACE": namespace}
    )
    queue: WorkQueue[WorkloadKey] = WorkQueue()
    tracker = WatchTracker(queue=queue, health=Health(), kube=kube, settings=settings)
    for name in ("gone", "kept"):
        current = await kube.read_workload(DEPLOYMENT, namespace, name)
        assert current is not None
        tracker.observe(DEPLOYMENT, None, current)

    # Deleted while the stream was down: the relist that follows sends no DELETED event.
    testbed.kubectl("delete", "deployment", "gone", "-n", namespace)
    await tracker.resync(DEPLOYMENT)

    assert WorkloadKey("Deployment", namespace, "kept") in tracker
    assert WorkloadKey("Deployment", namespace, "gone") not in tracker
    assert len(tracker) == 1


async def test_pods_are_listed_bare_only_the_controllers_pods_stay_on_the_apiserver(
    kube: Kube, testbed: Testbed, namespace: str
) -> None:
    """POD.selector, as the watch and the resync send it: a Deployment's, StatefulSet's,
    DaemonSet's and Job's pods are filtered by the apiserver; a bare Pod is not."""
    image = "nginx:1.21.4-alpine"
    create_deployment(testbed, namespace, "web")
    labels = {"app": "db"}
    pod_spec: dict[str, Any] = {"containers": [{"name": "c", "image": image}]}
    template = {"metadata": {"labels": labels}, "spec": pod_spec}
    manifests = [
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", "namespace": namespace},
            "spec": {
                "serviceName": "db",
                "selector": {"matchLabels": labels},
                "template": template,
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": "agent", "namespace": namespace},
            "spec": {"selector": {"matchLabels": labels}, "template": template},
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once", "namespace": namespace},
            "spec": {"template": {"spec": {**pod_spec, "restartPolicy": "Never"}}},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "bare", "namespace": namespace, "labels": {"app": "bare"}},
            "spec": pod_spec,
        },
    ]
    testbed.kubectl(
        "apply",
        "-f",
        "-",
        input=json.dumps({"kind": "List", "apiVersion": "v1", "items": manifests}),
    )

    def owners() -> set[str]:
        listed = json.loads(testbed.kubectl("get", "pods", "-n", namespace, "-o", "json").stdout)
        return {
            ref["kind"]
            for pod in listed["items"]
            for ref in pod["metadata"].get("ownerReferences", [])
        }

    wanted = {"ReplicaSet", "StatefulSet", "DaemonSet", "Job"}
    for _ in range(120):
        if owners() >= wanted:
            break
        await asyncio.sleep(0.5)
    assert owners() >= wanted, "every controller has made a pod"

    listed = await kube.list_workloads(POD, namespace=namespace)
    assert [p["metadata"]["name"] for p in listed] == ["bare"]
    versions = await kube.workload_versions(POD, namespace=namespace)
    assert list(versions) == [(namespace, "bare")]
