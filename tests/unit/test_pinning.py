"""What runs is what is backed up: the reconciler's digest choice, on fakes, milliseconds each.

The rules of `controller.pinning`, each asserted on what a user sees: the workload's image
after the pass (or that it is untouched), the Event, the metric. tests/e2e/test_pinning.py
proves the same on the test bed with real registries.
"""

from __future__ import annotations

import asyncio

import pytest

from image_cloner.controller.pinning import TAG_DIGEST_FOR, TagDigests
from image_cloner.controller.queue import Retry
from image_cloner.controller.reconcile import IMAGES_CLONED, REWRITE_REFUSED, Reconciler
from image_cloner.health import Health
from image_cloner.metrics import Metrics
from image_cloner.oci.errors import NotFoundError
from image_cloner.oci.options import Credentials
from image_cloner.oci.references import Reference, parse_reference
from image_cloner.settings import Settings
from image_cloner.workloads import WorkloadKey
from tests.support.clock import Clock
from tests.support.fake_copier import FakeCopier, digest
from tests.support.fake_kube import FakeKube, deployment, pod

BACKUP = "backup.example:5000"
WEB = WorkloadKey("Deployment", "demo", "web")
RAN = digest("what ran")
OTHER = digest("what another node ran")


def reconciler_for(
    kube: FakeKube, copier: FakeCopier, *, form: str = "pinned"
) -> tuple[Reconciler, Metrics]:
    settings = Settings.from_env(
        {"IMAGE_CLONER_REGISTRY": BACKUP, "IMAGE_CLONER_REWRITE_FORM": form}
    )
    metrics = Metrics(health=Health())
    return Reconciler(kube=kube, copier=copier, settings=settings, metrics=metrics), metrics


def image_of(kube: FakeKube) -> str:
    containers = kube.get("Deployment", "demo", "web")["spec"]["template"]["spec"]["containers"]
    image: str = containers[0]["image"]
    return image


def failed(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "image_cloner_images_failed_total", {"reason": reason}
    )
    return value or 0.0


def running_pods(kube: FakeKube, *image_ids: str) -> None:
    kube.pods["demo"] = [
        pod(f"web-{n}", {"app": "app:v1"}, {"app": f"docker.io/library/app@{image_id}"}, app="web")
        for n, image_id in enumerate(image_ids)
    ]


@pytest.fixture
def kube() -> FakeKube:
    fake = FakeKube()
    fake.add(deployment("web", {"app": "app:v1"}))
    return fake


async def test_the_digest_the_pods_run_is_backed_up_after_the_tag_moved(kube: FakeKube) -> None:
    copier = FakeCopier()  # the tag names digest("app:v1") now, not RAN
    running_pods(kube, RAN, RAN)
    reconciler, _ = reconciler_for(kube, copier)
    await reconciler(WEB)
    assert copier.copied == [(f"app:v1@{RAN}", f"{BACKUP}/app:v1@{RAN}")]
    assert image_of(kube) == f"{BACKUP}/app:v1@{RAN}"
    assert kube.pod_lists == [("demo", "app=web")]
    (event,) = kube.events
    assert event.reason == IMAGES_CLONED
    assert f"the tag names {digest('app:v1')} now" in event.message


async def test_a_platform_digest_means_the_index_the_tag_names(kube: FakeKube) -> None:
    copier = FakeCopier()
    index = digest("app:v1")
    copier.indexes["app:v1"] = (RAN, OTHER)
    running_pods(kube, RAN)
    reconciler, _ = reconciler_for(kube, copier)
    await reconciler(WEB)
    assert copier.copied == [(f"app:v1@{index}", f"{BACKUP}/app:v1@{index}")]
    assert image_of(kube) == f"{BACKUP}/app:v1@{index}"
    assert f"its platform manifest {RAN}" in kube.events[-1].message


async def test_two_platforms_of_one_index_on_two_nodes_agree_on_the_index(
    kube: FakeKube,
) -> None:
    copier = FakeCopier()
    index = digest("app:v1")
    copier.indexes["app:v1"] = (RAN, OTHER)
    running_pods(kube, RAN, OTHER)  # an amd64 and an arm64 node, a runtime like CRI-O
    reconciler, _ = reconciler_for(kube, copier)
    await reconciler(WEB)
    assert image_of(kube) == f"{BACKUP}/app:v1@{index}"


