"""What runs is what is backed up, on the test bed: pods' imageIDs decide the digest.

KWOK runs no containers, so its pods report no `imageID`; here it is set the way a kubelet
sets it, through the pods' status subresource, in containerd's format
(`docker.io/library/app@sha256:…`). KWOK's pod-ready stage only fires while a pod is
Pending, so it leaves the reported digest alone (checked before the controller starts).

Every workload is made Ready, given its pods' digests, and its upstream tag moved (or the
backup tag taken) *before* a controller of this module's own starts: the controller meets
the situation as it would after a restart, or on first install. Then:

- pods on X, the tag moved to Y → rewritten to `BACKUP/app:v1@X`, the backup has X (and
  its new tag v1 names X), and the rollout that follows runs X;
- two pods on two digests → not rewritten, a Warning Event with both digests and counts;
- pods on a digest the source no longer has → not rewritten, a Warning Event;
- pods on one platform's manifest of the tag's index → the index is backed up and pinned;
- a backup tag that already holds other bits → not moved; the workload pinned to X;
- `IMAGE_CLONER_REWRITE_FORM=tag` → the seed's `BACKUP/app:v1`.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from tests.e2e import test_controller as base
from tests.e2e.test_controller import (
    apply,
    digest_of,
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
from tests.support.controller import ControllerProcess
from tests.support.images import ImageSeeder, SyntheticImage, push_image
from tests.support.pki import TestPKI
from tests.support.proxy import RegistryProxy
from tests.support.registries import RunningRegistry
from tests.support.testbed import Testbed

REFUSED = "RewriteRefused"


@dataclass(frozen=True)
class Case:
    """One workload, named after its image, and the digests the test decides from."""

    name: str
    namespace: str
    ran: SyntheticImage
    """What its pods run (the tag's image when they were made)."""
    reported: tuple[str, ...]
    """The digest each pod reports."""
    repository: str
    """The image's repository as the workload names it (`name`, or `host/name`)."""

    @property
    def image(self) -> str:
        return f"{self.repository}:v1"

    @property
    def image_id_repository(self) -> str:
        """The repository part of `imageID`, normalised as containerd writes it."""
        return self.repository if "/" in self.repository else f"docker.io/library/{self.name}"

    def reporting(self, *digests: str) -> Case:
        return replace(self, reported=digests)


@dataclass(frozen=True)
class Scene:
    host: str
    moved: Case
    moved_to: SyntheticImage
    disagree: Case
    gone: Case
    platform: Case
    kept: Case
    kept_old: SyntheticImage
    tag_form: Case
    pinned_controller: ControllerProcess
    tag_controller: ControllerProcess
    testbed: Testbed
    backup: RunningRegistry


def random_digest() -> str:
    return "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()


def live_pods(testbed: Testbed, namespace: str, app: str) -> list[dict[str, Any]]:
    out = testbed.kubectl("get", "pods", "-n", namespace, "-l", f"app={app}", "-o", "json").stdout
    pods: list[dict[str, Any]] = json.loads(out)["items"]
    return sorted(
        (p for p in pods if not p["metadata"].get("deletionTimestamp")),
        key=lambda p: p["metadata"]["name"],
    )


def report_image_ids(testbed: Testbed, case: Case) -> None:
    """Each pod reports its digest as a kubelet would: the status subresource, containerd's
    format. A merge patch replaces the whole list, so it carries every field KWOK set."""
    pods = live_pods(testbed, case.namespace, case.name)
    assert len(pods) == len(case.reported), pods
    for pod, digest in zip(pods, case.reported, strict=True):
        statuses = pod["status"]["containerStatuses"]
        for status in statuses:
            status["imageID"] = f"{case.image_id_repository}@{digest}"
        testbed.kubectl(
            "patch",
            "pod",
            pod["metadata"]["name"],
            "-n",
            case.namespace,
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"containerStatuses": statuses}}),
        )


def reported(testbed: Testbed, case: Case) -> list[str]:
    return [
        status.get("imageID", "")
        for pod in live_pods(testbed, case.namespace, case.name)
        for status in pod["status"]["containerStatuses"]
    ]


