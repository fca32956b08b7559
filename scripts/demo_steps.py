"""The demo's steps: the seed README's flow on the test bed, told as it happens.

Each step is built from the e2e tests' helpers (`tests.support`), so the demo shows exactly
what the tests prove. Each step registers the cleanup of what it starts on the caller's
`ExitStack` before starting it, so a failure or Ctrl-C at any point stops everything, and
turns any failure into a `DemoError` that names the step and what it was waiting for.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support import skopeo
from tests.support.controller import ControllerProcess, controller_kubeconfig, wait_until
from tests.support.images import ImageFactory, ImageKind, ImageSeeder
from tests.support.pki import TestPKI, make_pki
from tests.support.registries import RegistryKind, RunningRegistry
from tests.support.testbed import Testbed

from scripts.demo_processes import port_free
from scripts.demo_story import ControllerEcho, DigestRow, Story

__all__ = ["KEEP_DIR", "STEPS", "DemoError", "World", "run_demo"]

REPO = Path(__file__).resolve().parents[1]
KEEP_DIR = REPO / ".testbed" / "demo"
EXAMPLES = REPO / "examples"
STEPS = 7
PREFERRED_PORT = 5000
"""The seed's IMAGE_CLONER_REGISTRY=localhost:5000, when nothing else listens there."""
NAMESPACE, DEPLOYMENT, IMAGE = "demo-system", "nginx", "nginx:1.21.4-alpine"
SOURCE_REPOSITORY, BACKUP_REPOSITORY = "library/nginx", "nginx"
UPSTREAM_NAME = f"{SOURCE_REPOSITORY}:1.21.4-alpine"
ROLLOUT_TIMEOUT = 90
CLONE_TIMEOUT = 90.0
POLL = 0.3
"""kubectl is a process per call: poll gently on two cores."""
IMAGE_PATH = "{.spec.template.spec.containers[0].image}"
ANNOTATION = "image-cloner.io/original-images"
ANNOTATION_PATH = "{.metadata.annotations.image-cloner\\.io/original-images}"
_FAILURES = (RuntimeError, AssertionError, OSError, ValueError, subprocess.SubprocessError)


class DemoError(Exception):
    """A step failed; the message says which and why."""


@dataclass(frozen=True)
class World:
    """What the demo started, for the `--keep` instructions."""

    directory: Path
    testbed: Testbed
    upstream: RunningRegistry
    backup: RunningRegistry
    backup_host: str
    controller: ControllerProcess

    def skopeo_inspect_source(self, name: str = UPSTREAM_NAME) -> str:
        return _shell("skopeo", "inspect", "--raw", "--tls-verify=false", self.source_ref(name))

    def skopeo_inspect_backup(self, name: str = IMAGE) -> str:
        flags = self.backup.skopeo_flags("inspect")
        return _shell("skopeo", "inspect", "--raw", *flags, f"docker://{self.backup_host}/{name}")

    def source_ref(self, name: str) -> str:
        return f"docker://{self.upstream.host}/{name}"


def run_demo(directory: Path, story: Story, stack: contextlib.ExitStack, *, keep: bool) -> World:
    """Steps 1-7; whatever they start is stopped by `stack.close()`."""
    story.title(
        f"image-cloner demo: the seed README's story on this machine (files in {directory})"
    )
    with _step(story, 1, "Start a Kubernetes control plane (the test bed)"):
        testbed = Testbed(directory / "testbed", die_with_parent=not keep)
        stack.callback(testbed.stop)
        testbed.start()
        story.ok(f"etcd, kube-apiserver at {testbed.server}, controller-manager, scheduler")
        story.ok("KWOK runs 2 fake nodes: pods get Ready without a container runtime")

    with _step(story, 2, "Start two registries: docker.io's stand-in and the backup"):
        upstream, backup, host = _registries(directory, story, stack)

    with _step(story, 3, "Run the controller as the ServiceAccount of examples/rbac*.yml"):
        controller, echo = _controller(
            story, stack, testbed, directory=directory, upstream=upstream, backup=backup, host=host
        )

    # Pinned to the digest that runs (KWOK's pods report none: the tag's, as skopeo reads it).
    source_ref = f"docker://{upstream.host}/{UPSTREAM_NAME}"
    source_digest = _digest(skopeo.run("inspect", "--raw", "--tls-verify=false", source_ref))
    target = f"{host}/{IMAGE}@{source_digest}"
    with _step(story, 4, "Deploy nginx and wait until it is Ready"):
        _kubectl(story, testbed, "apply", "-f", str(EXAMPLES / "deploy-nginx.yml"))
        before = _kubectl(story, testbed, *_get("jsonpath=" + IMAGE_PATH))
        _rollout(story, testbed)

    with _step(story, 5, "The controller copies the image and rewrites the Deployment"):
        wait_until(
            lambda: _image(testbed) == target,
            timeout=CLONE_TIMEOUT,
            what=f"the controller to rewrite deployment/{DEPLOYMENT} to {target}",
            interval=POLL,
        )
        echo.drain()
        story.ok(f"deployment/{DEPLOYMENT}: {before} → {target}")

    with _step(story, 6, "The new rollout gets Ready; the next pass finds the copy"):
        _rollout(story, testbed)
        where = {"name": DEPLOYMENT, "namespace": NAMESPACE}
        controller.wait_for_line("image already cloned", image=target, timeout=60.0, **where)
        echo.stop()
        story.ok("image already cloned: nothing is copied twice")

    world = World(directory, testbed, upstream, backup, host, controller)
    with _step(story, 7, "What changed, and proof the copy is byte for byte"):
        _evidence(story, world, before, target)
    return world


