"""Never fight a workload's owner: the gate's decisions, through the reconciler, on the fake API.

What a user sees is asserted on the fake's state: the workload's images and annotations,
the patches applied, the Events posted, the Namespace reads made. tests/e2e/test_ownership.py
proves the same on a real apiserver, with kubectl as the "GitOps" tool.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from image_cloner.controller.decisions import WorkloadLog
from image_cloner.controller.gate import (
    INVALID_ANNOTATION,
    REWRITE_REVERTED,
    REWRITE_SKIPPED,
    Gate,
)
from image_cloner.controller.kube_errors import api_error
from image_cloner.controller.queue import Retry
from image_cloner.controller.reconcile import IMAGES_CLONED, Reconciler
from image_cloner.health import Health
from image_cloner.metrics import Metrics
from image_cloner.policy import REVERTED_ANNOTATION, SKIP_ANNOTATION, Action
from image_cloner.settings import Settings
from image_cloner.workloads import ORIGINAL_IMAGES_ANNOTATION, WorkloadKey
from tests.support.fake_copier import FakeCopier, pinned
from tests.support.fake_kube import FakeKube, deployment
from tests.unit.test_reconciler import BACKUP, containers

BASE_ENV = {"IMAGE_CLONER_REGISTRY": BACKUP}
WEB = WorkloadKey("Deployment", "demo", "web")


def reconciler_for(kube: FakeKube, copier: FakeCopier, **env: str) -> Reconciler:
    settings = Settings.from_env({**BASE_ENV, **env})
    return Reconciler(kube=kube, copier=copier, settings=settings, metrics=Metrics(health=Health()))


@pytest.fixture
def kube() -> FakeKube:
    return FakeKube()


@pytest.fixture
def copier() -> FakeCopier:
    return FakeCopier()


@pytest.fixture
def reconciler(kube: FakeKube, copier: FakeCopier) -> Reconciler:
    return reconciler_for(kube, copier)


def reasons(kube: FakeKube) -> list[tuple[str, bool]]:
    return [(e.reason, e.warning) for e in kube.events]


def annotations_on(kube: FakeKube, name: str = "web") -> dict[str, str]:
    annotated: dict[str, str] = kube.get("Deployment", "demo", name)["metadata"].get(
        "annotations", {}
    )
    return annotated


def managed_by(manager: str, time: str) -> dict[str, Any]:
    """A managedFields entry owning the template's containers, as the apiserver writes it."""
    fields: dict[str, Any] = {"f:spec": {"f:template": {"f:spec": {"f:containers": {}}}}}
    return {"manager": manager, "operation": "Update", "time": time, "fieldsV1": fields}


# --- opt-outs ------------------------------------------------------------------------


async def test_skip_on_the_workload_leaves_it_alone(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler, caplog: pytest.LogCaptureFixture
) -> None:
    kube.add(deployment("web", {"app": "nginx:1"}, annotations={SKIP_ANNOTATION: "true"}))
    with caplog.at_level(logging.DEBUG):
        await reconciler(WEB)
    assert (copier.copied, kube.patches, kube.events) == ([], [], [])
    assert any(r.getMessage().startswith("deployment skipped") for r in caplog.records)


