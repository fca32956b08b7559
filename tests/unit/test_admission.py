"""The admission decision and the index of verified backups, table by table (no I/O)."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonpatch
import pytest

from image_cloner.admission import AdmissionRules, decide
from image_cloner.admission_index import BackupIndex, VerifiedBackup, copied_anonymously
from image_cloner.mapping import parse_backup_location, target_for
from image_cloner.oci.references import parse_reference
from image_cloner.policy import parse_image_patterns

BACKUP = parse_backup_location("backup.example:5000/mirror")
DIGEST = "sha256:" + "a" * 64
ANNOTATION = "image-cloner.io/original-images"


def pinned(image: str) -> str:
    return str(target_for(parse_reference(image), BACKUP).with_digest(DIGEST))


def index_with(*images: str, anonymous: bool = True) -> BackupIndex:
    index = BackupIndex()
    for image in images:
        source = parse_reference(image)
        index.record(source, target_for(source, BACKUP).with_digest(DIGEST), anonymous=anonymous)
    return index


def review(spec: dict[str, Any], *, namespace: str = "shop", **meta: Any) -> dict[str, Any]:
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u-1", "namespace": namespace, "operation": "CREATE", "object": pod},
    }


def rules(index: BackupIndex, **overrides: Any) -> AdmissionRules:
    return AdmissionRules(**{"backup": BACKUP, "index": index, "registry_ok": True, **overrides})


def patched(answer: dict[str, Any], pod: dict[str, Any]) -> dict[str, Any]:
    response = answer["response"]
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    result: dict[str, Any] = jsonpatch.apply_patch(pod, ops)
    return result


SPEC = {
    "initContainers": [{"name": "init", "image": "busybox:1"}],
    "containers": [{"name": "web", "image": "nginx:1"}, {"name": "side", "image": "redis:7"}],
    "ephemeralContainers": [{"name": "debug", "image": "nginx:1"}],
}


def test_known_images_are_rewritten_to_the_pinned_backup_with_annotation_and_secret() -> None:
    request = review(SPEC)
    decision = decide(request, rules(index_with("nginx:1", "busybox:1"), pull_secret="pull"))
    assert decision.response["response"]["allowed"] is True
    assert decision.response["response"]["uid"] == "u-1"
    pod = patched(decision.response, request["request"]["object"])
    assert pod["spec"]["containers"][0]["image"] == pinned("nginx:1")
    assert pod["spec"]["containers"][0]["image"].endswith("@" + DIGEST)
    assert pod["spec"]["initContainers"][0]["image"] == pinned("busybox:1")
    assert pod["spec"]["containers"][1]["image"] == "redis:7"  # unknown: unchanged ...
    assert [str(r) for r in decision.queued] == ["redis:7"]  # ... and queued
    assert pod["spec"]["ephemeralContainers"][0]["image"] == "nginx:1"
    assert json.loads(pod["metadata"]["annotations"][ANNOTATION]) == {
        "init": "busybox:1",
        "web": "nginx:1",
    }
    assert pod["spec"]["imagePullSecrets"] == [{"name": "pull"}]


def test_unknown_images_admit_unchanged_and_are_queued() -> None:
    decision = decide(review(SPEC), rules(BackupIndex()))
    response = decision.response["response"]
    assert response == {"uid": "u-1", "allowed": True}
    assert sorted(str(r) for r in decision.queued) == ["busybox:1", "nginx:1", "redis:7"]
    assert decision.rewrites == ()


def test_an_unhealthy_backup_registry_rewrites_nothing() -> None:
    decision = decide(review(SPEC), rules(index_with("nginx:1", "busybox:1"), registry_ok=False))
    assert "patch" not in decision.response["response"]
    assert decision.rewrites == ()
    # Queued all the same: the copy (or its verification) is what brings them back.
    assert sorted(str(r) for r in decision.queued) == ["busybox:1", "nginx:1", "redis:7"]


@pytest.mark.parametrize(
    "meta",
    [
        {"labels": {"image-cloner.io/skip": "true"}},
        {"annotations": {"image-cloner.io/skip": "True"}},
    ],
)
def test_opted_out_pods_are_left_alone_and_nothing_is_queued(meta: dict[str, Any]) -> None:
    decision = decide(review(SPEC, **meta), rules(index_with("nginx:1")))
    assert "patch" not in decision.response["response"]
    assert decision.queued == ()


def test_ignored_namespaces_excluded_and_backup_images_are_left_alone() -> None:
    spec = {
        "containers": [
            {"name": "a", "image": pinned("nginx:1")},
            {"name": "b", "image": "corp.example/x:1"},
        ]
    }
    decision = decide(
        review(spec),
        rules(
            index_with("corp.example/x:1"), exclude_images=parse_image_patterns("corp.example/*")
        ),
    )
    assert "patch" not in decision.response["response"]
    assert decision.queued == ()
    decision = decide(
        review(SPEC), rules(index_with("nginx:1"), ignored_namespaces=frozenset({"shop"}))
    )
    assert "patch" not in decision.response["response"]
    assert decision.queued == ()


def test_private_backups_need_the_namespace_to_be_allowed() -> None:
    index = index_with("nginx:1", anonymous=False)
    decision = decide(review(SPEC), rules(index))
    assert decision.rewrites == ()

    def allowed(namespace: str, backup: VerifiedBackup) -> bool:
        return namespace == "shop"

    decision = decide(review(SPEC), rules(index, may_use=allowed))
    assert [r.container for r in decision.rewrites] == ["web"]
    decision = decide(review(SPEC, namespace="other"), rules(index, may_use=allowed))
    assert decision.rewrites == ()


def test_existing_annotations_and_pull_secrets_are_kept() -> None:
    spec = {
        "containers": [{"name": "web", "image": "nginx:1"}],
        "imagePullSecrets": [{"name": "own"}],
    }
    request = review(
        spec,
        annotations={"team": "a"},
        ownerReferences=[
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-1",
                "uid": "r",
                "controller": True,
            }
        ],
    )
    decision = decide(request, rules(index_with("docker.io/library/nginx:1"), pull_secret="pull"))
    pod = patched(decision.response, request["request"]["object"])
    assert pod["metadata"]["annotations"]["team"] == "a"
    assert ANNOTATION in pod["metadata"]["annotations"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "own"}, {"name": "pull"}]
    assert decision.owner is not None
    assert decision.owner["name"] == "web-1"


def test_a_review_without_a_request_is_refused() -> None:
    with pytest.raises(ValueError, match=r"request\.uid"):
        decide({"kind": "AdmissionReview"}, rules(BackupIndex()))
    with pytest.raises(ValueError, match=r"request\.uid"):
        decide([], rules(BackupIndex()))  # type: ignore[arg-type]


def test_the_index_normalises_sources_and_forgets_the_least_recently_used() -> None:
    index = BackupIndex(size=2)
    for image in ("nginx:1", "redis:7"):
        source = parse_reference(image)
        index.record(source, target_for(source, BACKUP).with_digest(DIGEST), anonymous=True)
    assert str(index.lookup("ns", "docker.io/library/nginx:1")) == pinned("nginx:1")
    source = parse_reference("busybox:1")
    index.record(source, target_for(source, BACKUP).with_digest(DIGEST), anonymous=True)
    assert len(index) == 2
    assert index.lookup("ns", "redis:7") is None  # least recently used
    assert index.lookup("ns", "nginx:1") is not None
    assert index.lookup("ns", "not a reference") is None
    with pytest.raises(ValueError, match="not pinned"):
        index.record(source, target_for(source, BACKUP), anonymous=True)


def test_a_copy_is_anonymous_when_the_copier_had_no_credentials_for_the_source_host() -> None:
    assert copied_anonymously(parse_reference("nginx:1"), {"backup.example:5000": object()})
    assert not copied_anonymously(parse_reference("corp.example/x:1"), {"corp.example": object()})
