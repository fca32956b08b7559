"""Whose workload is it: opt-out precedence, owners, markers, reverts, image patterns."""

from __future__ import annotations

from typing import Any

import pytest

from image_cloner.oci.references import parse_reference
from image_cloner.policy import (
    REVERTED_ANNOTATION,
    ROLLED_BACK_ANNOTATION,
    SKIP_ANNOTATION,
    Action,
    decide,
    images_manager,
    parse_image_patterns,
    reverted,
)


def workload(annotations: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": "w", "annotations": annotations or {}, **meta}}


OWNED: dict[str, Any] = {
    "ownerReferences": [{"kind": "Operator", "name": "db", "controller": True}]
}


@pytest.mark.parametrize(
    ("on_workload", "on_namespace", "expected"),
    [
        (None, None, Action.REWRITE),
        ("true", None, Action.SKIP),
        (None, "true", Action.SKIP),
        ("false", "true", Action.REWRITE),  # the workload's own word wins
        ("TRUE", None, Action.SKIP),
        ("false", None, Action.REWRITE),
        (None, "false", Action.REWRITE),
        ("yes please", None, Action.SKIP),  # garbage: leave it alone, and say so
        (None, "1", Action.SKIP),
    ],
)
def test_skip_annotation_precedence(
    on_workload: str | None, on_namespace: str | None, expected: Action
) -> None:
    obj = workload({SKIP_ANNOTATION: on_workload} if on_workload is not None else None)
    namespace = {SKIP_ANNOTATION: on_namespace} if on_namespace is not None else {}
    decision = decide(obj, namespace_annotations=namespace, rewrite_owned=False)
    assert decision.action is expected


def test_garbage_annotation_is_a_warning_naming_where_it_is() -> None:
    decision = decide(
        workload(), namespace_annotations={SKIP_ANNOTATION: "maybe"}, rewrite_owned=False
    )
    assert decision.action is Action.SKIP
    assert decision.warning is not None
    assert "namespace" in decision.warning
    assert "'maybe'" in decision.warning


def test_objects_being_deleted_are_left_alone() -> None:
    obj = workload(deletionTimestamp="2026-12-01T00:00:00Z")
    assert decide(obj, namespace_annotations=None, rewrite_owned=True).action is Action.SKIP


@pytest.mark.parametrize("marker", [REVERTED_ANNOTATION, ROLLED_BACK_ANNOTATION])
def test_markers_allow_backups_but_no_rewrite(marker: str) -> None:
    decision = decide(workload({marker: "x"}), namespace_annotations=None, rewrite_owned=True)
    assert decision.action is Action.COPY_ONLY
    assert marker in decision.reason


def test_owned_objects_are_copied_only_unless_allowed() -> None:
    obj = workload(**OWNED)
    decision = decide(obj, namespace_annotations=None, rewrite_owned=False)
    assert decision == decision.__class__(Action.COPY_ONLY, "managed by Operator/db")
    assert decide(obj, namespace_annotations=None, rewrite_owned=True).action is Action.REWRITE
    not_controller = workload(ownerReferences=[{"kind": "X", "name": "y", "controller": False}])
    assert decide(not_controller, namespace_annotations=None, rewrite_owned=False).action is (
        Action.REWRITE
    )


def test_skip_beats_markers_and_owners() -> None:
    obj = workload({SKIP_ANNOTATION: "true", REVERTED_ANNOTATION: "x"}, **OWNED)
    assert decide(obj, namespace_annotations=None, rewrite_owned=False).action is Action.SKIP


def test_reverted_finds_containers_back_on_their_originals() -> None:
    originals = {"web": "nginx:1", "sidecar": "envoy:2"}
    assert reverted({"web": "backup/nginx:1", "sidecar": "backup/envoy:2"}, originals) == []
    assert reverted({"web": "nginx:1", "sidecar": "backup/envoy:2"}, originals) == ["web"]
    assert reverted({"web": "nginx:2", "sidecar": "envoy:2"}, originals) == ["sidecar"]
    assert reverted({"web": "nginx:1"}, {}) == []


def _entry(manager: str, time: str, *, containers: bool = True, sub: str | None = None) -> Any:
    spec: dict[str, Any] = {"f:containers": {}} if containers else {"f:replicas": {}}
    fields = {"f:spec": {"f:template": {"f:spec": spec}}} if containers else {"f:spec": spec}
    entry: dict[str, Any] = {"manager": manager, "time": time, "fieldsV1": fields}
    if sub:
        entry["subresource"] = sub
    return entry


def test_images_manager_is_the_newest_other_writer_of_the_containers() -> None:
    obj = workload(
        managedFields=[
            _entry("kubectl-client-side-apply", "2026-12-01T10:00:00Z"),
            _entry("argocd-controller", "2026-12-01T11:00:00Z"),
            _entry("image-cloner", "2026-12-01T12:00:00Z"),
            _entry("kube-controller-manager", "2026-12-01T13:00:00Z", sub="status"),
            _entry("hpa", "2026-12-01T14:00:00Z", containers=False),
        ]
    )
    assert images_manager(obj, ours="image-cloner") == "argocd-controller"
    assert images_manager(workload(), ours="image-cloner") is None


@pytest.mark.parametrize(
    ("patterns", "image", "matches"),
    [
        ("registry.corp.example/*", "registry.corp.example/team/app:1", True),
        ("registry.corp.example/*", "registry.corp.example.evil.io/app:1", False),
        ("*.corp.example/*", "eu.corp.example/app", True),
        ("nginx", "nginx:1.21", True),
        ("nginx", "docker.io/library/nginx@sha256:" + "a" * 64, True),
        ("nginx", "quay.io/nginx/nginx", False),
        ("bitnami/*", "bitnami/redis:7", True),
        ("bitnami/*", "redis:7", False),
        ("quay.io/org/app?", "quay.io/org/app1", True),
        ("quay.io/a, ghcr.io/b/*", "ghcr.io/b/c", True),
    ],
)
def test_image_patterns(patterns: str, image: str, matches: bool) -> None:
    ref = parse_reference(image)
    assert any(p.matches(ref) for p in parse_image_patterns(patterns)) is matches


@pytest.mark.parametrize("bad", ["nginx:1.21", "UPPER CASE/*", "a@sha256:x", "http://x/y"])
def test_bad_image_patterns_are_refused_with_the_pattern_named(bad: str) -> None:
    with pytest.raises(ValueError, match="image pattern"):
        parse_image_patterns(bad)
