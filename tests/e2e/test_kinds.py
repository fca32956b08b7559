"""StatefulSets, CronJobs, Jobs and bare Pods end to end, on the test bed with real registries.

The Deployment story of test_controller.py, told for the other kinds: a StatefulSet is
rewritten once its rollout is complete, byte-identical copies in the backup registry, the
pull Secret, the `ImagesCloned` Event and a rollout that completes on the backup images;
a partitioned StatefulSet rolls only the pods at or above its partition; a CronJob's Job
template is rewritten, so a Job made from it runs the backup; a Job and a bare Pod cannot
be rewritten, so their images are backed up and they are left exactly as they were.

One controller of its own (the examples' ServiceAccount, scoped to this module's namespace)
serves every test here; KWOK runs the pods, and completes the pods of Jobs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_controller import (
    ANNOTATION,
    KUBECTL_POLL,
    PULL_SECRET,
    ROLLOUT,
    apply,
    assert_backed_up,
    backup_host,
    controller_env,
    events,
    get,
    raw,
    rollout,
    unique,
    wait_for_event,
)
from tests.support.controller import ControllerProcess, wait_until
from tests.support.images import ImageSeeder
from tests.support.pki import TestPKI
from tests.support.proxy import RegistryProxy
from tests.support.registries import RunningRegistry
from tests.support.testbed import Testbed


@pytest.fixture(scope="module")
def solo(
    *,
    tmp_path_factory: pytest.TempPathFactory,
    sa_kubeconfig: Path,
    module_namespace: str,
    backup: RunningRegistry,
    upstream: RegistryProxy,
    test_pki: TestPKI,
) -> Iterator[ControllerProcess]:
    env = controller_env(backup, upstream, test_pki, namespace=module_namespace)
    process = ControllerProcess(
        tmp_path_factory.mktemp("kinds-controller"), kubeconfig=sa_kubeconfig, env=env
    )
    process.start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"controller exited {code} on SIGTERM:\n{process.log_text()[-3000:]}"


class Kinds:
    """What the tests here use: the cluster, the namespace, the registries, the controller."""

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

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return get(self.testbed, self.namespace, kind, name)

    def wait_for(
        self, kind: str, name: str, ok: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            obj = self.get(kind, name)
            return obj if ok(obj) else None

        return wait_until(check, timeout=ROLLOUT, what=what, interval=KUBECTL_POLL)


@pytest.fixture
def kinds(
    *,
    testbed: Testbed,
    module_namespace: str,
    backup: RunningRegistry,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
    solo: ControllerProcess,
) -> Kinds:
    return Kinds(
        testbed=testbed,
        namespace=module_namespace,
        backup=backup,
        source=open_registry,
        seed=seed_image,
        controller=solo,
    )


def containers(pod_spec: dict[str, Any]) -> dict[str, str]:
    return {c["name"]: c["image"] for c in pod_spec["containers"]}


def statefulset(
    name: str, namespace: str, image: str, *, replicas: int, partition: int = 0
) -> dict[str, Any]:
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "serviceName": name,
            "selector": {"matchLabels": labels},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": partition}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "db", "image": image}]},
            },
        },
    }


def pod_images(kinds: Kinds, selector: str) -> dict[str, str]:
    listed = json.loads(
        kinds.testbed.kubectl(
            "get", "pods", "-n", kinds.namespace, "-l", selector, "-o", "json"
        ).stdout
    )
    return {p["metadata"]["name"]: p["spec"]["containers"][0]["image"] for p in listed["items"]}


# --- StatefulSet --------------------------------------------------------------------


def test_statefulset_is_rewritten_after_its_rollout_and_rolls_out_on_the_backup(
    kinds: Kinds,
) -> None:
    name = unique("db")
    image = kinds.seed(kinds.source, f"library/{name}:16", "index", seed=name)
    apply(kinds.testbed, statefulset(name, kinds.namespace, f"{name}:16", replicas=2))
    target = f"{kinds.host}/{name}:16@{image.digest}"

    obj = kinds.wait_for(
        "StatefulSet",
        name,
        lambda o: containers(o["spec"]["template"]["spec"]) == {"db": target},
        f"StatefulSet {name} → {target}",
    )
    rollout(kinds.testbed, kinds.namespace, "StatefulSet", name)
    wait_until(
        lambda: set(pod_images(kinds, f"app={name}").values()) == {target},
        timeout=ROLLOUT,
        what="every pod of the StatefulSet to run the backup",
        interval=KUBECTL_POLL,
    )

    # Byte for byte, every platform, as skopeo sees both registries.
    assert raw(kinds.backup, f"{name}:16") == raw(kinds.source, f"library/{name}:16")
    assert_backed_up(kinds.backup, name, "16", image)
    assert json.loads(obj["metadata"]["annotations"][ANNOTATION]) == {"db": f"{name}:16"}
    assert obj["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": PULL_SECRET}]
    secret = kinds.get("secret", PULL_SECRET)
    assert secret["type"] == "kubernetes.io/dockerconfigjson"
    event = wait_for_event(kinds.testbed, kinds.namespace, name, "ImagesCloned")
    assert event["message"].startswith(f"{name}:16 → {target} (digest from the tag: ")
    assert event["involvedObject"]["kind"] == "StatefulSet"
    kinds.controller.wait_for_line("statefulset image reference updated", image=target, name=name)


def test_partitioned_statefulset_rolls_only_the_pods_at_or_above_its_partition(
    kinds: Kinds,
) -> None:
    name = unique("shard")
    image = kinds.seed(kinds.source, f"library/{name}:1", "single", seed=name)
    manifest = statefulset(name, kinds.namespace, f"{name}:1", replicas=3, partition=2)
    apply(kinds.testbed, manifest)
    target = f"{kinds.host}/{name}:1@{image.digest}"

    kinds.wait_for(
        "StatefulSet",
        name,
        lambda o: containers(o["spec"]["template"]["spec"]) == {"db": target},
        f"StatefulSet {name} → {target}",
    )
    # kubectl calls a partitioned roll out complete once the pods above the partition run it.
    rollout(kinds.testbed, kinds.namespace, "StatefulSet", name)
    wait_until(
        lambda: pod_images(kinds, f"app={name}").get(f"{name}-2") == target,
        timeout=ROLLOUT,
        what="the pod above the partition to run the backup",
        interval=KUBECTL_POLL,
    )
    pods = pod_images(kinds, f"app={name}")
    assert pods == {f"{name}-0": f"{name}:1", f"{name}-1": f"{name}:1", f"{name}-2": target}
    status = kinds.get("StatefulSet", name)["status"]
    assert status["updatedReplicas"] == 1
    assert status["currentRevision"] != status["updateRevision"]


# --- CronJob ------------------------------------------------------------------------


def test_cronjob_template_is_rewritten_and_a_job_made_from_it_runs_the_backup(
    kinds: Kinds,
) -> None:
    name = unique("nightly")
    image = kinds.seed(kinds.source, f"library/{name}:3", "docker-list", seed=name)
    pod_spec = {"containers": [{"name": "task", "image": f"{name}:3"}], "restartPolicy": "Never"}
    apply(
        kinds.testbed,
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            # Once a year: it never runs during the test, and is ready as never scheduled.
            "metadata": {"name": name, "namespace": kinds.namespace},
            "spec": {
                "schedule": "0 0 1 1 *",
                "jobTemplate": {"spec": {"template": {"spec": pod_spec}}},
            },
        },
    )
    target = f"{kinds.host}/{name}:3@{image.digest}"

    obj = kinds.wait_for(
        "CronJob",
        name,
        lambda o: (
            containers(o["spec"]["jobTemplate"]["spec"]["template"]["spec"]) == {"task": target}
        ),
        f"CronJob {name} → {target}",
    )
    assert_backed_up(kinds.backup, name, "3", image)
    template = obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert template["imagePullSecrets"] == [{"name": PULL_SECRET}]
    assert obj["spec"]["schedule"] == "0 0 1 1 *"
    event = wait_for_event(kinds.testbed, kinds.namespace, name, "ImagesCloned")
    assert event["message"].startswith(f"{name}:3 → {target} (digest from the tag: ")

    # A Job made from the CronJob now (what the schedule will do) runs the backup.
    manual = f"{name}-manual"
    kinds.testbed.kubectl("create", "job", manual, f"--from=cronjob/{name}", "-n", kinds.namespace)
    job = kinds.wait_for(
        "Job", manual, lambda o: o.get("status", {}).get("succeeded") == 1, f"Job {manual}"
    )
    job_spec = job["spec"]["template"]["spec"]
    assert containers(job_spec) == {"task": target}
    assert job_spec["imagePullSecrets"] == [{"name": PULL_SECRET}]
    # That Job is its CronJob's: no second copy, no Event of its own.
    assert job["metadata"]["ownerReferences"][0]["kind"] == "CronJob"
    time.sleep(2)
    assert not events(kinds.testbed, kinds.namespace, manual, "ImagesBackedUp")


# --- Jobs and bare Pods: backed up, never patched -----------------------------------


def test_job_and_bare_pod_are_backed_up_and_left_as_they_are(kinds: Kinds) -> None:
    job_name, pod_name = unique("once"), unique("bare")
    job_image = kinds.seed(kinds.source, f"library/{job_name}:1", "index", seed=job_name)
    pod_image = kinds.seed(kinds.source, f"library/{pod_name}:1", "single", seed=pod_name)
    apply(
        kinds.testbed,
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": job_name, "namespace": kinds.namespace},
            "spec": {
                "template": {
                    "spec": {
                        "containers": [{"name": "app", "image": f"{job_name}:1"}],
                        "restartPolicy": "Never",
                    }
                }
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": pod_name, "namespace": kinds.namespace},
            "spec": {"containers": [{"name": "app", "image": f"{pod_name}:1"}]},
        },
    )
    job_before = kinds.get("Job", job_name)
    pod_before = kinds.get("Pod", pod_name)

    job_event = wait_for_event(kinds.testbed, kinds.namespace, job_name, "ImagesBackedUp")
    pod_event = wait_for_event(kinds.testbed, kinds.namespace, pod_name, "ImagesBackedUp")
    assert job_event["message"] == (
        f"{job_name}:1 → {kinds.host}/{job_name}:1@{job_image.digest}"
        " (a Job is backed up, never rewritten)"
    )
    assert pod_event["message"] == (
        f"{pod_name}:1 → {kinds.host}/{pod_name}:1@{pod_image.digest}"
        " (a Pod is backed up, never rewritten)"
    )
    assert_backed_up(kinds.backup, job_name, "1", job_image)
    assert_backed_up(kinds.backup, pod_name, "1", pod_image)

    # KWOK completes the Job's pod: the Job succeeds on the source image, untouched.
    job = kinds.wait_for(
        "Job", job_name, lambda o: o.get("status", {}).get("succeeded") == 1, "Job to succeed"
    )
    pod = kinds.get("Pod", pod_name)
    assert job["metadata"]["generation"] == job_before["metadata"]["generation"]
    assert job["spec"]["template"] == job_before["spec"]["template"], "never rewritten"
    assert pod["spec"]["containers"] == pod_before["spec"]["containers"], "never rewritten"
    assert "imagePullSecrets" not in pod["spec"]
    for obj in (job, pod):
        assert ANNOTATION not in obj["metadata"].get("annotations", {})
    assert (
        kinds.controller.metric(
            "image_cloner_workloads_not_rewritten_total", kind="Job", reason="immutable_template"
        )
        >= 1
    )
    assert (
        kinds.controller.metric(
            "image_cloner_workloads_not_rewritten_total", kind="Pod", reason="immutable_template"
        )
        >= 1
    )
    # The Job's own pod is the Job's business: no Event on it.
    job_pods = pod_images(kinds, f"job-name={job_name}")
    assert job_pods, "the Job ran a pod"
    for job_pod in job_pods:
        assert not events(kinds.testbed, kinds.namespace, job_pod, "ImagesBackedUp")
