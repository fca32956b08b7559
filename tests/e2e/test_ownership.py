"""Never fight a workload's owner, end to end: opt-outs, excluded images, owned objects, GitOps.

A real controller process (the ServiceAccount of examples/rbac.yml, so the Namespace read
runs under the RBAC we ship) on the test bed, with real registries. Each test has its own
namespace; the module's controller watches them all and excludes the images named
`excluded-*`. The GitOps loop is kubectl re-applying the original manifest, as Argo CD
does on every sync: the workload must see at most one rewrite, then be left alone with
a `RewriteReverted` Warning Event naming kubectl's field manager, until a person removes
the marker annotation.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_controller as base
from tests.e2e.test_controller import (
    ANNOTATION,
    KUBECTL_POLL,
    ROLLOUT,
    World,
    apply,
    assert_backed_up,
    controller_env,
    events,
    get,
    images,
    raw,
    rollout,
    unique,
    wait_for_event,
    wait_for_images,
    workload,
)
from tests.support import skopeo
from tests.support.controller import ControllerProcess, wait_until
from tests.support.pki import TestPKI
from tests.support.proxy import RegistryProxy
from tests.support.registries import RunningRegistry
from tests.support.testbed import Testbed

SKIP = "image-cloner.io/skip"
REVERTED = "image-cloner.io/rewrite-reverted"
EXCLUDED = "excluded-*"
KUBECTL_MANAGER = "kubectl-client-side-apply"
"""The field manager of a plain `kubectl apply`, as managedFields records it."""

# The same world as test_controller.py, module-scoped, so this module gets its own (the
# registries come from the e2e conftest).
world = base.world


@pytest.fixture(scope="module")
def solo_namespaces() -> dict[str, str]:
    return {}  # every test here runs under the module's controller


@pytest.fixture(scope="module")
def controller(
    *,
    tmp_path_factory: pytest.TempPathFactory,
    sa_kubeconfig: Path,
    backup: RunningRegistry,
    upstream: RegistryProxy,
    test_pki: TestPKI,
) -> Iterator[ControllerProcess]:
    env = controller_env(backup, upstream, test_pki)
    env["IMAGE_CLONER_EXCLUDE_IMAGES"] = EXCLUDED
    process = ControllerProcess(
        tmp_path_factory.mktemp("ownership"), kubeconfig=sa_kubeconfig, env=env
    )
    process.start()
    try:
        yield process
    finally:
        code = process.stop()
        assert code == 0, f"controller exited {code} on SIGTERM:\n{process.log_text()[-3000:]}"


_DIGESTS: dict[str, str] = {}
"""Digest of each image `seeded` made, by name."""


def seeded(world: World, prefix: str) -> str:
    """A fresh single-platform image, referenced as on docker.io: `name:1`."""
    name = unique(prefix)
    _DIGESTS[name] = world.seed(world.source, f"library/{name}:1", "single", seed=name).digest
    return name


def backup_of(world: World, name: str) -> str:
    """The pinned backup reference a rewrite of `name:1` gives (KWOK reports no digest, so
    it is the tag's)."""
    return f"{world.host}/{name}:1@{_DIGESTS[name]}"


def annotated(manifest: dict[str, Any], **annotations: str) -> dict[str, Any]:
    manifest["metadata"]["annotations"] = dict(annotations)
    return manifest


def not_in_backup(world: World, name: str) -> bool:
    try:
        raw(world.backup, f"{name}:1")
    except skopeo.SkopeoError:
        return True
    return False


def total(found: list[dict[str, Any]]) -> int:
    """How often an Event happened: identical Events are counted up, not repeated."""
    return sum(int(e.get("count") or 1) for e in found)


# --- opt-outs ------------------------------------------------------------------------


def test_skip_on_the_workload_leaves_it_alone(world: World, namespace: str) -> None:
    name = seeded(world, "optout")
    apply(
        world.testbed,
        annotated(workload("Deployment", "app", namespace, {"app": f"{name}:1"}), **{SKIP: "true"}),
    )
    line = world.controller.wait_for_line("deployment skipped", name="app", namespace=namespace)
    assert line["reason"] == f"opted out: {SKIP} on the workload"
    assert images(get(world.testbed, namespace, "Deployment", "app")) == {"app": f"{name}:1"}
    assert not_in_backup(world, name)
    assert not events(world.testbed, namespace, "app", "ImagesCloned")


def test_skip_on_the_namespace_and_a_workload_opting_back_in(world: World, namespace: str) -> None:
    testbed = world.testbed
    testbed.kubectl("annotate", "namespace", namespace, f"{SKIP}=true")
    plain, opted_in = seeded(world, "plain"), seeded(world, "optin")
    apply(testbed, workload("Deployment", "plain", namespace, {"app": f"{plain}:1"}))
    world.controller.wait_for_line("deployment skipped", name="plain", namespace=namespace)
    manifest = workload("Deployment", "optin", namespace, {"app": f"{opted_in}:1"})
    apply(testbed, annotated(manifest, **{SKIP: "false"}))

    wait_for_images(testbed, namespace, "Deployment", "optin", {"app": backup_of(world, opted_in)})
    assert images(get(testbed, namespace, "Deployment", "plain")) == {"app": f"{plain}:1"}
    assert not_in_backup(world, plain)


def test_a_garbage_skip_value_is_a_warning_event_and_leaves_it_alone(
    world: World, namespace: str
) -> None:
    name = seeded(world, "garbage")
    manifest = workload("Deployment", "app", namespace, {"app": f"{name}:1"})
    apply(world.testbed, annotated(manifest, **{SKIP: "maybe"}))
    event = wait_for_event(world.testbed, namespace, "app", "InvalidAnnotation")
    assert event["type"] == "Warning"
    assert f"{SKIP} on the workload is 'maybe'" in event["message"]
    assert images(get(world.testbed, namespace, "Deployment", "app")) == {"app": f"{name}:1"}
    assert not_in_backup(world, name)


# --- excluded images and owned objects -----------------------------------------------


def test_an_excluded_image_is_neither_copied_nor_rewritten(world: World, namespace: str) -> None:
    kept, backed = seeded(world, "excluded"), seeded(world, "included")
    containers = {"corp": f"{kept}:1", "web": f"{backed}:1"}
    apply(world.testbed, workload("Deployment", "app", namespace, containers))
    wanted = {"corp": f"{kept}:1", "web": backup_of(world, backed)}
    obj = wait_for_images(world.testbed, namespace, "Deployment", "app", wanted)
    assert json.loads(obj["metadata"]["annotations"][ANNOTATION]) == {"web": f"{backed}:1"}
    assert not_in_backup(world, kept)
    line = world.controller.wait_for_line("image excluded", name="app", namespace=namespace)
    assert (line["image"], line["pattern"]) == (f"{kept}:1", EXCLUDED)


def test_an_owned_deployment_is_backed_up_not_rewritten(world: World, namespace: str) -> None:
    testbed = world.testbed
    name = unique("owned")
    image = world.seed(world.source, f"library/{name}:1", "index", seed=name)
    testbed.kubectl("create", "configmap", "owner", "-n", namespace)
    uid = get(testbed, namespace, "configmap", "owner")["metadata"]["uid"]
    manifest = workload("Deployment", "app", namespace, {"app": f"{name}:1"})
    manifest["metadata"]["ownerReferences"] = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": uid, "controller": True}
    ]
    apply(testbed, manifest)

    event = wait_for_event(testbed, namespace, "app", "RewriteSkipped")
    assert event["type"] == "Normal"
    assert event["message"] == (
        "images backed up, workload not rewritten: managed by ConfigMap/owner"
    )
    assert_backed_up(world.backup, name, "1", image)
    obj = get(testbed, namespace, "Deployment", "app")
    assert images(obj) == {"app": f"{name}:1"}
    assert obj["metadata"]["generation"] == 1
    assert not events(testbed, namespace, "app", "ImagesCloned")


