"""`image-cloner revert` on the test bed: a real rewrite by a real controller, undone.

A controller of its own (the examples' ServiceAccount, scoped to this module's namespace)
rewrites a Deployment with an init container and a DaemonSet, then is stopped, as the
uninstall steps say. `image-cloner revert` then runs as a user would run it, as a process
with the admin kubeconfig: the specs must come back exactly as the apiserver stored them
before the rewrite, the rollouts complete, the annotation and the pull Secret reference go,
an Event says so, and the pull Secret goes once no workload uses it. A workload someone
edited after the rewrite is left alone and reported. Running it again does nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_controller import (
    ANNOTATION,
    KUBECTL_POLL,
    PULL_SECRET,
    ROLLOUT,
    apply,
    events,
    get,
    images,
    rollout,
    wait_for_event,
    workload,
)
from tests.support.controller import CONTROLLER_NAMESPACE, ControllerProcess, wait_until
from tests.support.images import ImageSeeder
from tests.support.pki import TestPKI
from tests.support.registries import RunningRegistry
from tests.support.testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Rewritten:
    """This module's namespace after the controller rewrote it, and what it held before."""

    testbed: Testbed
    namespace: str
    backup_host: str
    originals: dict[tuple[str, str], dict[str, Any]]
    """(kind, name) → the object as stored before the controller touched it."""

    def revert(self, *args: str) -> tuple[int, str, str]:
        """`image-cloner revert ARGS` as a process; (exit status, stdout, stderr)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGE_CLONER_", "KUBE"))}
        env["IMAGE_CLONER_REGISTRY"] = self.backup_host
        command = [sys.executable, "-m", "image_cloner", "revert"]
        command += [f"--kubeconfig={self.testbed.kubeconfig}", *args]
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=ROOT, timeout=120, check=False
        )
        return done.returncode, done.stdout, done.stderr

    def revert_json(self, *args: str) -> tuple[int, list[dict[str, Any]]]:
        code, out, err = self.revert(*args, "-o", "json")
        assert code in (0, 1), err
        return code, json.loads(out)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return get(self.testbed, self.namespace, kind, name)


@pytest.fixture(scope="module")
def rewritten(
    *,
    testbed: Testbed,
    sa_kubeconfig: Path,
    auth_registry: RunningRegistry,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
    test_pki: TestPKI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Rewritten]:
    namespace = f"revert-{uuid.uuid4().hex[:6]}"
    testbed.create_namespace(namespace)
    tag = uuid.uuid4().hex[:6]
    web, setup, agent = (f"revert-{part}-{tag}" for part in ("web", "setup", "agent"))
    for name, kind in ((web, "index"), (setup, "single"), (agent, "docker-list")):
        seed_image(open_registry, f"{name}:1", kind, seed=name)
    manifests = [
        workload(
            "Deployment",
            "web",
            namespace,
            {"web": open_registry.ref(f"{web}:1")},
            init={"setup": open_registry.ref(f"{setup}:1")},
        ),
        workload("DaemonSet", "agent", namespace, {"agent": open_registry.ref(f"{agent}:1")}),
        workload("Deployment", "edited", namespace, {"web": open_registry.ref(f"{web}:1")}),
    ]
    backup_host = f"localhost:{auth_registry.port}"
    try:
        apply(testbed, *manifests)
        originals = {}
        for kind, name in (("Deployment", "web"), ("DaemonSet", "agent"), ("Deployment", "edited")):
            rollout(testbed, namespace, kind, name)
            originals[(kind, name)] = get(testbed, namespace, kind, name)
        env = {
            "IMAGE_CLONER_REGISTRY": backup_host,
            "IMAGE_CLONER_USER": str(auth_registry.username),
            "IMAGE_CLONER_PASS": str(auth_registry.password),
            "IMAGE_CLONER_CA_FILE": str(test_pki.ca_cert),
            "IMAGE_CLONER_NAMESPACE": namespace,
            "IMAGE_CLONER_POD_NAMESPACE": CONTROLLER_NAMESPACE,
        }
        workdir = tmp_path_factory.mktemp("revert-controller")
        with ControllerProcess(workdir, kubeconfig=sa_kubeconfig, env=env):

            def on_backups(kind: str, name: str) -> bool:
                now = images(get(testbed, namespace, kind, name)).values()
                return all(image.startswith(f"{backup_host}/") for image in now)

            for kind, name in originals:
                wait_until(
                    partial(on_backups, kind, name),
                    timeout=ROLLOUT,
                    what=f"{kind} {name} rewritten to the backup registry",
                    interval=KUBECTL_POLL,
                )
        # Stopped, as the uninstall says: a running controller would rewrite them again.
        yield Rewritten(testbed, namespace, backup_host, originals)
    finally:
        testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def test_dry_run_changes_nothing_and_says_what_it_would_do(rewritten: Rewritten) -> None:
    before = {key: rewritten.get(*key) for key in rewritten.originals}
    code, rows = rewritten.revert_json("--all", "--namespace", rewritten.namespace, "--dry-run")
    assert code == 0
    outcomes = {(r["kind"], r["name"]): r["outcome"] for r in rows}
    assert outcomes == {
        ("Deployment", "web"): "would-revert",
        ("Deployment", "edited"): "would-revert",
        ("DaemonSet", "agent"): "would-revert",
        ("Secret", PULL_SECRET): "would-delete",
    }
    web = next(r for r in rows if r["name"] == "web")
    assert {i["container"]: i["to"] for i in web["images"]} == images(
        rewritten.originals[("Deployment", "web")]
    )
    for key, obj in before.items():
        after = rewritten.get(*key)
        assert after["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]
    rewritten.get("secret", PULL_SECRET)  # still there


def test_revert_restores_the_originals_and_leaves_an_edited_workload_alone(
    rewritten: Rewritten,
) -> None:
    testbed, namespace = rewritten.testbed, rewritten.namespace
    # Someone changes a rewritten workload's image after the rewrite.
    testbed.kubectl("set", "image", "deployment/edited", "web=busybox:edited", "-n", namespace)

    code, out, err = rewritten.revert("--all", "--namespace", namespace)
    assert code == 1, out + err
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "\x1b[" not in out, "no colour when stdout is not a terminal"
    rows = {line.split()[1]: line.split()[2] for line in lines[1:-1] if line[:1] != " "}
    assert rows == {
        f"{namespace}/agent": "reverted",
        f"{namespace}/edited": "changed",
        f"{namespace}/web": "reverted",
        f"{namespace}/{PULL_SECRET}": "in-use",
    }
    assert lines[-1] == "2 reverted, 1 changed, 1 in-use"

    for kind, name in (("Deployment", "web"), ("DaemonSet", "agent")):
        original, now = rewritten.originals[(kind, name)], rewritten.get(kind, name)
        assert now["spec"] == original["spec"], f"{kind} {name}: the spec is not the original"
        assert now["spec"]["template"] == original["spec"]["template"]
        assert ANNOTATION not in now["metadata"].get("annotations", {})
        assert "imagePullSecrets" not in now["spec"]["template"]["spec"]
        rollout(testbed, namespace, kind, name)
        event = wait_for_event(testbed, namespace, name, "ImagesReverted")
        assert event["type"] == "Normal"
        for container, image in images(original).items():
            assert f"→ {image}" in event["message"], container

    edited = rewritten.get("Deployment", "edited")
    assert ANNOTATION in edited["metadata"]["annotations"]
    assert images(edited) == {"web": "busybox:edited"}
    assert not events(testbed, namespace, "edited", "ImagesReverted")
    rewritten.get("secret", PULL_SECRET)  # `edited` still refers to it


def test_the_secret_goes_with_its_last_user_and_a_second_run_is_a_no_op(
    rewritten: Rewritten,
) -> None:
    testbed, namespace = rewritten.testbed, rewritten.namespace
    testbed.kubectl("delete", "deployment", "edited", "-n", namespace)
    code, rows = rewritten.revert_json("--all", "--namespace", namespace)
    assert code == 0
    assert [(r["kind"], r["name"], r["outcome"]) for r in rows] == [
        ("Secret", PULL_SECRET, "deleted")
    ]
    gone = testbed.kubectl("get", "secret", PULL_SECRET, "-n", namespace, check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr

    code, out, err = rewritten.revert("--all", "--namespace", namespace)
    assert code == 0, out + err
    assert out.startswith("nothing to revert")
    code, rows = rewritten.revert_json("deployment/web", "daemonset/agent", "-n", namespace)
    assert code == 0
    assert {r["outcome"] for r in rows} == {"not-rewritten"}
