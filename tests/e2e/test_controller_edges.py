"""The controller's edges, end to end: what a user sees when things are not the happy path.

A malformed image reference, an upstream that lies about a blob's digest, pull-Secret
management switched off under the smaller RBAC role, `/metrics` after a rewrite, a
controller scoped to one namespace, and a log that never shows the registry password.

The world is test_controller.py's (its fixtures are re-registered here, so this module gets
a backup registry, an upstream proxy and a shared controller of its own): the controller is
a real process running as the ServiceAccount of examples/rbac*.yml, images come from a
local upstream serving as docker.io's mirror. Tests that need other settings run a
controller of their own in namespaces the shared one ignores.
"""

from __future__ import annotations

import base64
import json
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.e2e import test_controller as base
from tests.e2e.test_controller import (
    ANNOTATION,
    PULL_SECRET,
    World,
    apply,
    blob_in,
    events,
    get,
    images,
    pinned,
    raw,
    rollout,
    unique,
    wait_for_event,
    wait_for_images,
    workload,
)
from tests.support import skopeo
from tests.support.controller import (
    CONTROLLER_NAMESPACE,
    EXAMPLES,
    ControllerProcess,
    wait_until,
)
from tests.support.testbed import Testbed

# The same fixtures as test_controller.py; module-scoped, so this module gets its own
# (the registries come from the e2e conftest).
controller = base.controller
world = base.world

SOLO = ("minimal", "only", "other", "json", "text")
"""Namespaces for the controllers of this module's own; the shared controller ignores them."""


@pytest.fixture(scope="module")
def solo_namespaces() -> dict[str, str]:
    suffix = uuid.uuid4().hex[:6]
    return {purpose: f"edge-{purpose}-{suffix}" for purpose in SOLO}


