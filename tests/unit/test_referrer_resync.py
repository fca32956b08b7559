"""When backed-up images are examined again for new referrers: per image, rate-limited.

A fake clock and syncer here; tests/e2e/test_signatures.py proves on real registries that a
signature added upstream after the copy reaches the backup and verifies with cosign.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from image_cloner.backups import plan_images
from image_cloner.controller.reconcile import Reconciler
from image_cloner.controller.referrer_resync import (
    RETRY,
    TICK,
    ReferrerResync,
    rewritten_backups,
)
from image_cloner.health import Health
from image_cloner.metrics import Metrics
from image_cloner.oci.errors import RegistryUnavailableError
from image_cloner.oci.references import Reference, parse_reference
from image_cloner.settings import ConfigError, Settings
from image_cloner.workloads import ORIGINAL_IMAGES_ANNOTATION, WorkloadKey
from tests.support.clock import Clock
from tests.support.fake_copier import FakeCopier, digest
from tests.support.fake_kube import FakeKube, deployment

HOUR = 3600.0
DIGEST = digest("app")
SOURCE = parse_reference(f"registry.example/app@{DIGEST}")
BACKUP = parse_reference(f"backup.example/app:v1@{DIGEST}")
SETTINGS = Settings.from_env({"IMAGE_CLONER_REGISTRY": "backup.example"})
WORKLOAD = deployment("app", {"app": str(BACKUP)})


class Syncer:
    def __init__(self) -> None:
        self.calls: list[tuple[Reference, Reference]] = []
        self.failing = False

    async def sync_referrers(self, source: Reference, target: Reference) -> int:
        self.calls.append((source, target))
        if self.failing:
            raise RegistryUnavailableError("503 from the source")
        await asyncio.sleep(0)  # others meet the image while this one is under way
        return 1


def resync(syncer: Syncer, clock: Clock, *, interval: float | None = HOUR) -> ReferrerResync:
    metrics = Metrics(health=Health())
    return ReferrerResync(
        syncer, interval=interval, metrics=metrics, clock=clock, spread=lambda: 0.5
    )


async def test_an_image_copied_here_is_examined_again_an_interval_later() -> None:
    syncer, clock = Syncer(), Clock()
    r = resync(syncer, clock)
    r.copied(SOURCE, BACKUP)

    clock.now += HOUR - 1
    await r.met(WORKLOAD, SOURCE, BACKUP)
    assert syncer.calls == []
    clock.now += 1
    await r.met(WORKLOAD, SOURCE, BACKUP)
    assert syncer.calls == [(SOURCE, BACKUP)]
    await r.met(WORKLOAD, SOURCE, BACKUP)  # and not again before another interval
    assert len(syncer.calls) == 1


async def test_an_image_first_met_already_backed_up_waits_its_share_of_the_interval() -> None:
    syncer, clock = Syncer(), Clock()
    r = resync(syncer, clock)
    await r.met(WORKLOAD, SOURCE, BACKUP)  # a restart on a converged fleet: no request at once
    assert syncer.calls == []
    clock.now += HOUR / 2
    await r.met(WORKLOAD, SOURCE, BACKUP)
    assert syncer.calls == [(SOURCE, BACKUP)]


async def test_workloads_sharing_an_image_examine_it_once() -> None:
    syncer, clock = Syncer(), Clock()
    r = resync(syncer, clock)
    r.copied(SOURCE, BACKUP)
    clock.now += HOUR
    await asyncio.gather(*(r.met(WORKLOAD, SOURCE, BACKUP) for _ in range(50)))
    assert syncer.calls == [(SOURCE, BACKUP)]


async def test_a_failed_examination_is_tried_again_after_retry_and_never_raises() -> None:
    syncer, clock = Syncer(), Clock()
    r = resync(syncer, clock)
    r.copied(SOURCE, BACKUP)
    clock.now += HOUR
    syncer.failing = True
    await r.met(WORKLOAD, SOURCE, BACKUP)
    clock.now += RETRY - 1
    await r.met(WORKLOAD, SOURCE, BACKUP)
    assert len(syncer.calls) == 1
    clock.now += 1
    syncer.failing = False
    await r.met(WORKLOAD, SOURCE, BACKUP)
    assert len(syncer.calls) == 2


async def test_never_means_never() -> None:
    syncer, clock = Syncer(), Clock()
    r = resync(syncer, clock, interval=None)
    r.copied(SOURCE, BACKUP)
    for _ in range(3):
        clock.now += 10 * HOUR
        await r.met(WORKLOAD, SOURCE, BACKUP)
    assert syncer.calls == []


def test_rewritten_containers_pair_the_recorded_original_with_the_pinned_backup() -> None:
    obj = deployment(
        "web",
        {
            "app": f"backup.example/app:v1@{DIGEST}",
            "tagged": "backup.example/other:v2",  # tag form: no digest to examine
            "plain": "nginx:1",  # not rewritten
        },
    )
    originals = {"app": "registry.example/app:v1", "tagged": "other:v2"}
    obj["metadata"]["annotations"] = {ORIGINAL_IMAGES_ANNOTATION: json.dumps(originals)}

    pairs = rewritten_backups(obj, plan_images(obj, SETTINGS))

    assert [(s.name, b.name) for s, b in pairs] == [
        (f"registry.example/app:v1@{DIGEST}", f"backup.example/app:v1@{DIGEST}")
    ]


async def test_the_reconciler_examines_a_rewritten_workload_after_the_interval() -> None:
    kube, copier = FakeKube(), FakeCopier()
    settings = Settings.from_env(
        {"IMAGE_CLONER_REGISTRY": "backup.example", "IMAGE_CLONER_REFERRERS_RESYNC": "0.01"}
    )
    reconciler = Reconciler(
        kube=kube, copier=copier, settings=settings, metrics=Metrics(health=Health())
    )
    web = WorkloadKey("Deployment", "demo", "web")
    kube.add(deployment("web", {"app": "nginx:1"}))
    await reconciler(web)  # copied and rewritten: due an interval after the copy
    assert copier.synced == []

    await asyncio.sleep(0.02)
    await reconciler(web)  # now it names the backup; the annotation names the source

    (image,) = kube.get("Deployment", "demo", "web")["spec"]["template"]["spec"]["containers"]
    assert copier.synced == [(f"nginx:1@{digest('nginx:1')}", image["image"])]
    assert len(kube.patches) == 1


def test_the_setting_reads_seconds_or_never_and_follows_referrers_none() -> None:
    base = {"IMAGE_CLONER_REGISTRY": "backup.example"}
    assert Settings.from_env(base).referrers_resync == HOUR
    resync_env = "IMAGE_CLONER_REFERRERS_RESYNC"
    assert Settings.from_env({**base, resync_env: "900"}).referrers_resync == 900
    with pytest.raises(ConfigError, match=resync_env):
        Settings.from_env({**base, resync_env: "0"})
    assert Settings.from_env({**base, resync_env: "never"}).referrers_resync is None
    off = {**base, "IMAGE_CLONER_REFERRERS": "none"}
    assert Settings.from_env(off).referrers_resync is None


async def test_a_quiet_workload_is_queued_when_its_image_is_due_once_per_image() -> None:
    syncer, clock = Syncer(), Clock()
    r = resync(syncer, clock)
    r.copied(SOURCE, BACKUP)
    assert r.due_workloads() == set()  # due, but no pass met it yet: no workload to queue
    sharing = [deployment(f"app-{i}", {"app": str(BACKUP)}) for i in range(3)]
    for obj in sharing:
        await r.met(obj, SOURCE, BACKUP)
    assert r.due_workloads() == set()  # not due before an interval
    clock.now += HOUR
    # One workload for the image (the last that met it), not one per workload sharing it.
    assert r.due_workloads() == {WorkloadKey("Deployment", "demo", "app-2")}
    assert r.due_workloads() == set(), "handed out once"
    await r.met(sharing[2], SOURCE, BACKUP)  # the queued pass examines it
    assert syncer.calls == [(SOURCE, BACKUP)]
    clock.now += HOUR
    assert r.due_workloads() == {WorkloadKey("Deployment", "demo", "app-2")}


async def test_keep_due_queues_the_workloads_of_due_images() -> None:
    # An interval shorter than TICK is looked at every interval.
    r = ReferrerResync(Syncer(), interval=0.05, metrics=Metrics(health=Health()), spread=lambda: 0)
    assert TICK > 0.05
    await r.met(WORKLOAD, SOURCE, BACKUP)  # first met: due at once (spread 0)
    queued: list[WorkloadKey] = []
    arrived = asyncio.Event()

    def queue(key: WorkloadKey) -> None:
        queued.append(key)
        arrived.set()

    task = asyncio.create_task(r.keep_due(queue))
    try:
        await asyncio.wait_for(arrived.wait(), 5)
    finally:
        task.cancel()
    assert queued == [WorkloadKey("Deployment", "demo", "app")]
    never = ReferrerResync(Syncer(), interval=None, metrics=Metrics(health=Health()))
    await asyncio.wait_for(never.keep_due(queue), 1)  # returns at once: nothing to do
