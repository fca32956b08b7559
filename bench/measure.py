"""Wall time, CPU time and peak RSS of one command, from the kernel's own accounting.

We measure the command as a user runs it (a separate process, interpreter start-up included)
and read CPU time and peak RSS from `wait4`, which reports exactly that child: no sampling,
no in-process instrumentation that would change what is measured. The fork happens in a
tiny launcher process (`launch.py` explains why), not in the benchmark itself.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CommandFailed", "Measurement", "floor", "median", "run_measured"]

KIB = 1024
LAUNCHER = Path(__file__).with_name("launch.py")


class CommandFailed(RuntimeError):
    """The measured command exited non-zero (or was killed at its timeout)."""


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    """Elapsed time from fork to exit."""
    cpu_s: float
    """User + system CPU time of the command."""
    max_rss_bytes: int
    """Peak resident set size of the command."""

    @property
    def max_rss_mib(self) -> float:
        return self.max_rss_bytes / (KIB * KIB)


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log: Path,
    timeout: float,
) -> Measurement:
    """Run `argv` with stdout and stderr going to `log`; raise `CommandFailed` unless it exits 0.

    Output goes to a file, not a pipe, so that reading it costs us nothing while we measure.
    """
    result = log.with_suffix(".rusage.json")
    # -I -S: no site-packages, no user environment: the launcher stays as small as it can.
    launcher = [sys.executable, "-I", "-S", str(LAUNCHER), str(result), *argv]
    with log.open("wb") as out:
        process = subprocess.Popen(
            launcher,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=dict(env),
            start_new_session=True,  # its own group: a timeout kills launcher and command
        )
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            raise CommandFailed(f"{Path(argv[0]).name} took longer than {timeout:.0f}s") from None
    if returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise CommandFailed(f"{Path(argv[0]).name} exited {returncode}: " + " | ".join(tail))
    usage = json.loads(result.read_text())
    return Measurement(
        wall_s=float(usage["wall_s"]),
        cpu_s=float(usage["cpu_s"]),
        # Linux reports ru_maxrss in KiB.
        max_rss_bytes=int(usage["max_rss_kib"]) * KIB,
    )


def floor(*, log: Path) -> Measurement:
    """What measuring `/bin/true` gives: the smallest peak RSS this method can report."""
    return run_measured(["/bin/true"], env=os.environ, log=log, timeout=30)


def median(measurements: Sequence[Measurement]) -> Measurement:
    """Each figure's median on its own (the medians may come from different rounds)."""
    return Measurement(
        wall_s=statistics.median(m.wall_s for m in measurements),
        cpu_s=statistics.median(m.cpu_s for m in measurements),
        max_rss_bytes=int(statistics.median(m.max_rss_bytes for m in measurements)),
    )