def ready_case(
    testbed: Testbed,
    seed: ImageSeeder,
    source: RunningRegistry,
    namespace: str,
    prefix: str,
    *,
    kind: str = "single",
    replicas: int = 1,
    direct: RegistryProxy | None = None,
) -> Case:
    """A Ready Deployment of a fresh image whose pods report its digest (docker.io through
    the mirror, or named straight at the `direct` upstream proxy)."""
    name = unique(prefix)
    path = name if direct else f"library/{name}"
    image = seed(source, f"{path}:v1", kind, seed=name)
    repository = f"{direct.host}/{name}" if direct else name
    case = Case(name, namespace, image, (image.digest,) * replicas, repository)
    deployment = workload("Deployment", name, namespace, {"app": case.image})
    deployment["spec"]["replicas"] = replicas
    apply(testbed, deployment)
    return case


@pytest.fixture(scope="module")
def scene(
    *,
    testbed: Testbed,
    sa_kubeconfig: Path,
    backup: RunningRegistry,
    upstream: RegistryProxy,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
    test_pki: TestPKI,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Scene]:
    pinned_ns, tag_ns = f"pin-{uuid.uuid4().hex[:6]}", f"pin-tag-{uuid.uuid4().hex[:6]}"
    for namespace in (pinned_ns, tag_ns):
        testbed.create_namespace(namespace)
    seed, source = seed_image, open_registry
    moved = ready_case(testbed, seed, source, pinned_ns, "moved")
    disagree = ready_case(testbed, seed, source, pinned_ns, "disagree", replicas=2)
    disagree = disagree.reporting(disagree.ran.digest, random_digest())
    # A digest no registry has: named straight at the upstream (a 404 from docker.io's
    # mirror would send the controller on to the real Docker Hub; tests stay on loopback).
    gone = ready_case(testbed, seed, source, pinned_ns, "gone", direct=upstream)
    gone = gone.reporting(random_digest())
    platform = ready_case(testbed, seed, source, pinned_ns, "platform", kind="index")
    platform = platform.reporting(platform.ran.child_digests[1])
    kept = ready_case(testbed, seed, source, pinned_ns, "kept")
    tag_form = ready_case(testbed, seed, source, tag_ns, "tagform")
    cases = (moved, disagree, gone, platform, kept, tag_form)
    for case in cases:
        rollout(testbed, case.namespace, "Deployment", case.name)
        report_image_ids(testbed, case)

    # The upstream tag moves on; a backup tag is taken by other bits; nothing backed up yet.
    moved_to = seed(source, f"library/{moved.name}:v1", "single", seed=f"{moved.name}-moved")
    assert moved_to.digest != moved.ran.digest
    kept_old = seed(source, f"library/{kept.name}-old:v1", "single", seed=f"{kept.name}-old")
    push_image(kept_old, backup, f"{kept.name}:v1")
    with pytest.raises(skopeo.SkopeoError):
        raw(backup, f"{moved.name}:v1")
    for case in cases:  # KWOK left what the "kubelet" reported
        wanted = [f"{case.image_id_repository}@{d}" for d in case.reported]
        assert reported(testbed, case) == wanted

    def started(namespace: str, **extra: str) -> ControllerProcess:
        env = {**base.controller_env(backup, upstream, test_pki, namespace=namespace), **extra}
        process = ControllerProcess(
            tmp_path_factory.mktemp("pin-controller"), kubeconfig=sa_kubeconfig, env=env
        )
        process.start()
        return process

    pinned_controller = started(pinned_ns)
    tag_controller = started(tag_ns, IMAGE_CLONER_REWRITE_FORM="tag")
    try:
        yield Scene(
            host=base.backup_host(backup),
            moved=moved,
            moved_to=moved_to,
            disagree=disagree,
            gone=gone,
            platform=platform,
            kept=kept,
            kept_old=kept_old,
            tag_form=tag_form,
            pinned_controller=pinned_controller,
            tag_controller=tag_controller,
            testbed=testbed,
            backup=backup,
        )
    finally:
        for process in (pinned_controller, tag_controller):
            code = process.stop()
            assert code == 0, f"controller exited {code}:\n{process.log_text()[-3000:]}"
        for namespace in (pinned_ns, tag_ns):
            testbed.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def backup_digest(scene: Scene, name: str) -> str:
    return digest_of(raw(scene.backup, name))


