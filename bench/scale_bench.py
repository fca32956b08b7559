"""The controller at scale on the test bed (`make bench-scale`): install on a busy cluster.

What a new user does on an existing cluster: N Ready Deployments already run (over 30
distinct 2-platform images in an upstream registry, their pods reporting the digest they
run), then the controller is started. Measured, with a counting proxy in front of the
backup registry (`tests.support.proxy`) and the controller's own /proc entry:

1. first pass: seconds from the controller's start until every Deployment is rewritten;
   requests to the backup registry by method and kind; tag PUTs per image; patches per
   workload (growth of `metadata.generation`); controller CPU seconds and peak RSS;
2. restart on the converged fleet: the same counts (target: at most one backup request
   per distinct image, no patch);
3. idle: controller CPU over a window (`--idle`), resyncs included; peak RSS after it;
4. `--shared`: a second test bed with its own controller and the same images, backed up
   into the same registry: what its copies cost there (target: no manifest or blob pushed).

Prints a table with the targets and ratios; `--json PATH` writes every figure. Exit
status 0 whatever the figures (slow is a finding, not an error); 1 when the fleet is not
rewritten in `--timeout`; 2 on bad options. `--quick`: a dozen Deployments, for the smoke
test. The controller runs at `--log-level=info`, as a user runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

# `python bench/scale_bench.py` puts bench/ on sys.path; `bench` and `tests.support` live at
# the repository root.
REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from tests.support.controller import ControllerProcess, controller_kubeconfig  # noqa: E402
from tests.support.images import ImageFactory, ImageSpec, SyntheticImage, push_image  # noqa: E402
from tests.support.pki import make_pki  # noqa: E402
from tests.support.proxy import RegistryProxy  # noqa: E402
from tests.support.registries import RegistryKind, RunningRegistry  # noqa: E402
from tests.support.testbed import Testbed  # noqa: E402

from bench.fleet import DEPLOYMENTS, Cluster, Fleet, Member, Rewrites  # noqa: E402
from bench.scale_figures import Figures, Phase, classify, patches, render  # noqa: E402

IMAGES = 30
NAMESPACES = 10
PODS_PER_NODE = 500
"""KWOK nodes added for the fleet take this many pods each."""
API_QPS = 200
"""The test bed's controller-manager and scheduler may send this many requests per second
(20 and 50 by default): the rollouts that follow a thousand rewrites end in seconds, not
minutes, so the restart meets a converged fleet soon. The controller is not limited."""
IDLE_WINDOW = 150.0
"""Seconds of idle CPU measured by default: more than one resync (every 120 s)."""
SETTLE = 3.0
"""The controller is done when its reconcile count stays put for this long, queue empty."""
CONTROLLER_NAMESPACE = "image-cloner-system"
MIB = 1024 * 1024


# --- the controller's own accounting -------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a live process, from /proc (the kernel's own counters)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cluster_cpu(bed: Testbed) -> float:
    return sum(cpu_seconds(pid) for pid in bed.pids.values())


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MIB
    return 0.0


def settle(controller: ControllerProcess, *, reconciles: int, timeout: float) -> int:
    """Wait until the controller has done at least `reconciles` passes and stopped: its
    queue empty, no copy active, its pass count unchanged for `SETTLE` seconds."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        done = int(controller.metric("image_cloner_reconciles_total", kind="Deployment"))
        busy = controller.metric("image_cloner_queue_depth") or controller.metric(
            "image_cloner_copies_active"
        )
        if done != last or busy:
            last, since = done, time.monotonic()
        elif done >= reconciles and time.monotonic() - since >= SETTLE:
            return done
        time.sleep(0.5)
    raise TimeoutError(f"controller not settled after {timeout:.0f}s ({last} reconciles)")


# --- the world -----------------------------------------------------------------------


