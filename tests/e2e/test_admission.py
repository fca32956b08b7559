"""Admission mode end to end: the test bed's apiserver calls our Pod webhook over TLS.

A controller of its own runs with `IMAGE_CLONER_MODE=admission` and serves the webhook on
loopback with the test CA's server certificate; a MutatingWebhookConfiguration scoped to
this module's namespace points the apiserver at `https://127.0.0.1:PORT/mutate-pods`.
The story: a Deployment kept as written by a simulated GitOps loop, a Job and a bare Pod
all end up with Pods that run the pinned backup (the first Pod is admitted unchanged and
its image queued; after the copy, new Pods are rewritten), while the workloads' specs stay
exactly as applied. Then the failure modes: the backup registry down (new Pods keep the
source) and the webhook process killed (Pods are still admitted, unchanged, in time).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.test_controller import (
    ANNOTATION,
    KUBECTL_POLL,
    PULL_SECRET,
    ROLLOUT,
    apply,
    backup_host,
    controller_env,
    events,
    get,
    unique,
    workload,
)
from tests.support.controller import ControllerProcess, wait_until
from tests.support.images import ImageSeeder
from tests.support.pki import TestPKI
from tests.support.processes import free_port
from tests.support.proxy import RegistryProxy
from tests.support.registries import RunningRegistry
from tests.support.testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]
ADMISSION_TIMEOUT = 2.0
"""The webhook's `timeoutSeconds`: what a Pod's admission may cost when we are down."""


@pytest.fixture(scope="module")
def webhook(
    *,
    tmp_path_factory: pytest.TempPathFactory,
    testbed: Testbed,
    sa_kubeconfig: Path,
    module_namespace: str,
    backup: RunningRegistry,
    upstream: RegistryProxy,
    test_pki: TestPKI,
) -> Iterator[ControllerProcess]:
    """The controller in admission mode, and the apiserver's webhook configuration for it."""
    certs = tmp_path_factory.mktemp("webhook-certs")
    # As a mounted kubernetes.io/tls Secret (cert-manager's) lays them out.
    shutil.copy(test_pki.server_cert, certs / "tls.crt")
    shutil.copy(test_pki.server_key, certs / "tls.key")
    port = free_port()
    env = controller_env(backup, upstream, test_pki, namespace=module_namespace)
    env |= {
        "IMAGE_CLONER_MODE": "admission",
        "IMAGE_CLONER_WEBHOOK_PORT": str(port),
        "IMAGE_CLONER_WEBHOOK_CERT_DIR": str(certs),
    }
    process = ControllerProcess(tmp_path_factory.mktemp("adm"), kubeconfig=sa_kubeconfig, env=env)
    process.start()
    process.wait_for_line("admission webhook serving", port=port)
    name = f"image-cloner-{module_namespace}"
    apply(testbed, webhook_configuration(name, port, test_pki.ca_cert, module_namespace))
    try:
        yield process
    finally:
        testbed.kubectl("delete", "mutatingwebhookconfiguration", name, check=False)
        killed = not process.running  # the last test kills it on purpose
        code = process.stop()
        assert killed or code == 0, f"exit {code} on SIGTERM:\n{process.log_text()[-3000:]}"