@pytest.fixture
def solo(world: World) -> Iterator[Callable[[str], str]]:
    """`solo(purpose)` creates that solo namespace for this test; all are deleted after it."""
    created: list[str] = []

    def make(purpose: str) -> str:
        name = world.solo_namespaces[purpose]
        world.testbed.create_namespace(name)
        created.append(name)
        return name

    try:
        yield make
    finally:
        for name in created:
            world.testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def minimal_kubeconfig(
    testbed: Testbed, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A ServiceAccount bound to examples/rbac.yml's ClusterRole alone: no right on Secrets.

    Not the examples' own ServiceAccount: test_controller.py binds that one to
    rbac-pull-secrets.yml too, and unbinding it here would pull the rug from its controller.
    """
    name = f"image-cloner-minimal-{uuid.uuid4().hex[:6]}"
    testbed.kubectl("apply", "-f", str(EXAMPLES / "rbac.yml"))
    testbed.kubectl("create", "serviceaccount", name, "-n", CONTROLLER_NAMESPACE)
    try:
        testbed.kubectl(
            "create",
            "clusterrolebinding",
            name,
            "--clusterrole=image-cloner",
            f"--serviceaccount={CONTROLLER_NAMESPACE}:{name}",
        )
        user = f"--as=system:serviceaccount:{CONTROLLER_NAMESPACE}:{name}"

        def can(verb: str, what: str) -> bool:
            return testbed.kubectl("auth", "can-i", verb, what, user, check=False).returncode == 0

        wait_until(
            lambda: can("patch", "deployments.apps") and can("create", "events"),
            timeout=30,
            what="RBAC of examples/rbac.yml for the minimal ServiceAccount",
            interval=0.3,
        )
        for verb in ("get", "create", "patch", "update", "list"):
            assert not can(verb, "secrets"), f"the minimal ServiceAccount may {verb} secrets"
        path = tmp_path_factory.mktemp("minimal") / "kubeconfig"
        yield testbed.serviceaccount_kubeconfig(CONTROLLER_NAMESPACE, name, path=path)
    finally:
        testbed.kubectl("delete", "clusterrolebinding", name, "--ignore-not-found", check=False)
        testbed.kubectl(
            "delete", "serviceaccount", name, "-n", CONTROLLER_NAMESPACE, "--ignore-not-found"
        )


def untouched(world: World, namespace: str, name: str, wanted: dict[str, str]) -> None:
    """The workload still has its own images and carries nothing of ours."""
    obj = get(world.testbed, namespace, "Deployment", name)
    assert images(obj) == wanted
    assert ANNOTATION not in obj["metadata"].get("annotations", {})
    assert "imagePullSecrets" not in obj["spec"]["template"]["spec"]
    assert obj["metadata"]["generation"] == 1


def leaked_forms(user: str, password: str) -> list[str]:
    """How a password shows up when leaked: as is, URL-encoded, in a Basic header."""
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    return [password, quote(password, safe=""), basic]


def http_get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status, response.read().decode()


# --- a workload the controller cannot clone ----------------------------------------


def test_malformed_reference_is_reported_and_does_not_block_others(
    world: World, namespace: str
) -> None:
    testbed = world.testbed
    good = unique("good")
    good_image = world.seed(world.source, f"library/{good}:1", "single", seed=good)
    # The apiserver takes any string as an image; KWOK makes the pods Ready regardless.
    apply(testbed, workload("Deployment", "bad", namespace, {"web": "Nginx:1.21"}))
    mixed = {"web": f"{good}:1", "sidecar": "Nginx:1.21"}
    apply(testbed, workload("Deployment", "mixed", namespace, mixed))
    rollout(testbed, namespace, "Deployment", "bad")
    failed = wait_for_event(testbed, namespace, "bad", "CloneFailed")
    assert failed["type"] == "Warning"
    assert "Nginx:1.21" in failed["message"]
    assert "repository name must be lowercase" in failed["message"]

    # Made after the failure: the queue keeps serving other workloads.
    apply(testbed, workload("Deployment", "after", namespace, {"web": f"{good}:1"}))
    wanted = {"web": pinned(world.host, f"{good}:1", good_image)}
    wait_for_images(testbed, namespace, "Deployment", "after", wanted)

    # One bad image keeps the whole workload as it is: no half-rewrite.
    mixed_failed = wait_for_event(testbed, namespace, "mixed", "CloneFailed")
    assert "container sidecar" in mixed_failed["message"]
    untouched(world, namespace, "mixed", mixed)
    # Retried with backoff (1 s, 2 s, ...): the same Event counts up instead of piling up.
    counted = wait_until(
        lambda: next(
            (e for e in events(testbed, namespace, "bad", "CloneFailed") if e.get("count", 1) >= 2),
            None,
        ),
        timeout=30,
        what="the CloneFailed Event of 'bad' to count a retry",
        interval=0.5,
    )
    assert len(events(testbed, namespace, "bad", "CloneFailed")) == 1, counted
    untouched(world, namespace, "bad", {"web": "Nginx:1.21"})
    assert world.controller.metric("image_cloner_images_failed_total", reason="invalid_reference")


def test_lying_mirror_fails_the_copy_and_leaves_no_tag(world: World, namespace: str) -> None:
    testbed, backup = world.testbed, world.backup
    liar = unique("liar")
    image = world.seed(world.source, f"library/{liar}:1", "single", seed=liar)
    layer = image.manifests[0].layers[-1].digest
    # docker.io's mirror (the upstream proxy) now serves this layer with a flipped byte.
    world.upstream.corrupt_blob(layer)
    apply(testbed, workload("Deployment", "app", namespace, {"app": f"{liar}:1"}))

    failed = wait_for_event(testbed, namespace, "app", "CloneFailed")
    assert failed["type"] == "Warning"
    message = failed["message"]
    assert f"{liar}:1@{image.digest} → {pinned(world.host, f'{liar}:1', image)}" in message
    assert f"blob {layer}" in message, message
    assert f"expected {layer}" in message, message
    assert "content has digest sha256:" in message, message

    # The lie came from the mirror, and did not send the controller on to the real Docker Hub.
    assert world.upstream.count("GET", rf"/v2/library/{liar}/blobs/{layer}$") >= 1
    # (Only this image's lines: the controller also sees other modules' leftover workloads.)
    fallbacks = [
        line
        for line in world.controller.log_text().splitlines()
        if "trying the next endpoint" in line and liar in line
    ]
    assert fallbacks == []
    untouched(world, namespace, "app", {"app": f"{liar}:1"})
    # Nothing half-made is visible: no tag, and the bad bytes never became a blob.
    with pytest.raises(skopeo.SkopeoError):
        raw(backup, f"{liar}:1")
    assert not blob_in(backup, liar, layer)
    assert world.controller.metric("image_cloner_images_failed_total", reason="digest_mismatch")


# --- settings that change what it may do or see ------------------------------------


def test_without_pull_secret_management_the_smaller_role_is_enough(
    world: World, solo: Callable[[str], str], minimal_kubeconfig: Path, tmp_path: Path
) -> None:
    testbed, namespace = world.testbed, solo("minimal")
    plain = unique("plain")
    plain_image = world.seed(world.source, f"library/{plain}:1", "single", seed=plain)
    env = {**world.solo_env(namespace), "IMAGE_CLONER_MANAGE_PULL_SECRET": "false"}
    with ControllerProcess(tmp_path / "c", kubeconfig=minimal_kubeconfig, env=env) as solo_ctl:
        apply(testbed, workload("Deployment", "app", namespace, {"app": f"{plain}:1"}))
        wanted = {"app": pinned(world.host, f"{plain}:1", plain_image)}
        obj = wait_for_images(testbed, namespace, "Deployment", "app", wanted)
        wait_for_event(testbed, namespace, "app", "ImagesCloned")

    assert "imagePullSecrets" not in obj["spec"]["template"]["spec"]
    missing = testbed.kubectl("get", "secret", PULL_SECRET, "-n", namespace, check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr, missing.stderr
    assert not solo_ctl.find("pull secret created")
    assert "cannot write pull secret" not in solo_ctl.log_text()
    assert not events(testbed, namespace, "app", "CloneFailed")


def test_single_namespace_leaves_the_others_alone(
    world: World, solo: Callable[[str], str], tmp_path: Path
) -> None:
    testbed = world.testbed
    watched, other = solo("only"), solo("other")
    mine, theirs = unique("mine"), unique("theirs")
    mine_image = world.seed(world.source, f"library/{mine}:1", "single", seed=mine)
    world.seed(world.source, f"library/{theirs}:1", "single", seed=theirs)
    env = world.solo_env(watched)
    with ControllerProcess(tmp_path / "c", kubeconfig=world.sa_kubeconfig, env=env) as solo_ctl:
        # The other namespace's workload is Ready first, so it would be handled first.
        apply(testbed, workload("Deployment", "app", other, {"app": f"{theirs}:1"}))
        rollout(testbed, other, "Deployment", "app")
        apply(testbed, workload("Deployment", "app", watched, {"app": f"{mine}:1"}))
        wanted = {"app": pinned(world.host, f"{mine}:1", mine_image)}
        wait_for_images(testbed, watched, "Deployment", "app", wanted)

    untouched(world, other, "app", {"app": f"{theirs}:1"})
    assert not events(testbed, other, "app", "ImagesCloned")
    assert not [line for line in solo_ctl.lines() if line.get("namespace") == other]
    with pytest.raises(skopeo.SkopeoError):
        raw(world.backup, f"{theirs}:1")


# --- what it tells: metrics and logs -----------------------------------------------


def test_metrics_after_a_rewrite_count_without_naming(world: World, namespace: str) -> None:
    testbed, controller = world.testbed, world.controller
    counted = unique("counted")
    image = world.seed(world.source, f"library/{counted}:1", "single", seed=counted)
    apply(testbed, workload("Deployment", "app", namespace, {"app": f"{counted}:1"}))
    wanted = {"app": pinned(world.host, f"{counted}:1", image)}
    wait_for_images(testbed, namespace, "Deployment", "app", wanted)

    assert controller.metric("image_cloner_images_copied_total") >= 1
    assert controller.metric("image_cloner_workloads_rewritten_total", kind="Deployment") >= 1
    assert controller.metric("image_cloner_copied_bytes_total") > 0
    status, text = http_get(f"http://127.0.0.1:{controller.metrics_port}/metrics")
    assert status == 200
    for private in [
        counted,
        namespace,
        *leaked_forms(str(world.backup.username), str(world.backup.password)),
    ]:
        assert private not in text, f"{private!r} in /metrics"
    assert http_get(f"http://127.0.0.1:{controller.metrics_port}/healthz")[0] == 200
    wait_until(lambda: controller.readyz()[0] == 200, timeout=30, what="/readyz to pass")


def test_password_never_reaches_the_log(
    world: World, solo: Callable[[str], str], tmp_path: Path
) -> None:
    testbed, backup = world.testbed, world.backup
    user = str(backup.username)
    # Characters that URL-encoding and userinfo change, so each leaked form differs.
    wrong = f"Wr0ng:p@ss/{uuid.uuid4().hex[:8]}%"
    locked = unique("locked")
    world.seed(world.source, f"library/{locked}:1", "single", seed=locked)
    where = {fmt: solo(fmt) for fmt in ("json", "text")}
    controllers = [
        ControllerProcess(
            tmp_path / fmt,
            kubeconfig=world.sa_kubeconfig,
            env=world.solo_env(where[fmt], password=wrong),
            log_format=fmt,
        )
        for fmt in ("json", "text")
    ]
    try:
        for process in controllers:
            process.start()
        for fmt in ("json", "text"):
            apply(testbed, workload("Deployment", "app", where[fmt], {"app": f"{locked}:1"}))
        for fmt, process in zip(("json", "text"), controllers, strict=True):
            failed = wait_for_event(testbed, where[fmt], "app", "CloneFailed")
            assert wrong not in json.dumps(failed)
            assert "backup registry check failed" in process.log_text()
            assert process.readyz()[0] == 503
    finally:
        for process in controllers:
            process.stop()

    logs = {fmt: p.log_text() for fmt, p in zip(("json", "text"), controllers, strict=True)}
    for fmt in ("json", "text"):
        # The path was walked: the copy failed on the login, in the log as well as the Event.
        assert "cloning deployment image failed" in logs[fmt], logs[fmt][-2000:]
        untouched(world, where[fmt], "app", {"app": f"{locked}:1"})
    logs["shared"] = world.controller.log_text()
    for source, text in logs.items():
        for secret in [*leaked_forms(user, wrong), *leaked_forms(user, str(backup.password))]:
            assert secret not in text, f"{secret!r} in the {source} controller's log"