# --- the GitOps loop -----------------------------------------------------------------


def managers(testbed: Testbed, namespace: str) -> set[str]:
    shown = testbed.kubectl(
        "get", "deployment", "app", "-n", namespace, "-o", "json", "--show-managed-fields"
    )
    return {entry["manager"] for entry in json.loads(shown.stdout)["metadata"]["managedFields"]}


def resource_version(testbed: Testbed, namespace: str) -> int:
    return int(get(testbed, namespace, "Deployment", "app")["metadata"]["resourceVersion"])


def wait_for_a_pass_after(world: World, namespace: str, version: int) -> None:
    """The controller decided about the workload as it is at `version` or later."""

    def decided() -> bool:
        lines = world.controller.find(
            "deployment images backed up, not rewritten", name="app", namespace=namespace
        )
        return any(int(line["resource_version"]) >= version for line in lines)

    wait_until(decided, timeout=ROLLOUT, what="a pass after the sync", interval=KUBECTL_POLL)


def test_a_gitops_loop_sees_one_rewrite_then_is_left_alone(world: World, namespace: str) -> None:
    testbed = world.testbed
    name = seeded(world, "gitops")
    original, backed_up = {"app": f"{name}:1"}, {"app": backup_of(world, name)}
    manifest = workload("Deployment", "app", namespace, original)
    apply(testbed, manifest)
    wait_for_images(testbed, namespace, "Deployment", "app", backed_up)
    assert "image-cloner" in managers(testbed, namespace), "our patch names its field manager"

    # Three syncs of the original manifest, as Argo CD makes them, the controller deciding
    # about the Deployment as it is after each. The first puts the original images back;
    # then the tool finds nothing left to sync: the loop has converged.
    outputs = []
    for _ in range(3):
        document = json.dumps({"apiVersion": "v1", "kind": "List", "items": [manifest]})
        outputs.append(testbed.kubectl("apply", "-f", "-", input=document).stdout.strip())
        rollout(testbed, namespace, "Deployment", "app")
        wait_for_a_pass_after(world, namespace, resource_version(testbed, namespace))
    assert outputs == ["deployment.apps/app configured", *["deployment.apps/app unchanged"] * 2]

    obj = get(testbed, namespace, "Deployment", "app")
    assert images(obj) == original
    # Created, rewritten once, reverted by the first sync, marked (the apiserver bumps a
    # Deployment's generation for annotations too, as it copies them to ReplicaSets).
    assert obj["metadata"]["generation"] == 4
    assert total(events(testbed, namespace, "app", "ImagesCloned")) == 1
    (reverted,) = events(testbed, namespace, "app", "RewriteReverted")
    assert reverted["type"] == "Warning"
    assert reverted["message"].startswith(f"{KUBECTL_MANAGER} put the original images back")
    assert total([reverted]) == 1
    assert obj["metadata"]["annotations"][REVERTED].startswith(f"by {KUBECTL_MANAGER} at ")
    assert ANNOTATION not in obj["metadata"]["annotations"]
    skipped = wait_for_event(testbed, namespace, "app", "RewriteSkipped")
    assert REVERTED in skipped["message"]

    # A person removes the marker: the controller may rewrite again, and does.
    testbed.kubectl("annotate", "deployment", "app", "-n", namespace, f"{REVERTED}-")
    obj = wait_for_images(testbed, namespace, "Deployment", "app", backed_up)
    assert json.loads(obj["metadata"]["annotations"][ANNOTATION]) == original
    assert total(events(testbed, namespace, "app", "ImagesCloned")) == 2
