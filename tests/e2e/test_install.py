"""The install path on a real apiserver: the manifests and the chart apply, the pod they
describe is admitted under the `restricted` Pod Security Standard, and the controller's
ServiceAccount can do exactly what the controller needs and nothing more.

Rights are checked twice: `kubectl auth can-i` as the ServiceAccount (the apiserver's own
SelfSubjectAccessReview), and real requests made with its TokenRequest token, which must
succeed or come back 403 Forbidden.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CHART = ROOT / "charts" / "image-cloner"
NAMESPACE = "image-cloner-system"
SERVICE_ACCOUNT = "image-cloner"
PULL_SECRET = "image-cloner-pull"
LEASE = "image-cloner"
PULL_SECRET_BINDING = "image-cloner-pull-secrets"
ROLLOUT_TIMEOUT = "120s"
RBAC_PROPAGATION = 15.0

# The controller's own rights, in any namespace: read and watch every kind, patch only
# the kinds whose pod template can be rewritten.
ALLOWED = [
    *(
        (verb, resource)
        for resource in (
            "deployments.apps",
            "daemonsets.apps",
            "statefulsets.apps",
            "cronjobs.batch",
            "jobs.batch",
            "pods",
        )
        for verb in ("get", "list", "watch")
    ),
    ("patch", "deployments.apps"),
    ("patch", "daemonsets.apps"),
    ("get", "namespaces"),
    ("patch", "statefulsets.apps"),
    ("patch", "cronjobs.batch"),
    ("create", "events"),
    ("patch", "events"),
    ("create", "events.events.k8s.io"),
    ("list", "pods"),  # a workload's pods, by its selector: the digest they run
]
# A sample of what it must never do.
DENIED = [
    ("get", "secrets"),
    ("list", "secrets"),
    ("watch", "secrets"),
    ("delete", "secrets"),
    ("patch", "pods"),
    ("update", "pods"),
    ("delete", "pods"),
    ("create", "pods"),
    ("patch", "jobs.batch"),
    ("update", "jobs.batch"),
    ("create", "jobs.batch"),
    ("delete", "jobs.batch"),
    ("create", "cronjobs.batch"),
    ("delete", "statefulsets.apps"),
    ("create", "deployments.apps"),
    ("update", "deployments.apps"),
    ("delete", "deployments.apps"),
    ("list", "namespaces"),
    ("list", "customresourcedefinitions.apiextensions.k8s.io"),
    ("get", "configmaps"),
    ("create", "serviceaccounts"),
]


class ServiceAccountClient:
    """kubectl authenticated with a ServiceAccount's token instead of cluster-admin."""

    def __init__(self, testbed: Testbed, kubeconfig: Path) -> None:
        self._kubectl = str(testbed.bin_dir / "kubectl")
        self._kubeconfig = kubeconfig

    def run(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self._kubectl, f"--kubeconfig={self._kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def can_i(self, verb: str, resource: str, *, namespace: str | None = None) -> bool:
        where = ["-n", namespace] if namespace else ["--all-namespaces"]
        result = self.run("auth", "can-i", verb, resource, *where)
        if result.returncode not in (0, 1):
            raise AssertionError(f"kubectl auth can-i failed: {result.stderr}")
        return result.returncode == 0

    def forbidden(self, *args: str) -> bool:
        """True when the request is refused by RBAC (403), False when it succeeds."""
        result = self.run(*args)
        if result.returncode == 0:
            return False
        # The apiserver's RBAC denial (403), whatever kubectl wraps around it.
        assert 'is forbidden: User "system:serviceaccount:' in result.stderr, result.stderr
        return True


def wait_until_can(client: ServiceAccountClient, verb: str, resource: str, want: bool) -> None:
    """RBAC changes reach the authorizer through an informer: give it a moment."""
    deadline = time.monotonic() + RBAC_PROPAGATION
    while client.can_i(verb, resource) != want:
        assert time.monotonic() < deadline, f"can-i {verb} {resource} never became {want}"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def examples_applied(testbed: Testbed) -> Iterator[None]:
    testbed.kubectl("apply", "-f", str(EXAMPLES / "rbac.yml"))
    testbed.kubectl("apply", "-f", str(EXAMPLES / "rbac-leader-election.yml"))
    testbed.kubectl("apply", "-f", str(EXAMPLES / "image-cloner.yml"))
    yield
    # The controller's Deployment would make other tests' controllers look at its image;
    # the Namespace, ServiceAccount and RBAC stay for them to use.
    testbed.kubectl(
        "delete",
        "-n",
        NAMESPACE,
        "deployment/image-cloner",
        "configmap/image-cloner-config",
        "secret/image-cloner-credentials",
        "poddisruptionbudget/image-cloner",
        "--ignore-not-found",
        check=False,
    )


@pytest.fixture(scope="module")
def controller_sa(
    testbed: Testbed, examples_applied: None, tmp_path_factory: pytest.TempPathFactory
) -> ServiceAccountClient:
    path = tmp_path_factory.mktemp("sa") / "kubeconfig"
    return ServiceAccountClient(
        testbed, testbed.serviceaccount_kubeconfig(NAMESPACE, SERVICE_ACCOUNT, path=path)
    )


@pytest.fixture
def without_pull_secret_role(
    testbed: Testbed, controller_sa: ServiceAccountClient
) -> Iterator[None]:
    """Pull-Secret management off: its binding absent for the test, restored afterwards."""
    existed = (
        testbed.kubectl("get", "clusterrolebinding", PULL_SECRET_BINDING, check=False).returncode
        == 0
    )
    testbed.kubectl("delete", "clusterrolebinding", PULL_SECRET_BINDING, "--ignore-not-found")
    wait_until_can(controller_sa, "create", "secrets", want=False)
    yield
    if existed:
        testbed.kubectl("apply", "-f", str(EXAMPLES / "rbac-pull-secrets.yml"))


def test_examples_apply_and_the_pod_passes_restricted_admission(
    testbed: Testbed, examples_applied: None
) -> None:
    # The namespace enforces "restricted": the Deployment only rolls out if its pod
    # template is admitted (KWOK then reports the pod Ready without running it).
    testbed.kubectl(
        "rollout",
        "status",
        "deployment/image-cloner",
        "-n",
        NAMESPACE,
        f"--timeout={ROLLOUT_TIMEOUT}",
        timeout=150,
    )
    pods = json.loads(
        testbed.kubectl(
            "get",
            "pods",
            "-n",
            NAMESPACE,
            "-l",
            "app.kubernetes.io/name=image-cloner",
            "-o",
            "json",
        ).stdout
    )["items"]
    # Two replicas (leader election), both admitted.
    assert [p["spec"]["serviceAccountName"] for p in pods] == [SERVICE_ACCOUNT] * 2
    env = {e["name"]: e for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["IMAGE_CLONER_POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace"
    )

    # ...and the enforcement is real: a pod without the hardening is refused.
    loose_pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "loose", "namespace": NAMESPACE},
        "spec": {"containers": [{"name": "c", "image": "nginx:1.21.4-alpine"}]},
    }
    refused = testbed.kubectl(
        "apply", "--dry-run=server", "-f", "-", input=json.dumps(loose_pod), check=False
    )
    assert refused.returncode != 0
    assert "violates PodSecurity" in refused.stderr


