"""Two controller processes, one Lease: exactly one works, and hand-overs never make two writers.

Both run as the examples' ServiceAccount (examples/rbac*.yml, the Lease Role included),
scoped to the test's namespace, with short lease settings (4 s / 3 s / 0.5 s) so that the
stories stay quick: a SIGKILLed leader in the middle of a copy is replaced within the lease
duration and the other converges with every tag PUT once and every workload patched once; a
SIGTERMed leader releases the Lease and the other leads in under 2 s; a leader cut off from
the apiserver (a TCP forwarder turned black hole) stops before its Lease can expire.

The backup registry sits behind a counting proxy (every PUT is seen); images whose copy must
stall are referenced straight at the source's proxy, as in test_controller.py.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.support.controller import (
    CONTROLLER_NAMESPACE,
    LEASE,
    ControllerProcess,
    wait_until,
)
from tests.support.images import ImageSeeder, ImageSpec
from tests.support.pki import TestPKI
from tests.support.proxy import RegistryProxy
from tests.support.registries import RunningRegistry
from tests.support.tcp_forwarder import TcpForwarder, kubeconfig_via
from tests.support.testbed import Testbed

LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = 4.0, 3.0, 0.5
JITTER = 1.2
"""A candidate waits retry x (1 + up to 1.2) between tries (client-go's JitterUntil)."""
MAX_RETRY_WAIT = RETRY_PERIOD * (1 + JITTER)
ROLLOUT = 90.0
POLL = 0.3


@pytest.fixture(scope="module")
def backup_proxy(
    *, tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI, backup: RunningRegistry
) -> Iterator[RegistryProxy]:
    """The backup registry as the controllers see it: every request counted."""
    proxy = RegistryProxy(tmp_path_factory.mktemp("backup-proxy"), backup, pki=test_pki)
    with proxy:
        yield proxy


@pytest.fixture
def lease(testbed: Testbed) -> Iterator[None]:
    """No Lease left over from an earlier test (a killed holder would hold it for a while)."""
    testbed.kubectl("delete", "lease", LEASE, "-n", CONTROLLER_NAMESPACE, "--ignore-not-found")
    yield
    testbed.kubectl("delete", "lease", LEASE, "-n", CONTROLLER_NAMESPACE, "--ignore-not-found")


class Pair:
    """Two controllers for one namespace; `leader()` tells which one works."""

    def __init__(
        self,
        tmp_path: Path,
        *,
        kubeconfig: Path,
        namespace: str,
        backup: RunningRegistry,
        backup_proxy: RegistryProxy,
        pki: TestPKI,
    ) -> None:
        self.env = {
            "IMAGE_CLONER_REGISTRY": backup_proxy.host,
            "IMAGE_CLONER_USER": str(backup.username),
            "IMAGE_CLONER_PASS": str(backup.password),
            "IMAGE_CLONER_CA_FILE": str(pki.ca_cert),
            "IMAGE_CLONER_POD_NAMESPACE": CONTROLLER_NAMESPACE,
            "IMAGE_CLONER_NAMESPACE": namespace,
            "IMAGE_CLONER_LEADER_ELECTION": "true",
            "IMAGE_CLONER_LEADER_ELECTION_LEASE_DURATION": f"{LEASE_DURATION:g}",
            "IMAGE_CLONER_LEADER_ELECTION_RENEW_DEADLINE": f"{RENEW_DEADLINE:g}",
            "IMAGE_CLONER_LEADER_ELECTION_RETRY_PERIOD": f"{RETRY_PERIOD:g}",
        }
        self.tmp_path = tmp_path
        self.kubeconfig = kubeconfig
        self.controllers: list[ControllerProcess] = []

    def start(self, name: str, *, kubeconfig: Path | None = None) -> ControllerProcess:
        process = ControllerProcess(
            self.tmp_path / name, kubeconfig=kubeconfig or self.kubeconfig, env=self.env
        )
        self.controllers.append(process)
        process.start()
        return process

    def leader(self) -> tuple[ControllerProcess, ControllerProcess]:
        """(leader, follower) once exactly one leads and the Lease names it."""

        def settled() -> tuple[ControllerProcess, ControllerProcess] | None:
            leading = [c for c in self.controllers if c.running and leads(c)]
            others = [c for c in self.controllers if c.running and c not in leading]
            if len(leading) != 1 or len(others) != 1:
                return None
            return leading[0], others[0]

        return wait_until(settled, timeout=LEASE_DURATION * 4, what="exactly one leader")

    def stop_all(self) -> None:
        for process in self.controllers:
            if process.running:
                code = process.stop()
                assert code == 0, f"exited {code}:\n{process.log_text()[-3000:]}"


@pytest.fixture
def pair(
    *,
    tmp_path: Path,
    sa_kubeconfig: Path,
    namespace: str,
    backup: RunningRegistry,
    backup_proxy: RegistryProxy,
    test_pki: TestPKI,
    lease: None,
) -> Iterator[Pair]:
    both = Pair(
        tmp_path,
        kubeconfig=sa_kubeconfig,
        namespace=namespace,
        backup=backup,
        backup_proxy=backup_proxy,
        pki=test_pki,
    )
    try:
        yield both
    finally:
        both.stop_all()


# --- helpers ------------------------------------------------------------------------


def leads(controller: ControllerProcess) -> bool:
    return controller.metric("image_cloner_leader") == 1


def identity(controller: ControllerProcess) -> str:
    return str(controller.wait_for_line("starting controller")["leader_election"])


def lease_holder(testbed: Testbed) -> str:
    lease = json.loads(
        testbed.kubectl("get", "lease", LEASE, "-n", CONTROLLER_NAMESPACE, "-o", "json").stdout
    )
    return str(lease["spec"].get("holderIdentity") or "")


def logged_at(line: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(str(line["time"]))


def deployment(name: str, namespace: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]},
            },
        },
    }