async def test_pods_that_disagree_leave_the_workload_untouched_with_a_warning(
    kube: FakeKube,
) -> None:
    copier = FakeCopier()
    running_pods(kube, RAN, OTHER, OTHER)
    reconciler, metrics = reconciler_for(kube, copier)
    with pytest.raises(Retry):
        await reconciler(WEB)
    assert image_of(kube) == "app:v1"
    assert copier.copied == []
    (event,) = kube.events
    assert (event.reason, event.warning) == (REWRITE_REFUSED, True)
    assert f"{OTHER} on 2 pods, {RAN} on 1 pod" in event.message
    assert failed(metrics, "digests_disagree") == 1


async def test_a_digest_the_source_lost_is_not_rewritten(kube: FakeKube) -> None:
    copier = FakeCopier()
    copier.gone.add(RAN)
    running_pods(kube, RAN)
    reconciler, metrics = reconciler_for(kube, copier)
    with pytest.raises(Retry):
        await reconciler(WEB)
    assert image_of(kube) == "app:v1"
    (event,) = kube.events
    assert (event.reason, event.warning) == (REWRITE_REFUSED, True)
    assert f"run {RAN}, which the source no longer has" in event.message
    assert failed(metrics, "source_digest_gone") == 1


async def test_no_pod_reporting_a_digest_takes_the_tags_and_says_so(kube: FakeKube) -> None:
    copier = FakeCopier()
    kube.pods["demo"] = [pod("web-0", {"app": "app:v1"}, {"app": ""}, app="web")]
    reconciler, _ = reconciler_for(kube, copier)
    await reconciler(WEB)
    now = digest("app:v1")
    assert image_of(kube) == f"{BACKUP}/app:v1@{now}"
    assert "digest from the tag: the container runtime reports no image digest" in (
        kube.events[-1].message
    )


async def test_tag_form_writes_the_seeds_reference_only_while_the_backup_tag_holds_it(
    kube: FakeKube,
) -> None:
    copier = FakeCopier()
    running_pods(kube, RAN)
    reconciler, _ = reconciler_for(kube, copier, form="tag")
    await reconciler(WEB)
    assert image_of(kube) == f"{BACKUP}/app:v1"

    other = FakeKube()
    other.add(deployment("web", {"app": "app:v1"}))
    running_pods(other, RAN)
    copier.backup_tags[f"{BACKUP}/app:v1"] = OTHER
    reconciler, _ = reconciler_for(other, copier, form="tag")
    await reconciler(WEB)
    assert image_of(other) == f"{BACKUP}/app:v1@{RAN}"
    message = other.events[-1].message
    assert f"backup tag v1 kept at {OTHER}, not moved" in message
    assert "pinned, as the backup tag does not hold this digest" in message


async def test_digest_references_need_no_pods(kube: FakeKube) -> None:
    kube.edit(
        "Deployment",
        "demo",
        "web",
        lambda obj: obj["spec"]["template"]["spec"]["containers"][0].update(image=f"app@{RAN}"),
    )
    copier = FakeCopier()
    reconciler, _ = reconciler_for(kube, copier)
    await reconciler(WEB)
    assert image_of(kube) == f"{BACKUP}/app@{RAN}"
    assert kube.pod_lists == []


class CountingSource:
    """A `SourceReader` whose tag lookups are counted (and may fail once)."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.fail_next = False

    async def current_digest(self, ref: Reference) -> str:
        self.asked.append(ref.name)
        await asyncio.sleep(0.01)  # concurrent readers overlap
        if self.fail_next:
            self.fail_next = False
            raise NotFoundError("HEAD manifest: 404 manifest unknown", status=404)
        return digest(ref.name)

    async def children(self, ref: Reference) -> tuple[str, ...]:
        return ()

    async def has_manifest(self, ref: Reference) -> bool:
        return True


async def test_a_tag_is_read_once_for_every_workload_on_it_per_login_and_period() -> None:
    source, clock = CountingSource(), Clock()
    tags = TagDigests(source, clock=clock)
    nginx, redis = parse_reference("nginx:1"), parse_reference("redis:7")
    found = await asyncio.gather(*(tags.current(nginx, None) for _ in range(50)))
    assert set(found) == {digest("docker.io/library/nginx:1")}
    await tags.current(redis, None)
    await tags.current(nginx, Credentials("team-a", "pw"))  # another login asks for itself
    assert source.asked == [
        "docker.io/library/nginx:1",
        "docker.io/library/redis:7",
        "docker.io/library/nginx:1",
    ]
    clock.now += TAG_DIGEST_FOR  # the tag may have moved: read it again
    await tags.current(nginx, None)
    assert len(source.asked) == 4
    source.fail_next = True
    clock.now += TAG_DIGEST_FOR
    with pytest.raises(NotFoundError):
        await tags.current(nginx, None)
    await tags.current(nginx, None)  # a failure is not remembered
    assert len(source.asked) == 6