def test_serviceaccount_may_do_only_what_the_controller_does(
    controller_sa: ServiceAccountClient, without_pull_secret_role: None, namespace: str
) -> None:
    for verb, resource in ALLOWED:
        assert controller_sa.can_i(verb, resource), f"cannot {verb} {resource}"
        assert controller_sa.can_i(verb, resource, namespace=namespace)
    for verb, resource in DENIED:
        assert not controller_sa.can_i(verb, resource), f"can {verb} {resource}"
    # With pull-Secret management off, no Secret right at all.
    for verb in ("create", "update", "patch"):
        assert not controller_sa.can_i(verb, "secrets", namespace=namespace)


def test_serviceaccount_token_really_patches_workloads_and_is_refused_the_rest(
    testbed: Testbed,
    controller_sa: ServiceAccountClient,
    without_pull_secret_role: None,
    namespace: str,
) -> None:
    testbed.kubectl("create", "deployment", "web", "--image=nginx:1.21.4-alpine", "-n", namespace)
    testbed.kubectl("create", "secret", "generic", "private", "-n", namespace, "--from-literal=k=v")

    listed = controller_sa.run("get", "deployments", "--all-namespaces", "-o", "name")
    assert listed.returncode == 0, listed.stderr
    assert "deployment.apps/web" in listed.stdout.split()
    patch = [
        {
            "op": "replace",
            "path": "/spec/template/spec/containers/0/image",
            "value": "localhost:5000/nginx:1.21.4-alpine",
        }
    ]
    patched = controller_sa.run(
        "patch", "deployment", "web", "-n", namespace, "--type=json", "-p", json.dumps(patch)
    )
    assert patched.returncode == 0, patched.stderr
    image = testbed.kubectl(
        "get",
        "deployment",
        "web",
        "-n",
        namespace,
        "-o",
        "jsonpath={.spec.template.spec.containers[0].image}",
    ).stdout
    assert image == "localhost:5000/nginx:1.21.4-alpine"

    assert controller_sa.forbidden("get", "secrets", "--all-namespaces")
    assert controller_sa.forbidden("get", "secret", "private", "-n", namespace)
    assert controller_sa.forbidden(
        "create", "secret", "generic", PULL_SECRET, "-n", namespace, "--from-literal=k=v"
    )
    assert controller_sa.forbidden("delete", "pods", "--all", "-n", namespace)
    assert controller_sa.forbidden("delete", "deployment", "web", "-n", namespace)
    # One namespace by name (for its opt-out annotation), never the list of them.
    read = controller_sa.run("get", "namespace", namespace, "-o", "json")
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["metadata"]["name"] == namespace
    assert controller_sa.forbidden("get", "namespaces")
    assert controller_sa.forbidden("annotate", "namespace", namespace, "image-cloner.io/skip=true")