async def test_skip_on_the_namespace_leaves_its_workloads_alone(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add_namespace("demo", {SKIP_ANNOTATION: "true"})
    kube.add(deployment("web", {"app": "nginx:1"}))
    await reconciler(WEB)
    assert (copier.copied, kube.patches, kube.events) == ([], [], [])


async def test_workload_false_overrides_namespace_true(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add_namespace("demo", {SKIP_ANNOTATION: "true"})
    kube.add(deployment("web", {"app": "nginx:1"}, annotations={SKIP_ANNOTATION: "false"}))
    await reconciler(WEB)
    assert containers(kube.get("Deployment", "demo", "web")) == {
        "app": f"{BACKUP}/{pinned('nginx:1')}"
    }


@pytest.mark.parametrize("where", ["workload", "namespace"])
async def test_a_garbage_skip_value_is_a_warning_and_leaves_it_alone(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler, where: str
) -> None:
    garbage = {SKIP_ANNOTATION: "yes please"}
    if where == "namespace":
        kube.add_namespace("demo", garbage)
    kube.add(
        deployment("web", {"app": "nginx:1"}, annotations=garbage if where == "workload" else None)
    )
    await reconciler(WEB)
    assert (copier.copied, kube.patches) == ([], [])
    (event,) = kube.events
    assert (event.reason, event.warning) == (INVALID_ANNOTATION, True)
    assert "'yes please'" in event.message
    assert "treated as true" in event.message


async def test_a_workload_being_deleted_is_left_alone(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    obj = deployment("web", {"app": "nginx:1"})
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    kube.add(obj)
    await reconciler(WEB)
    assert (copier.copied, kube.patches, kube.events) == ([], [], [])


# --- owned objects -------------------------------------------------------------------


def owned(name: str) -> dict[str, Any]:
    obj = deployment(name, {"app": "nginx:1"})
    obj["metadata"]["ownerReferences"] = [
        {"apiVersion": "db.example/v1", "kind": "Database", "name": "db", "uid": "u1"},
        {"apiVersion": "db.example/v1", "kind": "Operator", "name": "db", "controller": True},
    ]
    return obj


async def test_an_owned_workload_is_backed_up_not_rewritten(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(owned("web"))
    await reconciler(WEB)
    await reconciler(WEB)
    # Backed up on the first pass; the second relies on that copy, verified moments ago.
    assert copier.copied == [(pinned("nginx:1"), f"{BACKUP}/{pinned('nginx:1')}")]
    assert kube.patches == []
    assert containers(kube.get("Deployment", "demo", "web")) == {"app": "nginx:1"}
    assert reasons(kube) == [(REWRITE_SKIPPED, False)] * 2
    assert "managed by Operator/db" in kube.events[0].message
    assert kube.events[0] == kube.events[1], "the same Event each pass: the API counts it up"


async def test_rewrite_owned_allows_it(kube: FakeKube, copier: FakeCopier) -> None:
    kube.add(owned("web"))
    await reconciler_for(kube, copier, IMAGE_CLONER_REWRITE_OWNED="true")(WEB)
    assert containers(kube.get("Deployment", "demo", "web")) == {
        "app": f"{BACKUP}/{pinned('nginx:1')}"
    }
    assert reasons(kube) == [(IMAGES_CLONED, False)]


# --- excluded images -----------------------------------------------------------------


async def test_excluded_images_are_neither_copied_nor_rewritten(
    kube: FakeKube, copier: FakeCopier
) -> None:
    kube.add(
        deployment(
            "web",
            {"app": "registry.corp.example/team/app:3", "side": "busybox:1", "proxy": "envoy:1"},
        )
    )
    env = {"IMAGE_CLONER_EXCLUDE_IMAGES": "registry.corp.example/*, envoy"}
    await reconciler_for(kube, copier, **env)(WEB)
    assert copier.copied == [(pinned("busybox:1"), f"{BACKUP}/{pinned('busybox:1')}")]
    obj = kube.get("Deployment", "demo", "web")
    assert containers(obj) == {
        "app": "registry.corp.example/team/app:3",
        "side": f"{BACKUP}/{pinned('busybox:1')}",
        "proxy": "envoy:1",
    }
    recorded = json.loads(obj["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION])
    assert recorded == {"side": "busybox:1"}


# --- reverted rewrites ---------------------------------------------------------------


def revert(kube: FakeKube, name: str, images: dict[str, str], *, manager: str | None) -> None:
    """Someone else puts images back, as the apiserver records it in managedFields."""

    def change(obj: dict[str, Any]) -> None:
        for container in obj["spec"]["template"]["spec"]["containers"]:
            container["image"] = images.get(container["name"], container["image"])
        entries = [managed_by("image-cloner", "2026-01-01T00:00:05Z")]
        if manager is not None:
            entries.insert(0, managed_by(manager, "2026-01-01T00:00:09Z"))
        obj["metadata"]["managedFields"] = entries

    kube.edit("Deployment", "demo", name, change)


async def test_a_reverted_rewrite_is_marked_not_redone_until_the_marker_goes(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1"}))
    await reconciler(WEB)
    revert(kube, "web", {"app": "nginx:1"}, manager="argocd-controller")

    await reconciler(WEB)
    await reconciler(WEB)  # a resync: still not rewritten, no second marker
    obj = kube.get("Deployment", "demo", "web")
    assert containers(obj) == {"app": "nginx:1"}
    marker = obj["metadata"]["annotations"][REVERTED_ANNOTATION]
    assert marker.startswith("by argocd-controller at 20")
    assert ORIGINAL_IMAGES_ANNOTATION not in obj["metadata"]["annotations"]
    assert len(kube.patches) == 2, "the rewrite and the marker, nothing more"
    assert kube.patches[1][0] == {
        "op": "test",
        "path": "/metadata/resourceVersion",
        "value": kube.patches[1][0]["value"],
    }
    assert reasons(kube) == [
        (IMAGES_CLONED, False),
        (REWRITE_REVERTED, True),
        (REWRITE_SKIPPED, False),
        (REWRITE_SKIPPED, False),
    ]
    assert "argocd-controller" in kube.events[1].message
    assert REVERTED_ANNOTATION in kube.events[2].message
    assert len(copier.copied) == 1, "backed up once: later passes rely on the verified copy"

    # A person removes the marker: the workload is rewritten again.
    kube.edit("Deployment", "demo", "web", lambda o: o["metadata"]["annotations"].clear())
    await reconciler(WEB)
    assert containers(kube.get("Deployment", "demo", "web")) == {
        "app": f"{BACKUP}/{pinned('nginx:1')}"
    }


async def test_a_revert_without_a_known_manager_is_still_marked(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1"}))
    await reconciler(WEB)
    revert(kube, "web", {"app": "nginx:1"}, manager=None)
    await reconciler(WEB)
    assert annotations_on(kube)[REVERTED_ANNOTATION].startswith("at 20")
    assert "another field manager put the original images back" in kube.events[1].message


async def test_a_partial_revert_stops_rewrites_and_keeps_the_other_backups(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1", "side": "busybox:1"}))
    await reconciler(WEB)
    revert(kube, "web", {"app": "nginx:1"}, manager="flux")
    await reconciler(WEB)

    obj = kube.get("Deployment", "demo", "web")
    assert containers(obj) == {"app": "nginx:1", "side": f"{BACKUP}/{pinned('busybox:1')}"}
    assert REVERTED_ANNOTATION in obj["metadata"]["annotations"]
    recorded = json.loads(obj["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION])
    assert recorded == {"side": "busybox:1"}, "the container still on its backup stays recorded"
    assert "containers app" in kube.events[1].message


async def test_a_marker_patch_that_meets_an_edit_is_decided_again(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.add(deployment("web", {"app": "nginx:1"}))
    await reconciler(WEB)
    revert(kube, "web", {"app": "nginx:1"}, manager="kubectl")
    edits = iter([lambda obj: obj["metadata"].setdefault("labels", {}).update(edited="yes")])

    def user_edits_first() -> None:
        for edit in edits:
            kube.edit("Deployment", "demo", "web", edit)
            return

    kube.before_patch = user_edits_first
    await reconciler(WEB)
    obj = kube.get("Deployment", "demo", "web")
    assert obj["metadata"]["labels"] == {"edited": "yes"}
    assert REVERTED_ANNOTATION in obj["metadata"]["annotations"]
    assert reasons(kube).count((REWRITE_REVERTED, True)) == 1


# --- the namespace read --------------------------------------------------------------


def gate_for(kube: FakeKube, clock: list[float]) -> Gate:
    settings = Settings.from_env(BASE_ENV)
    return Gate(kube=kube, settings=settings, namespace_ttl=30.0, clock=lambda: clock[0])


async def test_namespace_annotations_are_read_once_per_period(kube: FakeKube) -> None:
    clock = [1000.0]
    gate = gate_for(kube, clock)
    kube.add_namespace("demo", {SKIP_ANNOTATION: "true"})
    found = await asyncio.gather(*(gate.namespace_annotations("demo") for _ in range(20)))
    assert all(a == {SKIP_ANNOTATION: "true"} for a in found)
    await gate.namespace_annotations("demo")
    assert kube.namespace_reads == ["demo"], "concurrent and later callers share one read"

    kube.add_namespace("demo", {})  # the opt-out removed: seen once the period is over
    clock[0] += 29.0
    assert await gate.namespace_annotations("demo") == {SKIP_ANNOTATION: "true"}
    clock[0] += 2.0
    assert await gate.namespace_annotations("demo") == {}
    assert kube.namespace_reads == ["demo", "demo"]


async def test_a_thousand_workloads_in_one_namespace_cost_one_read(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    for n in range(50):
        kube.add(deployment(f"web-{n}", {"app": "nginx:1"}))
    await asyncio.gather(
        *(reconciler(WorkloadKey("Deployment", "demo", f"web-{n}")) for n in range(50))
    )
    assert kube.namespace_reads == ["demo"]


@pytest.mark.parametrize("answer", [(403, "Forbidden"), (404, "NotFound")])
async def test_a_namespace_we_may_not_read_counts_as_unannotated(
    kube: FakeKube,
    reconciler: Reconciler,
    caplog: pytest.LogCaptureFixture,
    answer: tuple[int, str],
) -> None:
    status, reason = answer
    body = json.dumps({"kind": "Status", "code": status, "reason": reason, "message": "no"})
    kube.namespace_error = api_error(status, body, fallback="")
    kube.add(deployment("web", {"app": "nginx:1"}))
    with caplog.at_level(logging.WARNING):
        await reconciler(WEB)
    assert containers(kube.get("Deployment", "demo", "web")) == {
        "app": f"{BACKUP}/{pinned('nginx:1')}"
    }
    (line,) = [r for r in caplog.records if "namespace" in r.getMessage()]
    assert line.getMessage().startswith("cannot read namespace annotations")


async def test_a_namespace_read_that_fails_otherwise_is_retried_untouched(
    kube: FakeKube, copier: FakeCopier, reconciler: Reconciler
) -> None:
    kube.namespace_error = api_error(0, None, fallback="connection refused")
    kube.add(deployment("web", {"app": "nginx:1"}))
    with pytest.raises(Retry):
        await reconciler(WEB)
    assert (copier.copied, kube.patches, kube.events) == ([], [], [])


async def test_gate_decision_for_a_plain_workload_is_rewrite(kube: FakeKube) -> None:
    gate = gate_for(kube, [0.0])
    obj = kube.add(deployment("web", {"app": "nginx:1"}))
    decision = await gate.check(WEB, obj, WorkloadLog("deployment", name="web", namespace="demo"))
    assert decision is not None
    assert decision.action is Action.REWRITE