@dataclass
class World:
    work: Path
    upstream: RunningRegistry
    backup: RunningRegistry
    proxy: RegistryProxy
    images: list[tuple[str, SyntheticImage]]
    """(repository in the upstream, image)."""
    ca_file: Path

    def env(self) -> dict[str, str]:
        return {
            "IMAGE_CLONER_REGISTRY": self.proxy.host,
            "IMAGE_CLONER_USER": str(self.backup.username),
            "IMAGE_CLONER_PASS": str(self.backup.password),
            "IMAGE_CLONER_CA_FILE": str(self.ca_file),
            "IMAGE_CLONER_POD_NAMESPACE": CONTROLLER_NAMESPACE,
        }

    def members(self, count: int, namespaces: int, prefix: str = "app") -> list[Member]:
        found = []
        for n in range(count):
            repository, image = self.images[n % len(self.images)]
            ref = f"{self.upstream.host}/{repository}"
            found.append(
                Member(
                    namespace=f"scale-{n % namespaces:02d}",
                    name=f"{prefix}-{n:05d}",
                    image=f"{ref}:v1",
                    image_id=f"{ref}@{image.digest}",
                )
            )
        return found


@contextmanager
def world(work: Path, images: int) -> Iterator[World]:
    pki = make_pki(work / "pki")
    with ExitStack() as stack:
        upstream = stack.enter_context(RunningRegistry(work / "upstream", kind=RegistryKind.OPEN))
        backup = stack.enter_context(
            RunningRegistry(work / "backup", kind=RegistryKind.HTPASSWD, pki=pki)
        )
        proxy = stack.enter_context(RegistryProxy(work / "proxy", backup, pki=pki))
        factory = ImageFactory(work / "images")
        seeded = []
        for n in range(images):
            image = factory.build(ImageSpec(seed=f"scale-{n}"))
            repository = f"bench/app-{n:02d}"
            push_image(image, upstream, f"{repository}:v1")
            seeded.append((repository, image))
        yield World(work, upstream, backup, proxy, seeded, pki.ca_cert)


@contextmanager
def testbed(work: Path, workloads: int) -> Iterator[tuple[Testbed, Path]]:
    """A test bed with room for `workloads` pods, and the controller's kubeconfig (RBAC of
    examples/rbac*.yml, as installed)."""
    bed = Testbed(work, die_with_parent=True, api_qps=API_QPS)
    bed.start()
    try:
        bed.add_nodes(math.ceil(workloads / PODS_PER_NODE), pods=PODS_PER_NODE)
        yield bed, controller_kubeconfig(bed, work / "sa-kubeconfig")
    finally:
        bed.stop(keep_logs=True)


# --- the phases ------------------------------------------------------------------------


async def build_fleet(bed: Testbed, members: list[Member], figures: Figures) -> Fleet:
    async with Cluster(bed) as cluster:
        fleet = Fleet(cluster, members)
        started = time.monotonic()
        for namespace in fleet.namespaces:
            body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
            await cluster.call("POST", "/api/v1/namespaces", body=body)
        await fleet.create()
        figures.setup_s["create"] = time.monotonic() - started
        await fleet.wait_ready(limit=60 + len(members) * 0.5)
        figures.setup_s["ready"] = time.monotonic() - started
        await fleet.report_image_ids()
        figures.setup_s["image_ids"] = time.monotonic() - started
        return fleet


def start_controller(world: World, kubeconfig: Path, name: str) -> ControllerProcess:
    controller = ControllerProcess(
        world.work / name, kubeconfig=kubeconfig, env=world.env(), log_level="info"
    )
    controller.start()
    return controller