def kind_manifests(namespace: str) -> list[dict[str, Any]]:
    """One StatefulSet, CronJob, Job and bare Pod, each with one container `app`."""
    pod = {"containers": [{"name": "app", "image": "nginx:1.21.4-alpine"}]}
    template = {"metadata": {"labels": {"app": "db"}}, "spec": pod}
    meta = {"namespace": namespace}
    return [
        {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": {"name": "db", **meta},
            "spec": {"selector": {"matchLabels": {"app": "db"}}, "template": template},
        },
        {
            "apiVersion": "batch/v1",
            "kind": "CronJob",
            "metadata": {"name": "nightly", **meta},
            "spec": {
                "schedule": "0 3 * * *",
                "jobTemplate": {"spec": {"template": {"spec": {**pod, "restartPolicy": "Never"}}}},
            },
        },
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": "once", **meta},
            "spec": {"template": {"spec": {**pod, "restartPolicy": "Never"}}},
        },
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bare", **meta}, "spec": pod},
    ]


def image_patch(pointer: str) -> str:
    value = "localhost:5000/nginx:1.21.4-alpine"
    return json.dumps([{"op": "replace", "path": f"{pointer}/containers/0/image", "value": value}])


def test_serviceaccount_token_watches_every_kind_and_patches_only_the_rewritable(
    testbed: Testbed,
    controller_sa: ServiceAccountClient,
    without_pull_secret_role: None,
    namespace: str,
) -> None:
    document = {"apiVersion": "v1", "kind": "List", "items": kind_manifests(namespace)}
    testbed.kubectl("apply", "-f", "-", input=json.dumps(document))

    for path, name in [
        (f"/apis/apps/v1/namespaces/{namespace}/statefulsets", "db"),
        (f"/apis/batch/v1/namespaces/{namespace}/cronjobs", "nightly"),
        (f"/apis/batch/v1/namespaces/{namespace}/jobs", "once"),
        (f"/api/v1/namespaces/{namespace}/pods", "bare"),
        ("/api/v1/pods", "bare"),
    ]:
        watched = controller_sa.run("get", "--raw", f"{path}?watch=true&timeoutSeconds=1")
        assert watched.returncode == 0, watched.stderr
        events = [json.loads(line) for line in watched.stdout.splitlines()]
        added = {e["object"]["metadata"]["name"] for e in events if e["type"] == "ADDED"}
        assert name in added, events

    for resource, name, pointer in [
        ("statefulset", "db", "/spec/template/spec"),
        ("cronjob", "nightly", "/spec/jobTemplate/spec/template/spec"),
    ]:
        patched = controller_sa.run(
            "patch", resource, name, "-n", namespace, "--type=json", "-p", image_patch(pointer)
        )
        assert patched.returncode == 0, patched.stderr
    assert controller_sa.forbidden(
        "patch",
        "job",
        "once",
        "-n",
        namespace,
        "--type=json",
        "-p",
        image_patch("/spec/template/spec"),
    )
    assert controller_sa.forbidden(
        "patch", "pod", "bare", "-n", namespace, "--type=json", "-p", image_patch("/spec")
    )
    assert controller_sa.forbidden(
        "label", "pod", "bare", "-n", namespace, "image-cloner.io/touched=yes"
    )
    assert controller_sa.forbidden("delete", "job", "once", "-n", namespace)
    image = testbed.kubectl(
        "get", "pod", "bare", "-n", namespace, "-o", "jsonpath={.spec.containers[0].image}"
    ).stdout
    assert image == "nginx:1.21.4-alpine"