@contextlib.contextmanager
def _step(story: Story, number: int, title: str) -> Iterator[None]:
    story.heading(number, STEPS, title)
    started = time.monotonic()
    try:
        yield
    except AssertionError as exc:
        # A wait that timed out: its first line says what was awaited; the controller log
        # tail after it repeats what the echo already showed.
        reason = str(exc).splitlines()[0]
        raise DemoError(f"step {number} ({title}): {reason}") from exc
    except _FAILURES as exc:
        raise DemoError(f"step {number} ({title}): {exc}") from exc
    story.say(f"({time.monotonic() - started:.1f} s)")


def _registries(
    directory: Path, story: Story, stack: contextlib.ExitStack
) -> tuple[RunningRegistry, RunningRegistry, str]:
    pki = make_pki(directory / "pki")
    upstream = RunningRegistry(directory / "upstream", kind=RegistryKind.OPEN)
    stack.callback(upstream.stop)
    upstream.start()
    images = directory / "images"
    image = ImageSeeder(ImageFactory(images))(
        upstream, UPSTREAM_NAME, ImageKind.INDEX, seed="nginx"
    )
    shutil.rmtree(images)
    platforms = ", ".join(m.platform for m in image.manifests)
    story.ok(f"upstream {upstream.url} (HTTP, no auth) holds a synthetic {UPSTREAM_NAME}")
    story.say(f"  an OCI index over {platforms}, made on this machine and pushed with skopeo;")
    story.say("  the controller reads it as docker.io through IMAGE_CLONER_REGISTRY_MIRRORS")
    backup = _backup_registry(directory / "backup", pki, story, stack)
    host = f"localhost:{backup.port}"
    story.ok(f"backup registry https://{host} (TLS from a demo CA, htpasswd testuser/testpass)")
    return upstream, backup, host


def _backup_registry(
    workdir: Path, pki: TestPKI, story: Story, stack: contextlib.ExitStack
) -> RunningRegistry:
    def started(port: int | None) -> RunningRegistry:
        registry = RunningRegistry(workdir, kind=RegistryKind.HTPASSWD, pki=pki, port=port)
        stack.callback(registry.stop)
        registry.start()
        return registry

    if port_free(PREFERRED_PORT):
        try:
            return started(PREFERRED_PORT)
        except RuntimeError:  # taken between our check and its start: any free port will do
            pass
    registry = started(None)
    story.warn(
        f"port {PREFERRED_PORT} is taken, so the backup registry listens on {registry.port}: "
        f"images become localhost:{registry.port}/..."
    )
    return registry


def _controller(
    story: Story,
    stack: contextlib.ExitStack,
    testbed: Testbed,
    *,
    directory: Path,
    upstream: RunningRegistry,
    backup: RunningRegistry,
    host: str,
) -> tuple[ControllerProcess, ControllerEcho]:
    story.command("kubectl apply -f examples/rbac.yml -f examples/rbac-pull-secrets.yml")
    kubeconfig = controller_kubeconfig(testbed, directory / "controller.kubeconfig")
    story.ok("ServiceAccount image-cloner-system/image-cloner; its token is in " + kubeconfig.name)
    env = {
        "IMAGE_CLONER_REGISTRY": host,
        "IMAGE_CLONER_USER": str(backup.username),
        "IMAGE_CLONER_PASS": str(backup.password),
        "IMAGE_CLONER_CA_FILE": str(backup.ca_file),
        "IMAGE_CLONER_REGISTRY_MIRRORS": f"docker.io={upstream.url}",
        "IMAGE_CLONER_POD_NAMESPACE": "image-cloner-system",
    }
    controller = ControllerProcess(directory / "controller", kubeconfig=kubeconfig, env=env)
    shown = {**env, "IMAGE_CLONER_PASS": "***"}
    for key, value in shown.items():
        story.command(f"export {key}={shlex.quote(value)}")
    story.command(f"image-cloner run --kubeconfig={kubeconfig} --log-level=debug --log-format=json")
    story.say("its log lines follow, as they are written (JSON, shown the seed's way):")
    echo = ControllerEcho(controller.log_file, story)
    stack.callback(controller.stop)
    stack.callback(echo.stop)  # runs first: the controller's shutdown lines are not the story
    echo.start()
    controller.start()
    controller.wait_for_line("backup registry check passed: reachable, push allowed")
    echo.drain()
    return controller, echo


