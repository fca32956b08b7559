"""The workloads gauge's states (`protection.classify`), the census that keeps them, and the
plan and status rows as a table."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from image_cloner.controller.census import WorkloadCensus
from image_cloner.controller.steps import Step, next_step
from image_cloner.policy import Action, Decision, parse_image_patterns
from image_cloner.protection import State, classify
from image_cloner.report import Change, Row, Tone, render_table
from image_cloner.settings import Settings
from image_cloner.workloads import WorkloadKey

BACKUP = "backup.example:5000/mirror"


@pytest.fixture
def settings() -> Settings:
    return Settings.from_env({"IMAGE_CLONER_REGISTRY": BACKUP})


def deployment(image: str = "nginx:1", *, ready: bool = True, **meta: Any) -> dict[str, Any]:
    replicas = 1
    return {
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "shop", "generation": 1, **meta},
        "spec": {
            "replicas": replicas,
            "template": {"spec": {"containers": [{"name": "web", "image": image}]}},
        },
        "status": {
            "observedGeneration": 1,
            "replicas": replicas,
            "updatedReplicas": replicas,
            "availableReplicas": replicas if ready else 0,
            "readyReplicas": replicas if ready else 0,
        },
    }


CASES = [
    ("runs an original, ready", deployment(), {}, None, State.UNPROTECTED),
    ("not ready", deployment(ready=False), {}, None, State.UNPROTECTED),
    (
        "on the backup",
        deployment(f"{BACKUP}/docker.io/library/nginx:1@sha256:" + "a" * 64),
        {},
        None,
        State.PROTECTED,
    ),
    ("last pass failed", deployment(), {}, "CloneFailed: boom", State.FAILING),
    (
        "a failure does not hide protection",
        deployment(f"{BACKUP}/docker.io/library/nginx:1"),
        {},
        "CloneFailed: boom",
        State.PROTECTED,
    ),
    (
        "opted out",
        deployment(annotations={"image-cloner.io/skip": "true"}),
        {},
        None,
        State.EXCLUDED,
    ),
    ("namespace opted out", deployment(), {"image-cloner.io/skip": "true"}, "x", State.EXCLUDED),
    (
        "rolled back",
        deployment(annotations={"image-cloner.io/rewrite-rolled-back": "at t"}),
        {},
        None,
        State.FAILING,
    ),
    (
        "owned by another controller",
        deployment(ownerReferences=[{"kind": "Rollout", "name": "r", "controller": True}]),
        {},
        None,
        State.EXCLUDED,
    ),
    ("invalid reference", deployment("Not_Valid:1"), {}, None, State.UNPROTECTED),
]


@pytest.mark.parametrize(
    ("what", "obj", "namespace", "failure", "state"), CASES, ids=[c[0] for c in CASES]
)
def test_classify(
    settings: Settings,
    *,
    what: str,
    obj: dict[str, Any],
    namespace: dict[str, str],
    failure: str | None,
    state: State,
) -> None:
    found = classify(obj, settings=settings, namespace_annotations=namespace, failure=failure)
    assert found is not None
    assert found.state is state, found.reason


def test_ignored_namespace_and_excluded_images_are_excluded(settings: Settings) -> None:
    ignored = replace(settings, ignored_namespaces=frozenset({"shop"}))
    found = classify(deployment(), settings=ignored, namespace_annotations={})
    assert found is not None
    assert found.state is State.EXCLUDED
    assert "ignored namespace" in found.reason
    excluding = replace(settings, exclude_images=parse_image_patterns("nginx"))
    found = classify(deployment(), settings=excluding, namespace_annotations={})
    assert found is not None
    assert found.state is State.EXCLUDED
    plan = next_step(deployment(), decision=Decision(Action.REWRITE), settings=ignored)
    assert plan.step is Step.SKIP
    assert "ignored namespace" in plan.reason


def test_objects_of_our_owners_are_not_counted(settings: Settings) -> None:
    pod = {
        "kind": "Pod",
        "metadata": {
            "name": "web-1",
            "namespace": "shop",
            "ownerReferences": [{"kind": "ReplicaSet", "name": "web", "controller": True}],
        },
        "spec": {"containers": [{"name": "web", "image": "nginx:1"}]},
    }
    assert classify(pod, settings=settings, namespace_annotations={}) is None


def test_census_follows_events_failures_and_namespace_opt_outs(settings: Settings) -> None:
    census = WorkloadCensus(settings)
    key = WorkloadKey("Deployment", "shop", "web")
    census.seen(key, deployment())
    assert census.counts() == {("Deployment", State.UNPROTECTED): 1}
    census.reconciled(key, namespace={}, failure="CloneFailed: boom")
    assert census.counts() == {("Deployment", State.FAILING): 1}
    census.reconciled(key, namespace={"image-cloner.io/skip": "true"}, failure=None)
    assert census.counts() == {("Deployment", State.EXCLUDED): 1}
    census.reconciled(key, namespace={}, failure=None)
    census.seen(key, deployment(f"{BACKUP}/docker.io/library/nginx:1"))
    assert census.counts() == {("Deployment", State.PROTECTED): 1}
    census.forget(key)
    assert census.counts() == {}


def test_plan_rows_fit_80_columns_and_carry_their_facts_in_json() -> None:
    facts = (("digest", "sha256:" + "b" * 64), ("in_backup", False), ("bytes", 4096))
    row = Row(
        kind="Deployment",
        namespace="a-rather-long-namespace-name",
        name="a-rather-long-workload-name",
        outcome="rewrite",
        tone=Tone.PLANNED,
        detail="web: copy 4.1 kB (linux/amd64,linux/arm64); sidecar: in the backup already",
        changes=(Change("web", "nginx:1", f"{BACKUP}/docker.io/library/nginx:1", facts),),
    )
    text = render_table([row], width=80)
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "\x1b[" not in text
    (image,) = row.as_json()["images"]
    assert image["digest"] == facts[0][1]
    assert image["in_backup"] is False
