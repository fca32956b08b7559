"""What becomes of the rewrite when the patch cannot land, on the real apiserver.

- A patch the apiserver refuses for what it is (an admission policy: 422 "Invalid", like a
  failed JSON-patch `test`, but naming the object) is a failure to report, not a concurrent
  edit to re-read: the user gets a `CloneFailed` Event naming the refusal.
- A workload deleted while its images are copied is simply gone: no Warning Event about a
  patch that could not find it, no retry.

The reconciler and the tracker run in-process as the ServiceAccount of examples/rbac*.yml,
against a real registry and the test bed.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from image_cloner.controller.kube import Kube
from image_cloner.controller.kube_errors import Invalid
from image_cloner.controller.queue import Retry
from image_cloner.controller.reconcile import CLONE_FAILED, Reconciler, changed_meanwhile
from image_cloner.health import Health
from image_cloner.metrics import Metrics
from image_cloner.oci.copying import Copier, CopyResult, ProgressListener
from image_cloner.oci.references import Reference
from image_cloner.settings import Settings
from image_cloner.workloads import DEPLOYMENT, WorkloadKey, build_patch
from tests.support.controller import wait_until
from tests.support.images import ImageSeeder
from tests.support.registries import RunningRegistry
from tests.support.testbed import Testbed


async def reconcile(reconciler: Reconciler, key: WorkloadKey) -> None:
    """One reconcile as the queue runs it: a pass whose copies outlast `COPY_PATIENCE` comes
    back once they are done (`Retry.until`), however slow the machine; any other `Retry`
    is raised."""
    for _ in range(3):
        try:
            await reconciler(key)
            return
        except Retry as later:
            if not later.until:
                raise
            await asyncio.wait(later.until)
    raise AssertionError(f"{key}: its images still copying after 3 passes")


def workload(testbed: Testbed, namespace: str, name: str) -> dict[str, Any]:
    out = testbed.kubectl("get", "deployment", name, "-n", namespace, "-o", "json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


def cluster_events(testbed: Testbed, namespace: str, reason: str) -> list[dict[str, Any]]:
    items = json.loads(testbed.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    return [e for e in items["items"] if e.get("reason") == reason]


@pytest.fixture
def deny_images(testbed: Testbed) -> Iterator[Any]:
    """`deny_images(namespace, prefix)`: a ValidatingAdmissionPolicy refusing those images."""
    created: list[str] = []

    def deny(namespace: str, prefix: str) -> None:
        name = f"review-deny-{uuid.uuid4().hex[:6]}"
        created.append(name)
        expression = f"object.spec.template.spec.containers.all(c, !c.image.startsWith('{prefix}'))"
        policy = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {
                "failurePolicy": "Fail",
                "matchConstraints": {
                    "resourceRules": [
                        {
                            "apiGroups": ["apps"],
                            "apiVersions": ["v1"],
                            "operations": ["UPDATE"],
                            "resources": ["deployments"],
                        }
                    ]
                },
                "validations": [{"expression": expression, "message": "backup images refused"}],
            },
        }
        binding = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {
                "policyName": name,
                "validationActions": ["Deny"],
                "matchResources": {
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}
                },
            },
        }
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": [policy, binding]})
        testbed.kubectl("apply", "-f", "-", input=manifest)

    yield deny
    for name in created:
        testbed.kubectl(
            "delete",
            "validatingadmissionpolicybinding,validatingadmissionpolicy",
            name,
            "--ignore-not-found",
            check=False,
        )


def ready_web_deployment(
    testbed: Testbed, namespace: str, registry: RunningRegistry, seed_image: ImageSeeder
) -> tuple[str, str]:
    """A fresh image in `registry` and a Ready Deployment `web` running it: (suffix, image)."""
    suffix = uuid.uuid4().hex[:6]
    source = f"{registry.host}/review-{suffix}/app:1"
    seed_image(registry, f"review-{suffix}/app:1", "index")
    testbed.kubectl("create", "deployment", "web", f"--image={source}", "-n", namespace)
    testbed.kubectl("rollout", "status", "deployment/web", "-n", namespace, "--timeout=90s")
    return suffix, source


async def test_a_patch_refused_by_an_admission_policy_becomes_a_clone_failed_event(
    *,
    kube: Kube,
    testbed: Testbed,
    namespace: str,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
    deny_images: Any,
) -> None:
    suffix, source = ready_web_deployment(testbed, namespace, open_registry, seed_image)
    backup = f"{open_registry.host}/backup-{suffix}"

    deny_images(namespace, f"{backup}/")

    def policy_active() -> bool:
        probe = testbed.kubectl(
            "set",
            "image",
            "deployment/web",
            f"*={backup}/probe:1",
            "-n",
            namespace,
            "--dry-run=server",
            check=False,
        )
        return probe.returncode != 0 and "backup images refused" in probe.stderr

    wait_until(policy_active, timeout=30, what="the admission policy to take effect")

    settings = Settings.from_env({"IMAGE_CLONER_REGISTRY": backup})
    async with Copier(settings.registry_options) as copier:
        reconciler = Reconciler(
            kube=kube, copier=copier, settings=settings, metrics=Metrics(health=Health())
        )
        with pytest.raises(Retry) as caught:
            await reconcile(reconciler, WorkloadKey("Deployment", namespace, "web"))

    assert "backup images refused" in caught.value.reason
    assert caught.value.after is None, "backed off by the queue, not retried at once"
    failed = cluster_events(testbed, namespace, CLONE_FAILED)
    assert len(failed) == 1
    assert "backup images refused" in failed[0]["message"]
    assert "error 422: Kubernetes API error" not in failed[0]["message"]
    current = workload(testbed, namespace, "web")
    image = current["spec"]["template"]["spec"]["containers"][0]
    assert image["image"] == source, "the workload is untouched"

    # What the apiserver answers for the refusal (docs/controller.md): 422 "Invalid" like a
    # failed `test`, but the Status names the object and carries the policy's message.
    patch = build_patch(current, {image["name"]: f"{backup}/app:1"})
    with pytest.raises(Invalid) as refused:
        await kube.patch_workload(DEPLOYMENT, namespace, "web", patch)
    error = refused.value
    assert (error.status, error.reason) == (422, "Invalid")
    assert (error.details.get("kind"), error.details.get("name")) == ("deployments", "web")
    assert any("backup images refused" in cause.message for cause in error.causes)
    assert not error.patch_did_not_apply
    assert not changed_meanwhile(error)


async def test_a_workload_deleted_while_its_images_are_copied_gets_no_clone_failed_event(
    *,
    kube: Kube,
    testbed: Testbed,
    namespace: str,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
) -> None:
    suffix, _ = ready_web_deployment(testbed, namespace, open_registry, seed_image)

    class DeletedMeanwhile(Copier):
        """A real copy, during which the user deletes the workload."""

        async def copy_image(
            self,
            source: Reference,
            target: Reference,
            *,
            force: bool = False,
            move_tag: bool = False,
            progress: ProgressListener | None = None,
        ) -> CopyResult:
            testbed.kubectl("delete", "deployment", "web", "-n", namespace)
            return await super().copy_image(
                source, target, force=force, move_tag=move_tag, progress=progress
            )

    settings = Settings.from_env({"IMAGE_CLONER_REGISTRY": f"{open_registry.host}/b-{suffix}"})
    async with DeletedMeanwhile(settings.registry_options) as copier:
        reconciler = Reconciler(
            kube=kube, copier=copier, settings=settings, metrics=Metrics(health=Health())
        )
        await reconcile(reconciler, WorkloadKey("Deployment", namespace, "web"))  # no failure

    assert cluster_events(testbed, namespace, CLONE_FAILED) == []
