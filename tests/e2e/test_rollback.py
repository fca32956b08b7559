"""A rewrite whose rollout fails is undone, on the test bed (`controller.rollback`).

KWOK makes every scheduled pod Ready at once, so the new revision's pods are made to fail
the way they would on a real node: the Deployments run on a node of this module's own,
which is tainted `NoSchedule` after their first rollout and before the controller starts,
so the rewrite's new pods stay Pending; on one of them the test reports `ErrImagePull` in
the pod's status subresource, as a kubelet would. That one is rolled back for the pull
error, the other when `IMAGE_CLONER_ROLLOUT_TIMEOUT` runs out. Each goes back to its
original image, gets the marker and a `RewriteRolledBack` Warning, and is not rewritten
again.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_controller import (
    KUBECTL_POLL,
    ROLLOUT,
    apply,
    get,
    images,
    rollout,
    wait_for_event,
    workload,
)
from tests.support.controller import CONTROLLER_NAMESPACE, ControllerProcess, wait_until
from tests.support.images import ImageSeeder
from tests.support.pki import TestPKI
from tests.support.registries import RunningRegistry
from tests.support.testbed import Testbed

MARKER = "image-cloner.io/rewrite-rolled-back"
TIMEOUT = 20
"""`IMAGE_CLONER_ROLLOUT_TIMEOUT` here: above the pull errors' 10 s grace, so the pull
error, reported within a few seconds of the rewrite, is what undoes the first one."""


def pods_on(testbed: Testbed, namespace: str, app: str) -> list[dict[str, Any]]:
    out = testbed.kubectl("get", "pods", "-n", namespace, "-l", f"app={app}", "-o", "json")
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


def report_pull_error(testbed: Testbed, namespace: str, pod: dict[str, Any]) -> None:
    """What a kubelet writes when it cannot pull the image of a pod's container."""
    (container,) = pod["spec"]["containers"]
    status = {
        "name": container["name"],
        "image": container["image"],
        "imageID": "",
        "ready": False,
        "restartCount": 0,
        "state": {"waiting": {"reason": "ErrImagePull", "message": "401 Unauthorized"}},
    }
    patch = json.dumps({"status": {"containerStatuses": [status]}})
    name = pod["metadata"]["name"]
    testbed.kubectl(
        "patch", "pod", name, "-n", namespace, "--subresource=status", "--type=merge", "-p", patch
    )


@pytest.fixture(scope="module")
def node(testbed: Testbed) -> Iterator[str]:
    name = f"rollback-{uuid.uuid4().hex[:6]}"
    capacity = {"cpu": "8", "memory": "16Gi", "pods": "110"}
    manifest: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "type": "kwok"},
        },
        "status": {"allocatable": capacity, "capacity": capacity},
    }
    apply(testbed, manifest)
    try:
        yield name
    finally:
        testbed.kubectl("delete", "node", name, "--wait=false", check=False)


def test_failing_rollouts_are_rolled_back_and_not_rewritten_again(
    *,
    testbed: Testbed,
    node: str,
    sa_kubeconfig: Path,
    auth_registry: RunningRegistry,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
    test_pki: TestPKI,
    tmp_path: Path,
) -> None:
    namespace = f"rollback-{uuid.uuid4().hex[:6]}"
    testbed.create_namespace(namespace)
    image = f"rollback-{uuid.uuid4().hex[:6]}"
    seed_image(open_registry, f"{image}:1", "single", seed=image)
    original = open_registry.ref(f"{image}:1")
    manifests = [
        workload("Deployment", app, namespace, {"app": original}) for app in ("pull", "slow")
    ]
    for manifest in manifests:
        manifest["spec"]["template"]["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
    backup_host = f"localhost:{auth_registry.port}"
    env = {
        "IMAGE_CLONER_REGISTRY": backup_host,
        "IMAGE_CLONER_USER": str(auth_registry.username),
        "IMAGE_CLONER_PASS": str(auth_registry.password),
        "IMAGE_CLONER_CA_FILE": str(test_pki.ca_cert),
        "IMAGE_CLONER_NAMESPACE": namespace,
        "IMAGE_CLONER_POD_NAMESPACE": CONTROLLER_NAMESPACE,
        "IMAGE_CLONER_ROLLOUT_TIMEOUT": str(TIMEOUT),
    }
    try:
        apply(testbed, *manifests)
        for app in ("pull", "slow"):
            rollout(testbed, namespace, "Deployment", app)
        # From here on, the new revision's pods stay Pending, as pods that cannot start.
        testbed.kubectl("taint", "node", node, "rollback=yes:NoSchedule")
        with ControllerProcess(tmp_path, kubeconfig=sa_kubeconfig, env=env):

            def new_pod() -> dict[str, Any] | None:
                return next(
                    (
                        p
                        for p in pods_on(testbed, namespace, "pull")
                        if p["spec"]["containers"][0]["image"].startswith(f"{backup_host}/")
                    ),
                    None,
                )

            pending = wait_until(
                new_pod, timeout=ROLLOUT, what="the rewrite's new pod", interval=KUBECTL_POLL
            )
            report_pull_error(testbed, namespace, pending)

            for app, reason in (("pull", "ErrImagePull"), ("slow", f"not complete {TIMEOUT}s")):
                event = wait_for_event(testbed, namespace, app, "RewriteRolledBack")
                assert event["type"] == "Warning"
                assert reason in event["message"], event["message"]
                obj = get(testbed, namespace, "Deployment", app)
                assert images(obj) == {"app": original}
                assert reason in obj["metadata"]["annotations"][MARKER]
            generations = {
                a: get(testbed, namespace, "Deployment", a)["metadata"]["generation"]
                for a in ("pull", "slow")
            }
            time.sleep(12)  # longer than a recheck: a controller that rewrites again would
            for app, generation in generations.items():
                obj = get(testbed, namespace, "Deployment", app)
                assert obj["metadata"]["generation"] == generation, app
                assert images(obj) == {"app": original}
    finally:
        testbed.kubectl("taint", "node", node, "rollback-", check=False)
        testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