def webhook_configuration(name: str, port: int, ca_file: Path, namespace: str) -> dict[str, Any]:
    """examples/webhook.yml's webhook, at a loopback URL, for this module's namespace only."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": "pods.image-cloner.io",
                "clientConfig": {
                    "url": f"https://127.0.0.1:{port}/mutate-pods",
                    "caBundle": base64.b64encode(ca_file.read_bytes()).decode(),
                },
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "In",
                            "values": [namespace],
                        }
                    ]
                },
                "objectSelector": {
                    "matchExpressions": [
                        {"key": "image-cloner.io/skip", "operator": "NotIn", "values": ["true"]}
                    ]
                },
                "failurePolicy": "Ignore",
                "timeoutSeconds": int(ADMISSION_TIMEOUT),
                "sideEffects": "None",
                "admissionReviewVersions": ["v1"],
                "reinvocationPolicy": "IfNeeded",
            }
        ],
    }


class Admission:
    def __init__(
        self,
        *,
        testbed: Testbed,
        namespace: str,
        backup: RunningRegistry,
        source: RunningRegistry,
        seed: ImageSeeder,
        controller: ControllerProcess,
    ) -> None:
        self.testbed = testbed
        self.namespace = namespace
        self.backup = backup
        self.source = source
        self.seed = seed
        self.controller = controller
        self.host = backup_host(backup)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        listed = json.loads(
            self.testbed.kubectl(
                "get", "pods", "-n", self.namespace, "-l", selector, "-o", "json"
            ).stdout
        )
        items: list[dict[str, Any]] = listed["items"]
        return items

    def wait_for_pod(self, selector: str, image: str) -> dict[str, Any]:
        """A Running Pod matching `selector` whose (first) container names `image`."""

        def found() -> dict[str, Any] | None:
            return next(
                (
                    p
                    for p in self.pods(selector)
                    if p["spec"]["containers"][0]["image"] == image
                    and p.get("status", {}).get("phase") in ("Running", "Succeeded")
                ),
                None,
            )

        return wait_until(
            found, timeout=ROLLOUT, what=f"pod {selector} on {image}", interval=KUBECTL_POLL
        )

    def bare_pod(self, name: str, image: str, **labels: str) -> dict[str, Any]:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": self.namespace, "labels": labels},
            "spec": {"containers": [{"name": "main", "image": image}]},
        }
        apply(self.testbed, pod)
        return get(self.testbed, self.namespace, "Pod", name)


@pytest.fixture
def adm(
    *,
    testbed: Testbed,
    module_namespace: str,
    backup: RunningRegistry,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
    webhook: ControllerProcess,
) -> Admission:
    return Admission(
        testbed=testbed,
        namespace=module_namespace,
        backup=backup,
        source=open_registry,
        seed=seed_image,
        controller=webhook,
    )


def job(name: str, namespace: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "main", "image": image}],
                }
            }
        },
    }


def test_pods_of_a_gitops_deployment_a_job_and_a_bare_pod_run_the_pinned_backup(
    adm: Admission,
) -> None:
    testbed, ns = adm.testbed, adm.namespace
    name = unique("adm")
    seeded = adm.seed(adm.source, f"library/{name}:1", "index", seed=name)
    image = f"{name}:1"
    pinned = f"{adm.host}/{name}:1@{seeded.digest}"
    manifest = workload("Deployment", "web", ns, {"web": image})

    # The first Pod meets an image nobody has copied: admitted as written, image queued.
    apply(testbed, manifest)
    first = adm.wait_for_pod("app=web", image)
    assert ANNOTATION not in first["metadata"].get("annotations", {})
    adm.controller.wait_for_line("backup verified for admission", image=image)

    # A GitOps loop re-applies the manifest as written, and Pods come and go meanwhile.
    def rewritten_pod() -> dict[str, Any] | None:
        apply(testbed, manifest)
        pods = adm.pods("app=web")
        hit = next((p for p in pods if p["spec"]["containers"][0]["image"] == pinned), None)
        if hit is None:
            testbed.kubectl("delete", "pods", "-n", ns, "-l", "app=web", "--wait=false")
        return hit

    pod = wait_until(rewritten_pod, timeout=ROLLOUT, what="a rewritten pod", interval=2.0)
    assert json.loads(pod["metadata"]["annotations"][ANNOTATION]) == {"web": image}
    assert {"name": PULL_SECRET} in pod["spec"]["imagePullSecrets"]
    adm.wait_for_pod("app=web", pinned)
    deployment = get(testbed, ns, "Deployment", "web")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
    assert deployment["metadata"]["generation"] == 1  # no drift: the spec never changed
    assert ANNOTATION not in deployment["metadata"].get("annotations", {})
    owner = pod["metadata"]["ownerReferences"][0]["name"]
    event = wait_until(
        lambda: next(iter(events(testbed, ns, owner, "PodImagesRewritten")), None),
        timeout=30,
        what="PodImagesRewritten on the ReplicaSet",
        interval=KUBECTL_POLL,
    )
    assert pinned in event["message"]
    assert pod["metadata"]["name"] not in event["message"]

    # A Job and a bare Pod: their Pods are rewritten at once, their specs stay as written.
    apply(testbed, job("batch", ns, image))
    adm.wait_for_pod("job-name=batch", pinned)
    assert (
        get(testbed, ns, "Job", "batch")["spec"]["template"]["spec"]["containers"][0]["image"]
        == image
    )
    bare = adm.bare_pod("bare", image)
    assert bare["spec"]["containers"][0]["image"] == pinned
    assert {"name": PULL_SECRET} in bare["spec"]["imagePullSecrets"]
    # The opt-out label keeps a Pod as written.
    skipped = adm.bare_pod("skipped", image, **{"image-cloner.io/skip": "true"})
    assert skipped["spec"]["containers"][0]["image"] == image


def test_a_backup_registry_that_is_down_is_not_used_for_new_pods(adm: Admission) -> None:
    name = unique("down")
    adm.seed(adm.source, f"library/{name}:1", "single", seed=name)
    image = f"{name}:1"
    adm.bare_pod("warm", image)
    adm.controller.wait_for_line("backup verified for admission", image=image)
    assert adm.bare_pod("warm-2", image)["spec"]["containers"][0]["image"].startswith(adm.host)
    adm.backup.stop()
    try:
        adm.controller.wait_for_line("backup registry check failed", timeout=60)
        pod = adm.bare_pod("during-outage", image)
        assert pod["spec"]["containers"][0]["image"] == image
    finally:
        adm.backup.start()


def test_a_killed_webhook_admits_pods_unchanged_within_the_timeout(adm: Admission) -> None:
    name = unique("killed")
    adm.seed(adm.source, f"library/{name}:1", "single", seed=name)
    adm.controller.kill()
    started = time.monotonic()
    pod = adm.bare_pod("while-down", f"{name}:1")
    assert time.monotonic() - started < ADMISSION_TIMEOUT + 5  # kubectl is a process too
    assert pod["spec"]["containers"][0]["image"] == f"{name}:1"
    assert ANNOTATION not in pod["metadata"].get("annotations", {})


def test_the_examples_and_the_chart_install_the_webhook_configuration(
    testbed: Testbed, sa_kubeconfig: Path, module_namespace: str, test_pki: TestPKI, tmp_path: Path
) -> None:
    # Server-side dry runs: the apiserver validates everything, and no webhook pointing at a
    # Service nobody serves on the test bed slows down the other tests' Pods.
    testbed.kubectl("apply", "--dry-run=server", "-f", str(ROOT / "examples" / "webhook.yml"))
    testbed.kubectl("apply", "--dry-run=server", "-f", str(ROOT / "examples" / "image-cloner.yml"))
    ca = base64.b64encode(test_pki.ca_cert.read_bytes()).decode()
    rendered = subprocess.run(
        [
            str(testbed.bin_dir / "helm"),
            "template",
            "adm",
            str(ROOT / "charts" / "image-cloner"),
            "--namespace",
            module_namespace,
            "--set",
            "registry=localhost:5000",
            "--set",
            "mode=both",
            "--set",
            f"webhook.caBundle={ca}",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert rendered.returncode == 0, rendered.stderr
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered.stdout)
    testbed.kubectl("apply", "--dry-run=server", "-f", str(manifest))
    docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    hook = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] == ADMISSION_TIMEOUT
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded["operator"] == "NotIn"
    assert set(excluded["values"]) == {"kube-system", module_namespace}
