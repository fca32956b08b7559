"""`image-cloner plan` and `status` on the test bed, checked against what `run` then does.

One namespace holds the mixed set of the issue: a Ready Deployment (to be rewritten), one
that never becomes Ready (its pods match no node), one opted out, one with an invalid
image reference, and one already on the backup registry. `plan` runs first, as a process
with the controller's configuration; then the controller runs, and each row's predicted
outcome is compared with what happened to its workload. Then the controller's
`image_cloner_workloads` gauge must count, per kind and state, what `status` lists.
(The ignored-namespace row is unit-tested: a controller scoped to one namespace cannot
also ignore another one.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from tests.e2e.test_controller import (
    KUBECTL_POLL,
    ROLLOUT,
    apply,
    events,
    get,
    images,
    wait_for_event,
    wait_for_images,
    workload,
)
from tests.support.controller import CONTROLLER_NAMESPACE, ControllerProcess, wait_until
from tests.support.images import ImageSeeder, SyntheticImage
from tests.support.pki import TestPKI
from tests.support.registries import RunningRegistry
from tests.support.testbed import Testbed

ROOT = Path(__file__).resolve().parents[2]
OURS = {"ImagesCloned", "CloneFailed", "RewriteRefused", "ImagesBackedUp", "RewriteSkipped"}
STATES = ("protected", "unprotected", "failing", "excluded")


def command(testbed: Testbed, env: dict[str, str], *args: str) -> tuple[int, Any]:
    """`image-cloner ARGS -o json` as a process with `env`; (exit status, parsed rows)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGE_CLONER_", "KUBE"))}
    kubeconfig = f"--kubeconfig={testbed.kubeconfig}"
    done = subprocess.run(
        [sys.executable, "-m", "image_cloner", *args, kubeconfig, "-o", "json"],
        capture_output=True,
        text=True,
        env={**clean, **env},
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr
    return done.returncode, json.loads(done.stdout)


def test_plan_predicts_what_run_does_and_the_gauge_counts_what_status_lists(
    *,
    testbed: Testbed,
    sa_kubeconfig: Path,
    backup: RunningRegistry,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
    test_pki: TestPKI,
    module_namespace: str,
    tmp_path: Path,
) -> None:
    namespace = module_namespace
    host = f"localhost:{backup.port}"
    repo = f"views-{uuid.uuid4().hex[:6]}"
    seeded = seed_image(open_registry, f"{repo}:1", "index", seed=repo)
    source = open_registry.ref(f"{repo}:1")
    stuck = workload("Deployment", "stuck", namespace, {"app": source})
    stuck["spec"]["template"]["spec"]["nodeSelector"] = {"image-cloner.io/no-such-node": "x"}
    optout = workload("Deployment", "optout", namespace, {"app": source})
    optout["metadata"]["annotations"] = {"image-cloner.io/skip": "true"}
    apply(
        testbed,
        workload("Deployment", "ready", namespace, {"app": source}),
        stuck,
        optout,
        workload("Deployment", "invalid", namespace, {"app": "127.0.0.1:1/Not_Valid:1"}),
        workload("Deployment", "backed", namespace, {"app": f"{host}/{repo}:0"}),
    )
    for name in ("ready", "optout", "invalid", "backed"):
        testbed.kubectl(
            "rollout",
            "status",
            f"deployment/{name}",
            "-n",
            namespace,
            f"--timeout={ROLLOUT:.0f}s",
            timeout=ROLLOUT + 10,
        )
    before = {
        name: images(get(testbed, namespace, "Deployment", name))
        for name in ("ready", "stuck", "optout", "invalid", "backed")
    }
    env = {
        "IMAGE_CLONER_REGISTRY": host,
        "IMAGE_CLONER_USER": str(backup.username),
        "IMAGE_CLONER_PASS": str(backup.password),
        "IMAGE_CLONER_CA_FILE": str(test_pki.ca_cert),
        "IMAGE_CLONER_NAMESPACE": namespace,
        "IMAGE_CLONER_POD_NAMESPACE": CONTROLLER_NAMESPACE,
    }

    code, rows = command(testbed, env, "plan")
    assert code == 1, "the invalid reference is a predicted failure"
    plan = {row["name"]: row for row in rows}
    assert {name: row["outcome"] for name, row in plan.items()} == {
        "ready": "rewrite",
        "stuck": "wait",
        "optout": "skip",
        "invalid": "fail",
        "backed": "nothing",
    }
    (copy,) = plan["ready"]["images"]
    assert copy["to"].startswith(f"{host}/"), "in the backup registry"
    assert copy["to"].endswith(f"/{repo}:1@{seeded.digest}"), "pinned to what the tag names"
    assert copy["digest"] == seeded.digest
    assert copy["in_backup"] is False
    assert len(copy["platforms"]) == len(seeded.child_digests) > 1
    assert copy["bytes"] > 0
    assert "Not_Valid" in plan["invalid"]["detail"]
    assert "opted out" in plan["optout"]["detail"]
    # Read-only: nothing was copied, patched or posted.
    assert not ours_posted(testbed, namespace)
    for name, was in before.items():
        assert images(get(testbed, namespace, "Deployment", name)) == was

    with ControllerProcess(tmp_path / "controller", kubeconfig=sa_kubeconfig, env=env) as c:
        # Row by row: what the plan said is what happens.
        wait_for_images(testbed, namespace, "Deployment", "ready", {"app": copy["to"]})
        wait_for_event(testbed, namespace, "ready", "ImagesCloned")
        failed = wait_for_event(testbed, namespace, "invalid", "CloneFailed")
        assert failed["type"] == "Warning"
        for name in ("stuck", "optout", "backed", "invalid"):
            assert images(get(testbed, namespace, "Deployment", name)) == before[name], name
        for name in ("stuck", "optout", "backed"):
            assert not [r for r in OURS if events(testbed, namespace, name, r)], name

        gauge_counts_what_status_lists(c, testbed, env, seeded)


def ours_posted(testbed: Testbed, namespace: str) -> bool:
    """Any Event of ours in the namespace (a copy or a patch would have posted one)."""
    items = json.loads(testbed.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    return any(e.get("reason") in OURS for e in items["items"])


def gauge_counts_what_status_lists(
    c: ControllerProcess, testbed: Testbed, env: dict[str, str], seeded: SyntheticImage
) -> None:
    # The gauge counts what status lists, per kind and state.
    expected = {
        "ready": "protected",
        "backed": "protected",
        "stuck": "unprotected",
        "optout": "excluded",
        "invalid": "failing",
    }

    def gauge() -> dict[str, float]:
        return {s: c.metric("image_cloner_workloads", kind="Deployment", state=s) for s in STATES}

    wanted = {s: float(n) for s, n in Counter(expected.values()).items()}
    wait_until(
        lambda: gauge() == {s: wanted.get(s, 0.0) for s in STATES},
        timeout=ROLLOUT,
        what=f"the gauge to count {wanted}",
        interval=KUBECTL_POLL,
    )
    code, rows = command(testbed, env, "status")
    assert code == 1, "one unprotected and one failing workload"
    listed = {row["name"]: row["outcome"] for row in rows}
    assert listed == expected
    counted = Counter((row["kind"], row["outcome"]) for row in rows)
    for kind in ("Deployment", "DaemonSet", "StatefulSet", "CronJob", "Job", "Pod"):
        for state in STATES:
            assert (
                c.metric("image_cloner_workloads", kind=kind, state=state) == counted[(kind, state)]
            ), (kind, state)
    ready = next(row for row in rows if row["name"] == "ready")
    (image,) = ready["images"]
    assert image["digest"] == seeded.digest
    assert len(image["platforms"]) == len(seeded.child_digests)
    assert image["rewritten_at"] is not None
    assert ready["last_event"]["reason"] == "ImagesCloned"
    invalid = next(row for row in rows if row["name"] == "invalid")
    assert invalid["last_event"]["reason"] == "CloneFailed"