async def first_pass(
    bed: Testbed, world: World, kubeconfig: Path, members: list[Member], limit: float
) -> tuple[ControllerProcess, Phase]:
    async with Cluster(bed) as cluster:
        fleet = Fleet(cluster, members)
        before = await fleet.generations()
        _, version = await cluster.list(DEPLOYMENTS, labelSelector="bench=scale")
        rewrites = Rewrites(cluster, backup_host=world.proxy.host, expected=len(members))
        follow = asyncio.create_task(rewrites.follow(version))
        world.proxy.reset()
        cluster_before = cluster_cpu(bed)
        started = time.monotonic()
        controller = await asyncio.to_thread(start_controller, world, kubeconfig, "first")
        try:
            await asyncio.wait_for(rewrites.done.wait(), limit)
        except TimeoutError:
            raise SystemExit(
                f"only {len(rewrites.when)} of {len(members)} rewritten in {limit:.0f}s;"
                f" controller log: {controller.log_file}"
            ) from None
        finally:
            follow.cancel()
        times = sorted(when - started for when in rewrites.when.values())
        phase = Phase(
            seconds=times[-1], first_rewrite_s=times[0], median_rewrite_s=times[len(times) // 2]
        )
        assert controller.pid is not None
        phase.cpu_rewritten_s = cpu_seconds(controller.pid)
        phase.cluster_cpu_s = cluster_cpu(bed) - cluster_before
        phase.reconciles = await asyncio.to_thread(
            settle, controller, reconciles=len(members), timeout=limit
        )
        phase.settled_s = time.monotonic() - started - SETTLE
        await _account(phase, controller, world, fleet, before)
        return controller, phase


async def restart(
    bed: Testbed, world: World, kubeconfig: Path, members: list[Member], limit: float
) -> tuple[ControllerProcess, Phase]:
    async with Cluster(bed) as cluster:
        fleet = Fleet(cluster, members)
        before = await fleet.generations()
        world.proxy.reset()
        started = time.monotonic()
        controller = await asyncio.to_thread(start_controller, world, kubeconfig, "restart")
        reconciles = await asyncio.to_thread(
            settle, controller, reconciles=len(members), timeout=limit
        )
        settled = time.monotonic() - started - SETTLE
        phase = Phase(seconds=settled, settled_s=settled, reconciles=reconciles)
        await _account(phase, controller, world, fleet, before)
        return controller, phase


async def _account(
    phase: Phase,
    controller: ControllerProcess,
    world: World,
    fleet: Fleet,
    before: dict[tuple[str, str], int],
) -> None:
    phase.backup_requests, phase.tag_puts = classify(world.proxy.requests())
    phase.patches = patches(before, await fleet.generations())
    assert controller.pid is not None
    phase.cpu_s = cpu_seconds(controller.pid)
    phase.max_rss_mib = peak_rss_mib(controller.pid)


def idle(controller: ControllerProcess, window: float, figures: Figures) -> None:
    assert controller.pid is not None
    before = cpu_seconds(controller.pid)
    time.sleep(window)
    figures.idle_window_s = window
    figures.idle_cpu_s = cpu_seconds(controller.pid) - before
    figures.idle_max_rss_mib = peak_rss_mib(controller.pid)


def shared(work: Path, world: World, count: int, timeout: float) -> Phase:
    """A second cluster, its own controller, the same images and the same backup registry."""
    members = world.members(count, 1, prefix="other")
    with testbed(work / "testbed-2", count) as (bed, kubeconfig):
        figures = Figures(count, len(world.images), 1, "")
        asyncio.run(build_fleet(bed, members, figures))
        controller, phase = asyncio.run(first_pass(bed, world, kubeconfig, members, timeout))
        controller.stop()
        return phase


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", type=int, default=1000, help="Deployments (1000)")
    parser.add_argument("--images", type=int, default=IMAGES, help="distinct images (30)")
    parser.add_argument("--namespaces", type=int, default=NAMESPACES)
    parser.add_argument("--idle", type=float, default=IDLE_WINDOW, help="idle window, seconds")
    parser.add_argument("--shared", type=int, default=0, help="workloads on a second cluster")
    parser.add_argument("--timeout", type=float, default=600.0, help="per phase, seconds")
    parser.add_argument("--quick", action="store_true", help="12 workloads, 3 images, short")
    parser.add_argument("--json", type=Path, help="write every figure here")
    args = parser.parse_args(argv)
    if args.quick:
        args.workloads, args.images, args.namespaces, args.idle = 12, 3, 2, 5.0
        args.shared = args.shared or 3
    if min(args.workloads, args.images, args.namespaces) < 1:
        parser.error("--workloads, --images and --namespaces must be at least 1")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    figures = Figures(args.workloads, args.images, args.namespaces, load)
    with tempfile.TemporaryDirectory(prefix="scale-bench-") as tmp:
        work = Path(tmp)
        with world(work, args.images) as w, testbed(work / "testbed", args.workloads) as bed:
            cluster, kubeconfig = bed
            members = w.members(args.workloads, args.namespaces)
            asyncio.run(build_fleet(cluster, members, figures))
            controller, figures.first = asyncio.run(
                first_pass(cluster, w, kubeconfig, members, args.timeout)
            )
            controller.stop()
            controller, figures.restart = asyncio.run(
                restart(cluster, w, kubeconfig, members, args.timeout)
            )
            idle(controller, args.idle, figures)
            controller.stop()
            if args.shared:
                figures.shared = shared(work, w, args.shared, args.timeout)
    print(render(figures))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(figures), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        sys.stderr.write(f"{e}\n")
        sys.exit(1)
