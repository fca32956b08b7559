"""`revert`: the patch that undoes a rewrite, the decision per workload, the command's input.

The patch is checked by applying it for real (jsonpatch, RFC 6902 `test` ops included) to
what `build_patch` made of a workload: the template must come back exactly. The flow runs
on `FakeKube`; the test bed proves it against a real apiserver (tests/e2e/test_revert.py).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonpatch
import pytest

from image_cloner.cli import main
from image_cloner.controller.operations import Scope, parse_target
from image_cloner.controller.revert import IMAGES_REVERTED, plan_revert, revert, summary
from image_cloner.mapping import parse_backup_location
from image_cloner.report import Row, Tone
from image_cloner.workloads import (
    ORIGINAL_IMAGES_ANNOTATION,
    PatchError,
    build_patch,
    build_revert_patch,
)
from tests.support.fake_kube import FakeKube, deployment

BACKUP = parse_backup_location("backup.example:5000/mirror")
SECRET = "image-cloner-pull"


def daemonset(pull_secrets: list[str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "initContainers": [{"name": "setup", "image": "busybox:1"}],
        "containers": [{"name": "agent", "image": "quay.io/org/agent:2"}],
    }
    if pull_secrets is not None:
        spec["imagePullSecrets"] = [{"name": n} for n in pull_secrets]
    return {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {"name": "agent", "namespace": "ops", "resourceVersion": "7"},
        "spec": {"template": {"metadata": {"labels": {"app": "agent"}}, "spec": spec}},
    }


def rewritten(obj: dict[str, Any], *, pull_secret: str | None = SECRET) -> dict[str, Any]:
    """What the controller makes of `obj`: every image pointed at the backup."""
    rewrites = {
        "setup": "backup.example:5000/mirror/busybox:1",
        "agent": "backup.example:5000/mirror/quay.io/org/agent:2",
    }
    patch = build_patch(obj, rewrites, pull_secret=pull_secret)
    result: dict[str, Any] = jsonpatch.apply_patch(obj, patch)
    result["metadata"]["resourceVersion"] = "8"
    return result


def reverted(obj: dict[str, Any]) -> dict[str, Any]:
    plan = plan_revert(obj, backup=BACKUP, pull_secret=SECRET)
    assert not isinstance(plan, Row), plan
    result: dict[str, Any] = jsonpatch.apply_patch(obj, plan.patch)
    return result


# --- the patch -----------------------------------------------------------------------


@pytest.mark.parametrize("pull_secrets", [None, ["mine"], ["mine", "other"]])
def test_revert_restores_the_template_exactly(pull_secrets: list[str] | None) -> None:
    original = daemonset(pull_secrets)
    back = reverted(rewritten(original))
    assert back["spec"] == original["spec"]
    assert ORIGINAL_IMAGES_ANNOTATION not in back["metadata"].get("annotations", {})


def test_revert_keeps_other_annotations_and_a_secret_the_user_listed_twice() -> None:
    original = daemonset(["mine"])
    original["metadata"]["annotations"] = {"team": "ops"}
    done = rewritten(original)
    done["spec"]["template"]["spec"]["imagePullSecrets"].insert(0, {"name": SECRET})
    back = reverted(done)
    assert back["metadata"]["annotations"] == {"team": "ops"}
    assert back["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "mine"}]


def test_revert_patch_is_guarded_like_the_rewrite() -> None:
    done = rewritten(daemonset())
    patch = build_revert_patch(done, {"agent": "quay.io/org/agent:2"}, pull_secret=SECRET)
    assert patch[0] == {"op": "test", "path": "/metadata/resourceVersion", "value": "8"}
    pointer = "/spec/template/spec/containers/0/image"
    backup_image = "backup.example:5000/mirror/quay.io/org/agent:2"
    assert {"op": "test", "path": pointer, "value": backup_image} in patch
    assert {"op": "replace", "path": pointer, "value": "quay.io/org/agent:2"} in patch
    # A concurrent edit of the image makes the whole patch fail, nothing half-applied.
    done["spec"]["template"]["spec"]["containers"][0]["image"] = "edited:1"
    with pytest.raises(jsonpatch.JsonPatchTestFailed):
        jsonpatch.apply_patch(done, patch)


def test_nothing_to_undo_is_an_empty_patch() -> None:
    assert build_revert_patch(daemonset(), {}, pull_secret=SECRET) == []


def test_revert_patch_refuses_what_does_not_fit() -> None:
    with pytest.raises(PatchError, match="no container named 'web'"):
        build_revert_patch(daemonset(), {"web": "nginx:1"})
    unversioned = daemonset()
    del unversioned["metadata"]["resourceVersion"]
    with pytest.raises(PatchError, match="resourceVersion"):
        build_revert_patch(unversioned, {"agent": "nginx:1"})


# --- the decision --------------------------------------------------------------------


def test_a_container_edited_after_the_rewrite_leaves_the_workload_alone() -> None:
    done = rewritten(daemonset())
    done["spec"]["template"]["spec"]["containers"][0]["image"] = "quay.io/org/agent:3"
    plan = plan_revert(done, backup=BACKUP, pull_secret=SECRET)
    assert isinstance(plan, Row)
    assert (plan.outcome, plan.tone) == ("changed", Tone.PROBLEM)
    assert "container agent runs quay.io/org/agent:3" in plan.detail


def test_a_removed_container_and_a_damaged_annotation_are_reported() -> None:
    done = rewritten(daemonset())
    del done["spec"]["template"]["spec"]["initContainers"]
    gone = plan_revert(done, backup=BACKUP, pull_secret=SECRET)
    assert isinstance(gone, Row)
    assert "container setup is gone" in gone.detail
    done["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION] = "not json"
    damaged = plan_revert(done, backup=BACKUP, pull_secret=SECRET)
    assert isinstance(damaged, Row)
    assert damaged.outcome == "failed"


def test_images_already_back_to_the_originals_only_lose_the_annotation() -> None:
    original = daemonset()
    done = rewritten(original)
    done["spec"]["template"]["spec"] = copy.deepcopy(original["spec"]["template"]["spec"])
    back = reverted(done)
    assert back["spec"] == original["spec"]
    assert ORIGINAL_IMAGES_ANNOTATION not in back["metadata"]["annotations"]


# --- the flow, on the fake API -------------------------------------------------------


def rewritten_deployment(kube: FakeKube, name: str, namespace: str = "demo") -> None:
    obj = deployment(name, {"web": "nginx:1"}, namespace=namespace)
    obj["metadata"]["resourceVersion"] = "1"
    patch = build_patch(obj, {"web": "backup.example:5000/mirror/nginx:1"}, pull_secret=SECRET)
    kube.add(jsonpatch.apply_patch(obj, patch))
    kube.secrets[(namespace, SECRET)] = "backup.example:5000"


async def test_revert_all_then_again_is_a_no_op() -> None:
    kube = FakeKube()
    rewritten_deployment(kube, "web")
    kube.add(deployment("untouched", {"web": "nginx:1"}))
    rows = await revert(kube, Scope(namespace=None), backup=BACKUP, pull_secret=SECRET)
    assert [(r.kind, r.name, r.outcome) for r in rows] == [
        ("Deployment", "web", "reverted"),
        ("Secret", SECRET, "deleted"),
    ]
    assert rows[0].detail == "backup.example:5000/mirror/nginx:1 → nginx:1"
    web = kube.get("Deployment", "demo", "web")
    assert web["spec"]["template"]["spec"] == {"containers": [{"name": "web", "image": "nginx:1"}]}
    assert [(e.name, e.reason, e.warning) for e in kube.events] == [("web", IMAGES_REVERTED, False)]
    again = await revert(kube, Scope(namespace=None), backup=BACKUP, pull_secret=SECRET)
    assert again == []
    assert summary(again, dry_run=False).startswith("nothing to revert")


async def test_the_secret_stays_while_a_changed_workload_uses_it() -> None:
    kube = FakeKube()
    rewritten_deployment(kube, "web")
    rewritten_deployment(kube, "edited")
    kube.edit(
        "Deployment",
        "demo",
        "edited",
        lambda o: o["spec"]["template"]["spec"]["containers"][0].update(image="nginx:2"),
    )
    rows = await revert(kube, Scope(namespace="demo"), backup=BACKUP, pull_secret=SECRET)
    outcomes = {(r.kind, r.name): (r.outcome, r.tone) for r in rows}
    assert outcomes == {
        ("Deployment", "edited"): ("changed", Tone.PROBLEM),
        ("Deployment", "web"): ("reverted", Tone.DONE),
        ("Secret", SECRET): ("in-use", Tone.NOTHING),
    }
    assert ("demo", SECRET) in kube.secrets


async def test_dry_run_changes_nothing_and_says_what_it_would_do() -> None:
    kube = FakeKube()
    rewritten_deployment(kube, "web")
    before = copy.deepcopy(kube.objects)
    rows = await revert(
        kube, Scope(namespace=None), backup=BACKUP, pull_secret=SECRET, dry_run=True
    )
    assert [r.outcome for r in rows] == ["would-revert", "would-delete"]
    assert kube.objects == before
    assert not kube.patches
    assert not kube.events
    assert ("demo", SECRET) in kube.secrets


async def test_named_targets_report_missing_and_unrewritten_workloads() -> None:
    kube = FakeKube()
    kube.add(deployment("plain", {"web": "nginx:1"}))
    scope = Scope(
        namespace="demo",
        targets=(parse_target("deployment/plain"), parse_target("DaemonSets/none")),
    )
    rows = await revert(kube, scope, backup=BACKUP, pull_secret=SECRET)
    assert [(r.kind, r.name, r.outcome, r.tone) for r in rows] == [
        ("DaemonSet", "none", "not-found", Tone.PROBLEM),
        ("Deployment", "plain", "not-rewritten", Tone.NOTHING),
    ]


# --- the command's input -------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["revert"],
        ["revert", "--all", "deployment/web", "-n", "demo"],
        ["revert", "deployment/web"],
        ["revert", "pod/web", "-n", "demo"],
        ["revert", "deployment", "-n", "demo"],
        ["revert", "--all", "-o", "yaml"],
        ["revert", "--all", "--kubeconfig", "/nonexistent/kubeconfig"],
    ],
)
def test_bad_input_exits_2(
    args: list[str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGE_CLONER_REGISTRY", "backup.example:5000")
    assert main(args) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_revert_needs_the_backup_registry(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("IMAGE_CLONER_REGISTRY", raising=False)
    assert main(["revert", "--all"]) == 2
    assert "IMAGE_CLONER_REGISTRY" in capsys.readouterr().err