def _evidence(story: Story, world: World, before: str, target: str) -> None:
    testbed = world.testbed
    after = _kubectl(story, testbed, *_get("jsonpath=" + IMAGE_PATH))
    story.ok(f"image before: {before}")
    story.ok(f"image after:  {after}")
    if (before, after) != (IMAGE, target):
        raise AssertionError(f"expected {IMAGE} → {target}, saw {before} → {after}")
    original = _kubectl(story, testbed, *_get("jsonpath=" + ANNOTATION_PATH))
    story.ok(f"annotation {ANNOTATION} keeps the original: {original}")
    wait_until(
        lambda: _events(testbed),
        timeout=30.0,
        what="the ImagesCloned Event",
        interval=POLL,
    )
    selector = "--field-selector=reason=ImagesCloned"
    _kubectl(story, testbed, "get", "events", "-n", NAMESPACE, selector)
    story.say("skopeo reads both registries (every manifest, by digest, for each platform):")
    story.command(world.skopeo_inspect_source())
    story.command(world.skopeo_inspect_backup())
    rows = _digests(world)
    story.digest_table(
        f"docker.io/{UPSTREAM_NAME} (as {world.upstream.host}/{UPSTREAM_NAME})",
        f"{target}",
        rows,
    )
    if any(row.source != row.backup for row in rows):
        raise AssertionError("the backup differs from the source")
    story.ok(f"all {len(rows)} manifests identical: the index and every platform's image")


def _digests(world: World) -> list[DigestRow]:
    """Digests of the index and each platform's manifest, as skopeo reads them on each side."""

    def source(ref: str) -> bytes:
        return skopeo.run("inspect", "--raw", "--tls-verify=false", world.source_ref(ref))

    def backup(ref: str) -> bytes:
        flags = world.backup.skopeo_flags("inspect")
        return skopeo.run("inspect", "--raw", *flags, f"docker://{world.backup_host}/{ref}")

    top = source(UPSTREAM_NAME)
    rows = [DigestRow("index", _digest(top), _digest(backup(IMAGE)))]
    index: dict[str, Any] = json.loads(top)
    for child in index["manifests"]:
        p = child["platform"]
        platform = "/".join(filter(None, (p["os"], p["architecture"], p.get("variant"))))
        digest = child["digest"]
        rows.append(
            DigestRow(
                platform,
                _digest(source(f"{SOURCE_REPOSITORY}@{digest}")),
                _digest(backup(f"{BACKUP_REPOSITORY}@{digest}")),
            )
        )
    return rows


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _get(output: str) -> tuple[str, ...]:
    return ("get", "deployment", DEPLOYMENT, "-n", NAMESPACE, "-o", output)


def _image(testbed: Testbed) -> str:
    return testbed.kubectl(*_get("jsonpath=" + IMAGE_PATH)).stdout.strip()


def _events(testbed: Testbed) -> bool:
    found = testbed.kubectl(
        "get", "events", "-n", NAMESPACE, "--field-selector=reason=ImagesCloned", "-o", "name"
    )
    return bool(found.stdout.strip())


def _rollout(story: Story, testbed: Testbed) -> None:
    _kubectl(
        story,
        testbed,
        "rollout",
        "status",
        f"deployment/{DEPLOYMENT}",
        "-n",
        NAMESPACE,
        f"--timeout={ROLLOUT_TIMEOUT}s",
        timeout=ROLLOUT_TIMEOUT + 10,
    )


def _kubectl(story: Story, testbed: Testbed, *args: str, timeout: float = 60.0) -> str:
    """Run kubectl as cluster-admin, showing the command as a user would type it."""
    with story.hold_controller():
        story.command(_shell("kubectl", *args))
        out = testbed.kubectl(*args, timeout=timeout).stdout.strip()
        story.output(out)
    return out


def _shell(*args: str) -> str:
    """The command as a user in the repository would type it (the examples relative to it)."""
    return shlex.join(args).replace(f"{EXAMPLES}/", "examples/")