def test_pull_secret_role_allows_one_secret_name_and_nothing_else(
    testbed: Testbed, controller_sa: ServiceAccountClient, namespace: str
) -> None:
    testbed.kubectl("apply", "-f", str(EXAMPLES / "rbac-pull-secrets.yml"))
    wait_until_can(controller_sa, "create", "secrets", want=True)
    testbed.kubectl("create", "secret", "generic", "private", "-n", namespace, "--from-literal=k=v")

    created = controller_sa.run(
        "create", "secret", "generic", PULL_SECRET, "-n", namespace, "--from-literal=k=v"
    )
    assert created.returncode == 0, created.stderr
    assert not controller_sa.forbidden("get", "secret", PULL_SECRET, "-n", namespace)
    assert not controller_sa.forbidden(
        "patch", "secret", PULL_SECRET, "-n", namespace, "-p", '{"metadata":{"labels":{"a":"b"}}}'
    )
    assert controller_sa.forbidden("get", "secret", "private", "-n", namespace)
    assert controller_sa.forbidden(
        "patch", "secret", "private", "-n", namespace, "-p", '{"metadata":{"labels":{"a":"b"}}}'
    )
    assert controller_sa.forbidden("get", "secrets", "-n", namespace)
    assert controller_sa.forbidden("delete", "secret", PULL_SECRET, "-n", namespace)
    assert not controller_sa.can_i("list", "secrets")
    assert not controller_sa.can_i("watch", "secrets")


