"""Smoke tests of the test bed itself: what the controller's e2e tests rely on really works.

Deployments become Available and roll out a changed image, DaemonSets become Ready on every fake
node, and a ServiceAccount token is a real identity: RBAC refuses it until a binding allows it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path

import pytest

from image_cloner.controller.kube import Kube
from image_cloner.controller.kube_errors import Forbidden
from image_cloner.workloads import DEPLOYMENT
from tests.support.testbed import NODE_NAMES, Testbed

IMAGE = "nginx:1.21.4-alpine"
NEW_IMAGE = "nginx:1.21.5-alpine"
ROLLOUT_TIMEOUT = "120s"


def rollout_status(testbed: Testbed, namespace: str, workload: str) -> None:
    """Wait for what `kubectl rollout status` calls complete (fails the test on timeout)."""
    testbed.kubectl(
        "rollout", "status", workload, "-n", namespace, f"--timeout={ROLLOUT_TIMEOUT}", timeout=150
    )


def get_json(testbed: Testbed, namespace: str, *what: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(
        testbed.kubectl("get", *what, "-n", namespace, "-o", "json").stdout
    )
    return result


def pod_images(testbed: Testbed, namespace: str, selector: str) -> list[tuple[str, str]]:
    """(node, image) of each pod that is Running and Ready."""
    jsonpath = (
        "{range .items[*]}{.spec.nodeName} {.spec.containers[0].image} {.status.phase} "
        '{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'
    )
    out = testbed.kubectl(
        "get", "pods", "-n", namespace, "-l", selector, "-o", f"jsonpath={jsonpath}"
    ).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()]
    return sorted(
        (node, image) for node, image, phase, ready in rows if (phase, ready) == ("Running", "True")
    )


def test_deployment_becomes_available(testbed: Testbed, namespace: str) -> None:
    testbed.kubectl(
        "create", "deployment", "web", f"--image={IMAGE}", "--replicas=2", "-n", namespace
    )

    available = ("--for=condition=Available", f"--timeout={ROLLOUT_TIMEOUT}")
    testbed.kubectl("wait", "deployment/web", *available, "-n", namespace, timeout=150)
    rollout_status(testbed, namespace, "deployment/web")

    status = get_json(testbed, namespace, "deployment", "web")["status"]
    assert isinstance(status, dict)
    assert (status["readyReplicas"], status["availableReplicas"]) == (2, 2)
    pods = pod_images(testbed, namespace, "app=web")
    assert [image for _, image in pods] == [IMAGE, IMAGE]
    assert {node for node, _ in pods} <= set(NODE_NAMES)


def test_changed_image_rolls_out(testbed: Testbed, namespace: str) -> None:
    testbed.kubectl(
        "create", "deployment", "web", f"--image={IMAGE}", "--replicas=2", "-n", namespace
    )
    rollout_status(testbed, namespace, "deployment/web")

    testbed.kubectl("set", "image", "deployment/web", f"nginx={NEW_IMAGE}", "-n", namespace)
    rollout_status(testbed, namespace, "deployment/web")

    deployment = get_json(testbed, namespace, "deployment", "web")
    assert isinstance(deployment["status"], dict)
    assert deployment["status"]["updatedReplicas"] == 2
    assert "unavailableReplicas" not in deployment["status"]
    # Once complete, the old pods are gone (KWOK deletes them at once) and both run the new image.
    deadline = time.monotonic() + 60
    while (pods := pod_images(testbed, namespace, "app=web")) and any(
        image != NEW_IMAGE for _, image in pods
    ):
        assert time.monotonic() < deadline, f"old pods remain: {pods}"
        time.sleep(0.5)
    assert [image for _, image in pods] == [NEW_IMAGE, NEW_IMAGE]


def test_daemonset_ready_on_every_node(testbed: Testbed, namespace: str) -> None:
    daemonset = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": namespace},
        "spec": {
            "selector": {"matchLabels": {"app": "agent"}},
            "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "agent", "image": IMAGE}]},
            },
        },
    }
    testbed.kubectl("apply", "-f", "-", input=json.dumps(daemonset))

    rollout_status(testbed, namespace, "daemonset/agent")

    nodes = testbed.kubectl(
        "get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"
    ).stdout.split()
    status = get_json(testbed, namespace, "daemonset", "agent")["status"]
    assert isinstance(status, dict)
    assert status["desiredNumberScheduled"] == status["numberReady"] == len(nodes) >= 2
    assert pod_images(testbed, namespace, "app=agent") == sorted((node, IMAGE) for node in nodes)


@pytest.fixture
def serviceaccount_kubeconfig(testbed: Testbed, namespace: str, tmp_path: Path) -> Path:
    testbed.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    return testbed.serviceaccount_kubeconfig(
        namespace, "reader", path=tmp_path / "reader.kubeconfig"
    )


async def can_list_deployments(reader: Kube) -> bool:
    try:
        await reader.list_workloads(DEPLOYMENT, namespace=None)
    except Forbidden:
        return False
    return True


async def test_serviceaccount_is_refused_until_bound(
    testbed: Testbed, namespace: str, serviceaccount_kubeconfig: Path
) -> None:
    # The controller's own client, on a token kubeconfig (the admin's is a client certificate).
    reader = await Kube.connect(kubeconfig=str(serviceaccount_kubeconfig))
    try:
        with pytest.raises(Forbidden) as refused:
            await reader.list_workloads(DEPLOYMENT, namespace=None)
        assert refused.value.status == 403
        assert f"system:serviceaccount:{namespace}:reader" in str(refused.value)

        binding = f"{namespace}-reader"
        subject = f"--serviceaccount={namespace}:reader"
        testbed.kubectl("create", "clusterrolebinding", binding, "--clusterrole=view", subject)
        try:
            # The authorizer sees the new binding through its informer, a moment later.
            for _attempt in range(150):
                if await can_list_deployments(reader):
                    break
                await asyncio.sleep(0.2)
            else:
                pytest.fail("still refused 30 s after the ClusterRoleBinding was created")
        finally:
            testbed.kubectl("delete", "clusterrolebinding", binding)
    finally:
        await reader.close()


def test_token_controller_fills_serviceaccount_secrets(testbed: Testbed, namespace: str) -> None:
    """kube-controller-manager signs legacy token Secrets with the key the apiserver trusts."""
    testbed.kubectl("create", "serviceaccount", "legacy", "-n", namespace)
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": "legacy-token",
            "namespace": namespace,
            "annotations": {"kubernetes.io/service-account.name": "legacy"},
        },
    }
    testbed.kubectl("apply", "-f", "-", input=json.dumps(secret))

    deadline = time.monotonic() + 30
    while not (data := get_json(testbed, namespace, "secret", "legacy-token").get("data")):
        assert time.monotonic() < deadline, "token controller did not fill the Secret"
        time.sleep(0.2)
    assert isinstance(data, dict)
    assert base64.b64decode(data["ca.crt"]) == testbed.ca_file.read_bytes()
    token = base64.b64decode(data["token"]).decode()
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": token},
    }
    reviewed = testbed.kubectl("create", "-f", "-", "-o", "json", input=json.dumps(review))
    user = json.loads(reviewed.stdout)["status"]["user"]
    assert user["username"] == f"system:serviceaccount:{namespace}:legacy"
