"""`make demo`: the seed README's story, end to end on this machine, in well under a minute.

A newcomer's first command must show the product working without a cluster, Docker or a
network of their own. So the demo assembles what the e2e tests run on - the Go-built control
plane with fake nodes, real `docker-registry` processes, a synthetic multi-platform
`nginx:1.21.4-alpine` pushed with skopeo, the controller as a process under the examples'
ServiceAccount - and narrates the seed's flow: Ready → cloned → rewritten → Ready again →
"image already cloned", then shows the evidence (images, annotation, Event, digests).

Everything lives in one directory (a temp dir, or `.testbed/demo` with `--keep`), and every
process it starts names that directory on its command line. That is how cleanup, and
`--down` after `--keep`, find what to stop, even after a crash of the demo itself.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from tests.support.testbed import Testbed

from scripts.demo_processes import leftover_processes, terminate
from scripts.demo_steps import KEEP_DIR, DemoError, World, run_demo
from scripts.demo_story import Story

__all__ = ["main"]

MARKER = ".image-cloner-demo"
"""Written into the demo's directory, so `--down` never deletes a directory it did not make."""
EXIT_INTERRUPTED = 130


class Interrupted(BaseException):
    """SIGTERM or SIGHUP: unwind like Ctrl-C, through every cleanup."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/demo.sh",
        description="image-cloner end to end on a local test bed and local registries.",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--keep", action="store_true", help="leave everything running to explore")
    mode.add_argument("--down", action="store_true", help="stop what --keep left running")
    parser.add_argument(
        "--dir",
        type=Path,
        help="state directory for --keep and --down (default: .testbed/demo)",
    )
    args = parser.parse_args(argv)
    if args.dir is not None and not (args.keep or args.down):
        parser.error("--dir goes with --keep or --down (a plain demo uses a temp dir)")
    story = Story.for_stdout()
    directory = (args.dir or KEEP_DIR).resolve()
    if args.down:
        return down(directory, story)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _interrupt)
    return demo(directory if args.keep else None, story)


def demo(keep_dir: Path | None, story: Story) -> int:
    """Run the story; clean up unless `keep_dir` is given and everything succeeded."""
    started = time.monotonic()
    try:
        directory = _make_directory(keep_dir)
    except DemoError as exc:
        story.failed(str(exc))
        return 1
    stack = contextlib.ExitStack()
    kept, status, failure = False, 0, ""
    try:
        world = run_demo(directory, story, stack, keep=keep_dir is not None)
        if keep_dir is not None:
            stack.pop_all()
            kept = True
            _explain_kept(world, story, time.monotonic() - started)
    except DemoError as exc:
        status, failure = 1, str(exc)
    except (KeyboardInterrupt, Interrupted):
        status, failure = EXIT_INTERRUPTED, "interrupted; everything it started is stopped"
    finally:  # also for a bug's exception, which then goes on with its traceback
        if not kept:
            left = _clean_up(directory, stack, story)
            if left:
                status, failure = status or 1, f"{failure}\nstill running after cleanup: {left}"
            else:
                story.ok(f"stopped every process and removed {directory}")
            story.say(f"the demo took {time.monotonic() - started:.1f} s")
    if failure:
        story.failed(failure.strip())  # last, so it is what the reader sees
    return status


def _clean_up(directory: Path, stack: contextlib.ExitStack, story: Story) -> list[int]:
    # Cleanup must finish: a second Ctrl-C would leave processes behind.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    story.section("Clean up")
    try:
        stack.close()
    finally:
        left = _sweep(directory)
    return left


def down(directory: Path, story: Story) -> int:
    """Stop a demo left running by `--keep` in `directory` and remove the directory."""
    if not directory.exists():
        story.say(f"nothing to stop: {directory} does not exist")
        return 0
    if not (directory / MARKER).exists():
        story.failed(f"{directory} is not a demo directory (no {MARKER}); not touching it")
        return 1
    # The controller and the registries first, so that none of them outlives the apiserver
    # and waits out a timeout on it; then the control plane in its own order; then anything.
    terminate(leftover_processes(directory, testbed=False))
    Testbed.attach(directory / "testbed").stop()
    left = _sweep(directory)
    if left:
        story.failed(f"processes still running: {left}")
        return 1
    story.ok(f"stopped the demo's test bed, registries and controller; removed {directory}")
    return 0


def _make_directory(keep_dir: Path | None) -> Path:
    if keep_dir is None:
        directory = Path(tempfile.mkdtemp(prefix="image-cloner-demo-"))
    else:
        if leftover_processes(keep_dir):
            raise DemoError(
                f"a demo kept earlier still runs in {keep_dir}; "
                "stop it first with `scripts/demo.sh --down`"
            )
        if keep_dir.exists():
            if not (keep_dir / MARKER).exists() and any(keep_dir.iterdir()):
                raise DemoError(f"{keep_dir} exists and is not a demo directory; pick another")
            shutil.rmtree(keep_dir)
        directory = keep_dir
        directory.mkdir(parents=True)
    (directory / MARKER).touch()
    return directory


def _sweep(directory: Path) -> list[int]:
    """Stop whatever still runs from `directory`, remove it; return pids that survived."""
    terminate(leftover_processes(directory))
    shutil.rmtree(directory, ignore_errors=True)
    return leftover_processes(directory)


def _explain_kept(world: World, story: Story, seconds: float) -> None:
    d = world.directory
    story.section(f"Still running (set up in {seconds:.1f} s): explore it")
    bin_dir = world.testbed.bin_dir
    story.output(
        f"""export KUBECONFIG={world.testbed.kubeconfig}    # cluster-admin on the test bed
export PATH={bin_dir}:$PATH    # kubectl
kubectl get deploy -n demo-system
kubectl get deployment nginx -n demo-system -o yaml
kubectl get events -n demo-system --field-selector reason=ImagesCloned
kubectl create deployment web -n demo-system --image=nginx:1.21.4-alpine    # backed up too

# the upstream that plays docker.io, and the backup registry:
{world.skopeo_inspect_source()}
{world.skopeo_inspect_backup()}

tail -f {world.controller.log_file}    # the controller's log (JSON lines)
curl -s http://127.0.0.1:{world.controller.metrics_port}/metrics | grep ^image_cloner"""
    )
    story.say("Stop it all (test bed, registries, controller) and remove its files with:")
    down_cmd = "scripts/demo.sh --down"
    if d != KEEP_DIR:
        down_cmd += f" --dir {d}"
    story.output(down_cmd)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