def test_serviceaccount_may_renew_its_lease_in_its_own_namespace_only(
    testbed: Testbed, controller_sa: ServiceAccountClient, namespace: str
) -> None:
    lease = f"leases.coordination.k8s.io/{LEASE}"
    deadline = time.monotonic() + RBAC_PROPAGATION
    while not controller_sa.can_i("update", lease, namespace=NAMESPACE):
        assert time.monotonic() < deadline, "the leader-election Role never took effect"
        time.sleep(0.3)
    assert controller_sa.can_i("get", lease, namespace=NAMESPACE)
    assert controller_sa.can_i("create", "leases.coordination.k8s.io", namespace=NAMESPACE)
    assert not controller_sa.can_i("update", f"{lease}-other", namespace=NAMESPACE)
    for verb in ("list", "watch", "patch", "delete"):
        assert not controller_sa.can_i(verb, lease, namespace=NAMESPACE), verb
    for verb in ("get", "create", "update"):
        assert not controller_sa.can_i(verb, lease, namespace=namespace), verb
        assert not controller_sa.can_i(verb, lease, namespace="kube-node-lease"), verb

    # Real requests with its token: create and renew in its namespace, refused elsewhere.
    testbed.kubectl("delete", lease, "-n", NAMESPACE, "--ignore-not-found")
    spec: dict[str, object] = {"holderIdentity": "install-test", "leaseDurationSeconds": 15}
    body = {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": LEASE},
        "spec": spec,
    }
    try:
        created = controller_sa.run("create", "-n", NAMESPACE, "-f", "-", input=json.dumps(body))
        assert created.returncode == 0, created.stderr
        spec["holderIdentity"] = "install-test-2"
        renewed = controller_sa.run("replace", "-n", NAMESPACE, "-f", "-", input=json.dumps(body))
        assert renewed.returncode == 0, renewed.stderr
        holder = controller_sa.run(
            "get", lease, "-n", NAMESPACE, "-o", "jsonpath={.spec.holderIdentity}"
        )
        assert holder.stdout == "install-test-2"
        assert controller_sa.forbidden("delete", lease, "-n", NAMESPACE)
        assert controller_sa.forbidden("get", "leases", "-n", NAMESPACE)
        elsewhere = controller_sa.run("create", "-n", namespace, "-f", "-", input=json.dumps(body))
        assert elsewhere.returncode != 0
        assert 'is forbidden: User "system:serviceaccount:' in elsewhere.stderr
    finally:
        testbed.kubectl("delete", lease, "-n", NAMESPACE, "--ignore-not-found")


def test_chart_renders_applies_and_keeps_secrets_out_when_unmanaged(
    testbed: Testbed, tmp_path: Path
) -> None:
    release, namespace = "e2e-chart", "image-cloner-chart"
    helm = testbed.bin_dir / "helm"
    assert helm.is_file(), f"{helm} missing: build the test bed (`make testbed`)"
    rendered = subprocess.run(
        [
            str(helm),
            "template",
            release,
            str(CHART),
            "--namespace",
            namespace,
            "--set",
            "registry=localhost:5000",
            "--set",
            "credentials.username=testuser",
            "--set",
            "credentials.password=testpass",
            "--set",
            "pullSecret.manage=false",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert rendered.returncode == 0, rendered.stderr
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(rendered.stdout)

    testbed.create_namespace(namespace)
    try:
        testbed.kubectl(
            "label", "namespace", namespace, "pod-security.kubernetes.io/enforce=restricted"
        )
        testbed.kubectl("apply", "-f", str(manifest))
        testbed.kubectl(
            "rollout",
            "status",
            f"deployment/{release}-image-cloner",
            "-n",
            namespace,
            f"--timeout={ROLLOUT_TIMEOUT}",
            timeout=150,
        )
        sa = ServiceAccountClient(
            testbed,
            testbed.serviceaccount_kubeconfig(
                namespace, f"{release}-image-cloner", path=tmp_path / "sa.kubeconfig"
            ),
        )
        for verb, resource in ALLOWED:
            assert sa.can_i(verb, resource), f"cannot {verb} {resource}"
        for verb, resource in DENIED:
            assert not sa.can_i(verb, resource), f"can {verb} {resource}"
        assert not sa.can_i("create", "secrets", namespace="default")
        lease = f"leases.coordination.k8s.io/{release}-image-cloner"
        assert sa.can_i("update", lease, namespace=namespace)
        assert not sa.can_i("update", lease, namespace="default")
        assert sa.forbidden(
            "create", "secret", "generic", PULL_SECRET, "-n", namespace, "--from-literal=k=v"
        )
    finally:
        testbed.kubectl("delete", "-f", str(manifest), "--ignore-not-found", check=False)
        testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