def test_what_ran_is_backed_up_after_the_tag_moved_and_the_rollout_runs_it(scene: Scene) -> None:
    case, ran = scene.moved, scene.moved.ran.digest
    target = f"{scene.host}/{case.image}@{ran}"
    wait_for_images(scene.testbed, case.namespace, "Deployment", case.name, {"app": target})
    assert backup_digest(scene, f"{case.name}@{ran}") == ran  # the backup resolves X...
    assert backup_digest(scene, case.image) == ran  # ...and its new tag v1 names X, not Y
    assert digest_of(raw(scene.backup, f"{case.name}@{ran}")) != scene.moved_to.digest
    event = wait_for_event(scene.testbed, case.namespace, case.name, "ImagesCloned")
    assert f"{case.image} → {target}" in event["message"]
    assert f"the tag names {scene.moved_to.digest} now" in event["message"]

    rollout(scene.testbed, case.namespace, "Deployment", case.name)
    pods = live_pods(scene.testbed, case.namespace, case.name)
    assert pods
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {target}


def test_pods_that_disagree_are_not_rewritten_and_say_why(scene: Scene) -> None:
    case = scene.disagree
    event = wait_for_event(scene.testbed, case.namespace, case.name, REFUSED)
    assert event["type"] == "Warning"
    for digest in case.reported:
        assert f"{digest} on 1 pod" in event["message"]
    assert "not rewritten" in event["message"]
    assert images(get(scene.testbed, case.namespace, "Deployment", case.name)) == {
        "app": case.image
    }
    controller = scene.pinned_controller
    assert controller.metric("image_cloner_images_failed_total", reason="digests_disagree") >= 1


def test_a_digest_the_source_lost_is_not_rewritten(scene: Scene) -> None:
    case, lost = scene.gone, scene.gone.reported[0]
    event = wait_for_event(scene.testbed, case.namespace, case.name, REFUSED)
    assert event["type"] == "Warning"
    assert f"run {lost}, which the source no longer has" in event["message"]
    assert images(get(scene.testbed, case.namespace, "Deployment", case.name)) == {
        "app": case.image
    }
    with pytest.raises(skopeo.SkopeoError):
        raw(scene.backup, f"{case.repository.replace(':', '_', 1)}@{lost}")  # its backup name
    controller = scene.pinned_controller
    assert controller.metric("image_cloner_images_failed_total", reason="source_digest_gone") >= 1


def test_a_platform_digest_backs_up_and_pins_its_index(scene: Scene) -> None:
    case, index = scene.platform, scene.platform.ran
    target = f"{scene.host}/{case.image}@{index.digest}"
    wait_for_images(scene.testbed, case.namespace, "Deployment", case.name, {"app": target})
    assert raw(scene.backup, f"{case.name}@{index.digest}") == index.raw
    for child in index.child_digests:
        assert backup_digest(scene, f"{case.name}@{child}") == child


def test_a_backup_tag_holding_other_bits_is_not_moved(scene: Scene) -> None:
    case, ran = scene.kept, scene.kept.ran.digest
    target = f"{scene.host}/{case.image}@{ran}"
    wait_for_images(scene.testbed, case.namespace, "Deployment", case.name, {"app": target})
    assert backup_digest(scene, case.image) == scene.kept_old.digest  # the tag kept its bits
    assert backup_digest(scene, f"{case.name}@{ran}") == ran
    event = wait_for_event(scene.testbed, case.namespace, case.name, "ImagesCloned")
    assert f"backup tag v1 kept at {scene.kept_old.digest}, not moved" in event["message"]


def test_tag_form_writes_the_seeds_reference(scene: Scene) -> None:
    case = scene.tag_form
    target = f"{scene.host}/{case.image}"
    wait_for_images(scene.testbed, case.namespace, "Deployment", case.name, {"app": target})
    assert backup_digest(scene, case.image) == case.ran.digest
    assert not events(scene.testbed, case.namespace, case.name, REFUSED)
