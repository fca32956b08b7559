"""Finding and stopping the demo's processes by the directory on their command line.

`--keep` leaves the control plane, two registries and the controller running after the demo
exits, and a later `--down` (another process) must stop exactly those. Each of them names
a file in the demo's directory on its command line (a data dir, a config, a kubeconfig), so
`/proc` is the record: no pid file to go stale, and a crash of the demo loses nothing.
Only processes of the kinds the demo starts are matched, so a user's `tail -f` on a log in
that directory, or the shell that launched us, is never touched.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import socket
import time
from pathlib import Path

__all__ = ["leftover_processes", "port_free", "terminate"]

TESTBED_PROGRAMS = frozenset(
    {"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"}
)
OTHER_PROGRAMS = frozenset({"docker-registry"})
STOP_TIMEOUT = 15.0
POLL = 0.05


def leftover_processes(directory: Path, *, testbed: bool = True) -> list[int]:
    """Pids of the demo's kinds of process whose command line points into `directory`.

    With `testbed=False`, the control plane's components are left out (to stop the rest first).
    """
    inside = f"{directory.resolve()}/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if state == "Z" or not any(inside in arg for arg in argv):
            continue
        program = Path(argv[0]).name
        controller = argv[1:3] == ["-m", "image_cloner"]
        if controller or program in OTHER_PROGRAMS or (testbed and program in TESTBED_PROGRAMS):
            found.append(int(entry.name))
    return sorted(found)


def terminate(pids: list[int]) -> None:
    """SIGTERM, then SIGKILL what is still there after a while; wait until all are gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT
        while (pids := [pid for pid in pids if _running(pid)]) and time.monotonic() < deadline:
            time.sleep(POLL)
        if not pids:
            return


def port_free(port: int) -> bool:
    """Whether a server could listen on `port` of 127.0.0.1 (and of ::1, which is localhost
    too for clients that resolve it to IPv6 first)."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            # As servers do: a closed connection lingering in TIME_WAIT does not block them.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError as exc:
                if family == socket.AF_INET6 and exc.errno == errno.EADDRNOTAVAIL:
                    continue  # no IPv6 loopback on this machine: nothing can listen there
                return False
    return True


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        # Our own child: reap it (a zombie of someone else's is already as good as gone).
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return False
    return True
