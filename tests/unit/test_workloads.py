"""Readiness as `kubectl rollout status` judges it, images of a template, the rewrite patch.

Patches are applied with `jsonpatch` (an independent RFC 6902 implementation, as the API
server applies them), so the tests check the object a user would see afterwards.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from image_cloner import workloads
from image_cloner.workloads import (
    CRONJOB,
    DAEMONSET,
    DEPLOYMENT,
    JOB,
    KINDS,
    ORIGINAL_IMAGES_ANNOTATION,
    POD,
    STATEFULSET,
    ContainerImage,
    InvalidAnnotation,
    InvalidSelector,
    PatchError,
    Readiness,
    UnsupportedWorkload,
    WorkloadKey,
    WorkloadKind,
    build_marker_patch,
    build_patch,
    images_of,
    is_ready,
    key_of,
    kind_of,
    label_selector,
    original_images,
)


def deployment(
    *,
    generation: int = 2,
    replicas: int | None = 2,
    status: dict[str, Any] | None = None,
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    annotations: dict[str, str] | None = None,
    pull_secrets: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "containers": containers
        if containers is not None
        else [{"name": "nginx", "image": "nginx:1.21.4-alpine"}]
    }
    if init_containers is not None:
        pod_spec["initContainers"] = init_containers
    if pull_secrets is not None:
        pod_spec["imagePullSecrets"] = pull_secrets
    metadata: dict[str, Any] = {
        "name": "nginx",
        "namespace": "demo-system",
        "generation": generation,
        "resourceVersion": "4711",
    }
    if annotations is not None:
        metadata["annotations"] = annotations
    spec: dict[str, Any] = {"template": {"spec": pod_spec}}
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": spec,
        "status": status
        if status is not None
        else {
            "observedGeneration": 2,
            "replicas": 2,
            "updatedReplicas": 2,
            "readyReplicas": 2,
            "availableReplicas": 2,
        },
    }


def daemonset(
    *, generation: int = 1, strategy: str = "RollingUpdate", **status: int
) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "monitoring", "generation": generation},
        "spec": {
            "updateStrategy": {"type": strategy},
            "template": {"spec": {"containers": [{"name": "agent", "image": "agent:1"}]}},
        },
        "status": status,
    }


# --- readiness ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "replicas", "ready", "reason"),
    [
        (
            {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
            2,
            True,
            "rollout complete",
        ),
        (
            {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2},
            2,
            False,
            "waiting for rollout: spec update to be observed",
        ),
        (
            {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 1, "availableReplicas": 3},
            3,
            False,
            "waiting for rollout: 1 out of 3 new replicas have been updated",
        ),
        (
            {"observedGeneration": 2, "replicas": 3, "updatedReplicas": 2, "availableReplicas": 2},
            2,
            False,
            "waiting for rollout: 1 old replicas are pending termination",
        ),
        (
            {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1},
            2,
            False,
            "waiting for rollout: 1 of 2 updated replicas are available",
        ),
        # Zero-valued counters are omitted by the API server: a fresh Deployment.
        (
            {"observedGeneration": 2},
            1,
            False,
            "waiting for rollout: 0 out of 1 new replicas have been updated",
        ),
        # Scaled to zero: kubectl calls that complete.
        ({"observedGeneration": 2}, 0, True, "rollout complete"),
        # No spec.replicas (never from the API server, which defaults it): kubectl skips that check.
        (
            {"observedGeneration": 2, "replicas": 1, "updatedReplicas": 1, "availableReplicas": 1},
            None,
            True,
            "rollout complete",
        ),
        # Newer generation than the controller has seen, even though the counts look done.
        ({}, 2, False, "waiting for rollout: spec update to be observed"),
    ],
)
def test_deployment_readiness_follows_kubectl(
    status: dict[str, Any], replicas: int | None, ready: bool, reason: str
) -> None:
    verdict = is_ready(deployment(status=status, replicas=replicas))
    assert (verdict.ready, verdict.reason, verdict.failed) == (ready, reason, False)


def test_deployment_progress_deadline_exceeded_is_failed_even_with_full_counts() -> None:
    status = {
        "observedGeneration": 2,
        "replicas": 2,
        "updatedReplicas": 2,
        "availableReplicas": 2,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
            {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
        ],
    }
    verdict = is_ready(deployment(status=status))
    assert not verdict.ready
    assert verdict.failed
    assert "progress deadline" in verdict.reason


def test_deployment_complete_progressing_condition_is_ready() -> None:
    status = {
        "observedGeneration": 2,
        "replicas": 2,
        "updatedReplicas": 2,
        "availableReplicas": 2,
        "conditions": [
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}
        ],
    }
    assert is_ready(deployment(status=status)).ready


@pytest.mark.parametrize(
    ("generation", "status", "ready", "reason"),
    [
        (
            1,
            {
                "observedGeneration": 1,
                "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 3,
                "numberAvailable": 3,
            },
            True,
            "rollout complete",
        ),
        (
            2,
            {
                "observedGeneration": 1,
                "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 3,
                "numberAvailable": 3,
            },
            False,
            "waiting for rollout: spec update to be observed",
        ),
        (
            1,
            {
                "observedGeneration": 1,
                "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 1,
                "numberAvailable": 3,
            },
            False,
            "waiting for rollout: 1 out of 3 new pods have been updated",
        ),
        (
            1,
            {
                "observedGeneration": 1,
                "desiredNumberScheduled": 3,
                "updatedNumberScheduled": 3,
                "numberAvailable": 2,
            },
            False,
            "waiting for rollout: 2 of 3 updated pods are available",
        ),
        # No node matches: nothing desired, nothing to wait for.
        (1, {"observedGeneration": 1}, True, "rollout complete"),
    ],
)
def test_daemonset_readiness_follows_kubectl(
    generation: int, status: dict[str, int], ready: bool, reason: str
) -> None:
    obj = daemonset(generation=generation)
    obj["status"] = status
    verdict = is_ready(obj)
    assert (verdict.ready, verdict.reason) == (ready, reason)


def test_ondelete_daemonset_waits_until_every_pod_runs_the_template() -> None:
    waiting = daemonset(
        strategy="OnDelete",
        observedGeneration=1,
        desiredNumberScheduled=2,
        updatedNumberScheduled=1,
        numberAvailable=2,
    )
    assert not is_ready(waiting).ready
    done = daemonset(
        strategy="OnDelete",
        observedGeneration=1,
        desiredNumberScheduled=2,
        updatedNumberScheduled=2,
        numberAvailable=2,
    )
    assert is_ready(done).ready


def test_kinds_are_data() -> None:
    assert set(KINDS) == {"Deployment", "DaemonSet", "StatefulSet", "CronJob", "Job", "Pod"}
    assert kind_of(deployment()) is DEPLOYMENT
    assert kind_of(daemonset()) is DAEMONSET
    assert (DAEMONSET.api_version, DAEMONSET.plural, DAEMONSET.noun) == (
        "apps/v1",
        "daemonsets",
        "daemonset",
    )
    assert (CRONJOB.api_version, JOB.api_version, POD.api_version) == ("batch/v1",) * 2 + ("v1",)
    assert [k.kind for k in KINDS.values() if not k.rewritable] == ["Job", "Pod"]


def test_kinds_give_the_api_paths() -> None:
    assert DEPLOYMENT.collection(None) == "/apis/apps/v1/deployments"
    assert DAEMONSET.collection("demo") == "/apis/apps/v1/namespaces/demo/daemonsets"
    assert DEPLOYMENT.path("demo", "web") == "/apis/apps/v1/namespaces/demo/deployments/web"
    assert STATEFULSET.path("demo", "db") == "/apis/apps/v1/namespaces/demo/statefulsets/db"
    assert CRONJOB.path("demo", "nightly") == "/apis/batch/v1/namespaces/demo/cronjobs/nightly"
    assert JOB.collection(None) == "/apis/batch/v1/jobs"
    assert POD.collection(None) == "/api/v1/pods"
    assert POD.path("demo", "bare") == "/api/v1/namespaces/demo/pods/bare"
    assert DEPLOYMENT.pod_spec_pointer == "/spec/template/spec"
    assert STATEFULSET.pod_spec_pointer == "/spec/template/spec"
    assert CRONJOB.pod_spec_pointer == "/spec/jobTemplate/spec/template/spec"
    assert JOB.pod_spec_pointer == "/spec/template/spec"
    assert POD.pod_spec_pointer == "/spec"


def cronjob(pod_spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": "demo", "resourceVersion": "7"},
        "spec": {
            "schedule": "0 3 * * *",
            "jobTemplate": {"spec": {"template": {"spec": pod_spec}}},
        },
    }


def test_a_cronjob_is_rewritten_in_its_job_template() -> None:
    obj = cronjob({"containers": [{"name": "job", "image": "busybox:1"}]})
    (image,) = images_of(obj)
    assert image.pointer == "/spec/jobTemplate/spec/template/spec/containers/0/image"
    patch = build_patch(obj, {"job": "localhost:5000/busybox:1"}, pull_secret="pull")
    after = jsonpatch.apply_patch(obj, patch)
    template = after["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert template["containers"][0]["image"] == "localhost:5000/busybox:1"
    assert template["imagePullSecrets"] == [{"name": "pull"}]
    assert after["spec"]["schedule"] == "0 3 * * *"


def test_a_kind_with_its_template_elsewhere_is_one_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    # What adding a kind takes: one entry naming where its pod template lives.
    podtemplate = WorkloadKind(
        kind="PodTemplate",
        group="",
        version="v1",
        plural="podtemplates",
        noun="podtemplate",
        template=("template",),
        readiness=lambda obj: Readiness(ready=True, reason="nothing runs it"),
    )
    monkeypatch.setattr(workloads, "KINDS", {**KINDS, "PodTemplate": podtemplate})
    obj: dict[str, Any] = {
        "kind": "PodTemplate",
        "metadata": {"name": "t", "namespace": "demo", "resourceVersion": "7"},
        "template": {"spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
    }
    (image,) = images_of(obj)
    assert image.pointer == "/template/spec/containers/0/image"
    after = jsonpatch.apply_patch(obj, build_patch(obj, {"c": "localhost:5000/busybox:1"}))
    assert after["template"]["spec"]["containers"][0]["image"] == "localhost:5000/busybox:1"
    assert podtemplate.path("demo", "t") == "/api/v1/namespaces/demo/podtemplates/t"


def bare_pod(*, owners: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "bare", "namespace": "demo", "resourceVersion": "9"}
    if owners is not None:
        meta["ownerReferences"] = owners
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": {"containers": [{"name": "app", "image": "nginx:1"}]},
        "status": {"phase": "Running"},
    }


def test_a_pod_is_its_own_template_and_is_never_patched() -> None:
    obj = bare_pod()
    (image,) = images_of(obj)
    assert image.pointer == "/spec/containers/0/image"
    with pytest.raises(PatchError, match="Pod cannot be changed"):
        build_patch(obj, {"app": "localhost:5000/nginx:1"})


def test_a_job_is_never_patched() -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once", "namespace": "demo", "resourceVersion": "3"},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1"}]}}},
    }
    assert [i.image for i in images_of(job)] == ["nginx:1"]
    with pytest.raises(PatchError, match="Job cannot be changed"):
        build_patch(job, {"app": "localhost:5000/nginx:1"})


def owner(kind: str, *, controller: bool | None = True) -> dict[str, Any]:
    ref: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "name": "x", "uid": "u"}
    if controller is not None:
        ref["controller"] = controller
    return ref


@pytest.mark.parametrize(
    ("kind", "owners", "owned_by"),
    [
        # A bare Pod, and Pods whose owners are not their controller, are targets.
        (POD, None, None),
        (POD, [owner("ConfigMap", controller=None)], None),
        (POD, [owner("Node", controller=False)], None),
        # A controller's Pod is its controller's business, whatever the controller is.
        (POD, [owner("ReplicaSet")], "ReplicaSet/x"),
        (POD, [owner("Job")], "Job/x"),
        (POD, [owner("PostgresCluster")], "PostgresCluster/x"),
        # A Job made by a CronJob is the CronJob's; any other Job is its own.
        (JOB, [owner("CronJob")], "CronJob/x"),
        (JOB, [owner("Workflow")], None),
        (JOB, None, None),
        # Rewritable kinds are always their own target (policy.py rules on their owners).
        (DEPLOYMENT, [owner("HelmRelease")], None),
    ],
)
def test_owned_objects_are_not_targets_of_their_own(
    kind: WorkloadKind, owners: list[dict[str, Any]] | None, owned_by: str | None
) -> None:
    obj = bare_pod(owners=owners)
    assert kind.owned_by(obj) == owned_by


def test_unsupported_kind_is_rejected() -> None:
    with pytest.raises(UnsupportedWorkload, match="'ReplicaSet'"):
        is_ready({"kind": "ReplicaSet"})


def test_key_of() -> None:
    key = key_of(deployment())
    assert key == WorkloadKey("Deployment", "demo-system", "nginx")
    assert str(key) == "Deployment demo-system/nginx"
    assert len({key, key_of(deployment())}) == 1


# --- images -------------------------------------------------------------------

POD_SPEC = "/spec/template/spec"


def test_images_of_lists_containers_then_init_containers() -> None:
    obj = deployment(
        containers=[
            {"name": "web", "image": "nginx:1.21.4-alpine"},
            {"name": "sidecar", "image": "busybox@sha256:" + "a" * 64},
        ],
        init_containers=[{"name": "migrate", "image": "ghcr.io/acme/migrate:2"}],
    )
    assert images_of(obj) == [
        ContainerImage("containers", 0, "web", "nginx:1.21.4-alpine", POD_SPEC),
        ContainerImage("containers", 1, "sidecar", "busybox@sha256:" + "a" * 64, POD_SPEC),
        ContainerImage("initContainers", 0, "migrate", "ghcr.io/acme/migrate:2", POD_SPEC),
    ]
    assert images_of(obj)[2].pointer == "/spec/template/spec/initContainers/0/image"


def test_images_of_skips_containers_without_an_image() -> None:
    obj = deployment(containers=[{"name": "a"}, {"name": "b", "image": "b:1"}])
    assert [c.name for c in images_of(obj)] == ["b"]


# --- patch --------------------------------------------------------------------

BACKUP = "localhost:5000/nginx:1.21.4-alpine"


def apply(obj: dict[str, Any], patch: list[dict[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = jsonpatch.apply_patch(obj, patch)
    return result


def test_patch_rewrites_image_and_records_original() -> None:
    obj = deployment()
    patch = build_patch(obj, {"nginx": BACKUP})
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "4711"}
    after = apply(obj, patch)
    assert after["spec"]["template"]["spec"]["containers"][0]["image"] == BACKUP
    annotation = after["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION]
    assert annotation == '{"nginx":"nginx:1.21.4-alpine"}'
    assert original_images(after) == {"nginx": "nginx:1.21.4-alpine"}
    assert "imagePullSecrets" not in after["spec"]["template"]["spec"]
    assert obj == deployment(), "the input object is not modified"


def test_patch_tests_each_old_image() -> None:
    obj = deployment()
    patch = build_patch(obj, {"nginx": BACKUP})
    assert {
        "op": "test",
        "path": "/spec/template/spec/containers/0/image",
        "value": "nginx:1.21.4-alpine",
    } in patch


def test_patch_is_rejected_after_a_concurrent_edit() -> None:
    obj = deployment()
    patch = build_patch(obj, {"nginx": BACKUP})
    edited = copy.deepcopy(obj)
    edited["metadata"]["resourceVersion"] = "4712"
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.22"
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(edited, patch)
    # Even if the resourceVersion test were dropped, the image test alone protects the edit.
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(edited, patch[1:])


def test_patch_keeps_existing_annotations_and_escapes_the_key() -> None:
    obj = deployment(annotations={"deployment.kubernetes.io/revision": "3"})
    patch = build_patch(obj, {"nginx": BACKUP})
    assert {
        "op": "add",
        "path": "/metadata/annotations/image-cloner.io~1original-images",
        "value": '{"nginx":"nginx:1.21.4-alpine"}',
    } in patch
    after = apply(obj, patch)
    assert after["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"


def test_patch_escapes_tilde_before_slash() -> None:
    obj = deployment(annotations={})
    patch = build_patch(obj, {"nginx": BACKUP}, annotation="example.com/a~b")
    assert any(op["path"] == "/metadata/annotations/example.com~1a~0b" for op in patch)
    after = apply(obj, patch)
    assert original_images(after, annotation="example.com/a~b") == {"nginx": "nginx:1.21.4-alpine"}


def test_second_rewrite_keeps_the_originals_of_other_containers() -> None:
    obj = deployment(containers=[{"name": "nginx", "image": "nginx:1.21.4-alpine"}])
    first = apply(obj, build_patch(obj, {"nginx": BACKUP}))
    # The user adds a sidecar; the next pass rewrites only that one.
    first["metadata"]["resourceVersion"] = "4800"
    first["spec"]["template"]["spec"]["containers"].append(
        {"name": "sidecar", "image": "busybox:1.36"}
    )
    second = apply(first, build_patch(first, {"sidecar": "localhost:5000/busybox:1.36"}))
    assert original_images(second) == {"nginx": "nginx:1.21.4-alpine", "sidecar": "busybox:1.36"}


def test_rewrite_after_a_user_edit_records_what_the_user_asked_for() -> None:
    obj = deployment(
        annotations={ORIGINAL_IMAGES_ANNOTATION: '{"nginx":"nginx:1.21.4-alpine","gone":"x:1"}'}
    )
    obj["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:1.22"
    after = apply(obj, build_patch(obj, {"nginx": "localhost:5000/nginx:1.22"}))
    # Reverting must not downgrade the user to 1.21.4; a container that is gone is forgotten.
    assert original_images(after) == {"nginx": "nginx:1.22"}


def test_damaged_annotation_is_replaced_by_a_valid_one() -> None:
    obj = deployment(annotations={ORIGINAL_IMAGES_ANNOTATION: "not json"})
    with pytest.raises(InvalidAnnotation):
        original_images(obj)
    after = apply(obj, build_patch(obj, {"nginx": BACKUP}))
    assert original_images(after) == {"nginx": "nginx:1.21.4-alpine"}


@pytest.mark.parametrize("text", ['["a"]', '{"a": 1}', "{"])
def test_original_images_rejects_foreign_values(text: str) -> None:
    with pytest.raises(InvalidAnnotation, match=ORIGINAL_IMAGES_ANNOTATION):
        original_images(deployment(annotations={ORIGINAL_IMAGES_ANNOTATION: text}))


def test_patch_rewrites_init_containers_and_several_images_at_once() -> None:
    obj = deployment(
        containers=[{"name": "web", "image": "nginx:1"}, {"name": "side", "image": "busybox:1"}],
        init_containers=[{"name": "init", "image": "alpine:3"}],
    )
    rewrites = {"init": "r.local/alpine:3", "side": "r.local/busybox:1", "web": "r.local/nginx:1"}
    after = apply(obj, build_patch(obj, rewrites))
    assert {c.name: c.image for c in images_of(after)} == rewrites
    assert json.loads(after["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION]) == {
        "init": "alpine:3",
        "side": "busybox:1",
        "web": "nginx:1",
    }


@pytest.mark.parametrize(
    ("pull_secrets", "expected"),
    [
        (None, [{"name": "image-cloner-pull"}]),
        ([], [{"name": "image-cloner-pull"}]),
        ([{"name": "other"}], [{"name": "other"}, {"name": "image-cloner-pull"}]),
        ([{"name": "image-cloner-pull"}], [{"name": "image-cloner-pull"}]),
    ],
)
def test_patch_adds_the_pull_secret_once(
    pull_secrets: list[dict[str, str]] | None, expected: list[dict[str, str]]
) -> None:
    obj = deployment(pull_secrets=pull_secrets)
    after = apply(obj, build_patch(obj, {"nginx": BACKUP}, pull_secret="image-cloner-pull"))
    assert after["spec"]["template"]["spec"]["imagePullSecrets"] == expected


def test_nothing_to_change_gives_an_empty_patch() -> None:
    obj = deployment(containers=[{"name": "nginx", "image": BACKUP}])
    assert build_patch(obj, {}, pull_secret="image-cloner-pull") == []
    assert build_patch(obj, {"nginx": BACKUP}) == []


def test_unknown_container_is_an_error() -> None:
    with pytest.raises(PatchError, match="'php'"):
        build_patch(deployment(), {"php": "x"})


def test_missing_resource_version_is_an_error() -> None:
    obj = deployment()
    del obj["metadata"]["resourceVersion"]
    with pytest.raises(PatchError, match="resourceVersion"):
        build_patch(obj, {"nginx": BACKUP})


# --- the marker patch ------------------------------------------------------------------

MARKER = "image-cloner.io/rewrite-reverted"


def test_marker_patch_adds_the_marker_guarded_by_the_resource_version() -> None:
    obj = deployment()
    patch = build_marker_patch(obj, MARKER, "by flux at 2026-01-01T00:00:00Z")
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "4711"}
    after = apply(obj, patch)
    assert after["metadata"]["annotations"] == {MARKER: "by flux at 2026-01-01T00:00:00Z"}
    edited = copy.deepcopy(obj)
    edited["metadata"]["resourceVersion"] = "4712"
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        apply(edited, patch)


def test_marker_patch_forgets_reverted_containers_in_the_record() -> None:
    containers = [{"name": "a", "image": "nginx:1"}, {"name": "b", "image": "backup/busybox:1"}]
    record = '{"a":"nginx:1","b":"busybox:1"}'
    obj = deployment(containers=containers, annotations={ORIGINAL_IMAGES_ANNOTATION: record})
    after = apply(obj, build_marker_patch(obj, MARKER, "at now", forget=["a"]))
    assert original_images(after) == {"b": "busybox:1"}
    assert after["metadata"]["annotations"][MARKER] == "at now"

    after = apply(obj, build_marker_patch(obj, MARKER, "at now", forget=["a", "b"]))
    assert after["metadata"]["annotations"] == {MARKER: "at now"}


def test_marker_patch_needs_a_resource_version() -> None:
    obj = deployment()
    del obj["metadata"]["resourceVersion"]
    with pytest.raises(PatchError):
        build_marker_patch(obj, MARKER, "at now")


@pytest.mark.parametrize(
    ("selector", "query"),
    [
        ({"matchLabels": {"app": "web"}}, "app=web"),
        ({"matchLabels": {"app": "web", "tier": "front"}}, "app=web,tier=front"),
        (
            {
                "matchLabels": {"app": "web"},
                "matchExpressions": [
                    {"key": "tier", "operator": "In", "values": ["a", "b"]},
                    {"key": "env", "operator": "NotIn", "values": ["dev"]},
                    {"key": "team", "operator": "Exists"},
                    {"key": "legacy", "operator": "DoesNotExist", "values": []},
                ],
            },
            "app=web,tier in (a,b),env notin (dev),team,!legacy",
        ),
        ({}, ""),
        (None, ""),
    ],
)
def test_label_selector_is_the_query_the_pods_are_listed_by(
    selector: dict[str, Any] | None, query: str
) -> None:
    obj: dict[str, Any] = {"kind": "Deployment", "spec": {}}
    if selector is not None:
        obj["spec"]["selector"] = selector
    assert label_selector(obj) == query


@pytest.mark.parametrize(
    "selector",
    [
        "app=web",
        {"matchLabels": ["app"]},
        {"matchExpressions": [{"key": "tier", "operator": "Like", "values": ["a"]}]},
        {"matchExpressions": ["tier"]},
    ],
)
def test_a_selector_the_apiserver_would_refuse_is_an_error(selector: object) -> None:
    with pytest.raises(InvalidSelector):
        label_selector({"kind": "Deployment", "spec": {"selector": selector}})