def apply(testbed: Testbed, manifest: dict[str, Any]) -> None:
    testbed.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def get(testbed: Testbed, namespace: str, name: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(
        testbed.kubectl("get", "deployment", name, "-n", namespace, "-o", "json").stdout
    )
    return result


def wait_for_image(testbed: Testbed, namespace: str, name: str, image: str) -> dict[str, Any]:
    def rewritten() -> dict[str, Any] | None:
        obj = get(testbed, namespace, name)
        # Rewrites are pinned (`image@sha256:…`): KWOK reports no digest, so the tag's.
        current = obj["spec"]["template"]["spec"]["containers"][0]["image"]
        return obj if current == image or current.startswith(f"{image}@sha256:") else None

    return wait_until(rewritten, timeout=ROLLOUT, what=f"{name} → {image}", interval=POLL)


def cloned_events(testbed: Testbed, namespace: str, name: str) -> list[dict[str, Any]]:
    items = json.loads(testbed.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    return [
        e
        for e in items["items"]
        if e["involvedObject"].get("name") == name and e.get("reason") == "ImagesCloned"
    ]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


# --- the stories --------------------------------------------------------------------


def test_exactly_one_replica_leads_and_both_are_ready(
    *,
    pair: Pair,
    testbed: Testbed,
    namespace: str,
    seed_image: ImageSeeder,
    upstream: RegistryProxy,
) -> None:
    first, second = pair.start("first"), pair.start("second")
    leader, follower = pair.leader()
    assert lease_holder(testbed) == identity(leader)
    assert identity(leader) != identity(follower)
    # Renewals keep it that way: over two lease durations, never two leaders.
    deadline = time.monotonic() + 2 * LEASE_DURATION
    while time.monotonic() < deadline:
        assert [leads(first), leads(second)].count(True) == 1
        time.sleep(POLL)
    # The follower watches too, so its readiness means what the leader's does.
    wait_until(
        lambda: leader.readyz()[0] == follower.readyz()[0] == 200, timeout=30, what="/readyz"
    )

    name = unique("one")
    seed_image(upstream.upstream, f"{name}:1", "index", seed=name)
    apply(testbed, deployment("app", namespace, upstream.ref(f"{name}:1")))
    backup_ref = f"{pair.env['IMAGE_CLONER_REGISTRY']}/127.0.0.1_{upstream.port}/{name}:1"
    wait_for_image(testbed, namespace, "app", backup_ref)
    kind = {"kind": "Deployment"}
    assert leader.metric("image_cloner_workloads_rewritten_total", **kind) == 1
    assert follower.metric("image_cloner_workloads_rewritten_total", **kind) == 0
    assert follower.metric("image_cloner_images_copied_total") == 0


def test_leader_killed_mid_copy_is_replaced_and_every_tag_is_put_once(
    *,
    pair: Pair,
    testbed: Testbed,
    namespace: str,
    seed_image: ImageSeeder,
    upstream: RegistryProxy,
    backup_proxy: RegistryProxy,
) -> None:
    done, stalled_name = unique("done"), unique("stalled")
    seed_image(upstream.upstream, f"{done}:1", "index", seed=done)
    image = seed_image(
        upstream.upstream, f"{stalled_name}:1", ImageSpec(layer_size=256 * 1024), seed=stalled_name
    )
    held_back = image.blob_digests[0]
    target = f"{backup_proxy.host}/127.0.0.1_{upstream.port}"
    pair.start("first")
    pair.start("second")
    leader, follower = pair.leader()
    backup_proxy.reset()

    # One workload converges under the first leader...
    apply(testbed, deployment("done", namespace, upstream.ref(f"{done}:1")))
    wait_for_image(testbed, namespace, "done", f"{target}/{done}:1")
    # ...the other's copy is under way, one blob held back ("busy, retry in 60 s").
    upstream.fail_next(1, status=503, retry_after=60, path=rf"/blobs/{held_back}$")
    apply(testbed, deployment("app", namespace, upstream.ref(f"{stalled_name}:1")))
    wait_until(
        lambda: upstream.count("GET", rf"/blobs/{held_back}$") == 1,
        timeout=ROLLOUT,
        what="the held-back blob to be asked for",
        interval=POLL,
    )
    killed = time.monotonic()
    leader.kill()
    wait_until(lambda: leads(follower), timeout=3 * LEASE_DURATION, what="take-over", interval=0.1)
    took_over = time.monotonic() - killed
    # The lease duration after the follower last saw it renewed, plus its retry waits.
    assert took_over <= LEASE_DURATION + 2 * MAX_RETRY_WAIT + 1.0, took_over
    assert lease_holder(testbed) == identity(follower)

    wait_for_image(testbed, namespace, "app", f"{target}/{stalled_name}:1")
    puts = Counter(r.path for r in backup_proxy.requests() if r.method == "PUT")
    for repository in (done, stalled_name):
        tag = f"/v2/127.0.0.1_{upstream.port}/{repository}/manifests/1"
        assert puts[tag] == 1, (tag, puts)
    manifests = {path: n for path, n in puts.items() if "/manifests/" in path}
    assert set(manifests.values()) == {1}, manifests
    # One patch per workload: the spec changed once (generation 1 → 2), one Event each.
    for name in ("done", "app"):
        assert get(testbed, namespace, name)["metadata"]["generation"] == 2, name
        events = cloned_events(testbed, namespace, name)
        assert [e.get("count", 1) for e in events] == [1], (name, events)


def test_sigterm_hands_the_lease_over_in_under_two_seconds(pair: Pair, testbed: Testbed) -> None:
    pair.start("first")
    pair.start("second")
    leader, follower = pair.leader()
    started = time.monotonic()
    leader.interrupt()
    wait_until(lambda: leads(follower), timeout=LEASE_DURATION * 2, what="hand-over", interval=0.05)
    assert time.monotonic() - started < 2.0
    assert leader.stop() == 0
    assert leader.find("released the lease")
    assert lease_holder(testbed) == identity(follower)


def test_leader_cut_off_from_the_apiserver_steps_down_before_its_lease_expires(
    pair: Pair, testbed: Testbed, sa_kubeconfig: Path, tmp_path: Path
) -> None:
    host, _, port = testbed.server.removeprefix("https://").rpartition(":")
    with TcpForwarder(host, int(port)) as forwarder:
        cut_off = pair.start(
            "cut-off", kubeconfig=kubeconfig_via(sa_kubeconfig, forwarder, tmp_path / "kc.json")
        )
        wait_until(lambda: leads(cut_off), timeout=LEASE_DURATION * 2, what="first to lead")
        other = pair.start("other")
        assert pair.leader() == (cut_off, other)
        time.sleep(2 * RETRY_PERIOD)  # a renewal or two through the forwarder

        cut = time.monotonic()
        forwarder.cut()
        wait_until(lambda: not leads(cut_off), timeout=LEASE_DURATION * 2, what="stepping down")
        stepped_down = time.monotonic() - cut
        wait_until(lambda: leads(other), timeout=LEASE_DURATION * 3, what="the other to lead")
        # Within the renew deadline of its last renewal, which came at most a retry before.
        assert stepped_down <= RENEW_DEADLINE + 1.0, stepped_down
        stopped = cut_off.wait_for_line("stopped leading")
        started = other.wait_for_line("started leading")
        assert "renew deadline" in stopped["reason"]
        # Never two writers: the old leader had stopped before the new one began.
        assert logged_at(stopped) < logged_at(started)
        assert lease_holder(testbed) == identity(other)

        # Reconnected, it follows; it does not take the Lease back.
        forwarder.restore()
        cut_off.wait_for_line("leader is", holder=identity(other), timeout=LEASE_DURATION * 3)
        time.sleep(LEASE_DURATION)
        assert not leads(cut_off)
        assert leads(other)
        pair.stop_all()
