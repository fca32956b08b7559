"""Starting and stopping the real processes the tests run against.

Registries, the token issuer, the proxy, the controller and the Kubernetes test bed are all
services that someone starts and must stop again, even when a test fails: `Service` gives them
the context-manager half of that. The ones that are a single child process (`ServiceProcess`) also
share how they start (output appended to a log file, ready once a URL answers, stopped again if it
never does) and stop (SIGTERM, then SIGKILL if it does not exit in time). The test bed's
components form a `ProcessGroup`, which a later process can still find and stop.
"""

from __future__ import annotations

import abc
import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = [
    "READY_TIMEOUT",
    "STOP_TIMEOUT",
    "ProcessGroup",
    "Service",
    "ServiceProcess",
    "client_ssl_context",
    "free_port",
    "free_ports",
    "log_tail",
    "stop_process",
    "wait_until_ready",
]

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


class Service(abc.ABC):
    """Something with `start()` and `stop()`; as a context manager, started and always stopped."""

    @abc.abstractmethod
    def start(self) -> None: ...

    @abc.abstractmethod
    def stop(self) -> object: ...

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class ServiceProcess(Service):
    """A service that is one child process, its output appended to `log_file`."""

    log_file: Path
    _process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _launch(
        self,
        command: Sequence[str],
        *,
        ready_url: str,
        ca_file: Path | None,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        new_session: bool = False,
        timeout: float = READY_TIMEOUT,
    ) -> None:
        """Start `command` and wait until `ready_url` answers; stop it again if it never does."""
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                command,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
            )
        try:
            wait_until_ready(
                self._process, ready_url, ca_file=ca_file, log_file=self.log_file, timeout=timeout
            )
        except BaseException:
            self.stop()
            raise

    def _terminate(self) -> int | None:
        """`stop_process`; the exit status, or None if it was not started."""
        if self._process is None:
            return None
        stop_process(self._process)
        code = self._process.returncode
        self._process = None
        return code


class ProcessGroup:
    """Named processes in one process group; the first one spawned leads it, the others join.

    `pgid` and `pids` are plain data for a state file: a group rebuilt from them in another
    process finds its processes through /proc, so it can stop what an earlier process started.
    """

    def __init__(
        self,
        *,
        pgid: int | None = None,
        pids: Mapping[str, int] | None = None,
        launcher: Sequence[str] = (),
    ) -> None:
        """`launcher` goes before every command (e.g. `setpriv --pdeathsig=KILL`)."""
        self.pgid = pgid
        self.pids: dict[str, int] = dict(pids or {})
        self._launcher = list(launcher)
        self._procs: dict[int, subprocess.Popen[bytes]] = {}

    def spawn(self, name: str, command: Sequence[str], *, log_file: Path, cwd: Path) -> None:
        """Start `command` as `name`, its output appended to `log_file`."""
        with log_file.open("ab") as log:
            proc = subprocess.Popen(
                [*self._launcher, *command],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                process_group=0 if self.pgid is None else self.pgid,
            )
        self._procs[proc.pid] = proc
        self.pids[name] = proc.pid
        if self.pgid is None:
            self.pgid = proc.pid

    def exited(self) -> str | None:
        """The name of a process spawned by this object that has exited, if any."""
        for name, pid in self.pids.items():
            proc = self._procs.get(pid)
            if proc is not None and proc.poll() is not None:
                return name
        return None

    def alive(self) -> list[int]:
        """Our recorded processes that still run (zombies and reused pids do not count)."""
        alive = []
        for pid in self.pids.values():
            proc = self._procs.get(pid)
            if proc is not None:
                if proc.poll() is None:
                    alive.append(pid)
            elif _runs_in_group(pid, self.pgid):
                alive.append(pid)
        return alive

    def stop(self, *, timeout: float, poll: float) -> None:
        """SIGTERM each in the reverse order of spawning, waiting up to `timeout` for each, then
        SIGKILL the group; RuntimeError if something survives that too."""
        for pid in reversed(self.alive()):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while pid in self.alive() and time.monotonic() < deadline:
                time.sleep(poll)
        if self.pgid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while self.alive():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"processes {self.alive()} survived SIGKILL")
                time.sleep(poll)
        self._procs.clear()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """`count` different TCP ports on 127.0.0.1 that nobody listens on right now."""
    # Keep all sockets open until every port is picked, so the ports differ from each other.
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def wait_until_ready(
    process: subprocess.Popen[bytes],
    url: str,
    *,
    ca_file: Path | None,
    log_file: Path,
    timeout: float = READY_TIMEOUT,
) -> None:
    """Poll `url` until it answers with any HTTP status; fail early if the process dies."""
    context = client_ssl_context(ca_file)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args!r} exited with {process.returncode}:\n{log_tail(log_file)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2, context=context):
                return
        except urllib.error.HTTPError:
            return  # 401 and friends: it is up and answering
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} not ready after {timeout}s:\n{log_tail(log_file)}")
        time.sleep(0.05)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL if it does not exit in time; always reaps the process."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def client_ssl_context(ca_file: Path | None) -> ssl.SSLContext | None:
    """A client SSL context trusting `ca_file` (None for plain HTTP)."""
    return None if ca_file is None else ssl.create_default_context(cafile=str(ca_file))


def log_tail(log_file: Path, lines: int = 30) -> str:
    """The last `lines` lines of a log, for error messages."""
    with contextlib.suppress(OSError):
        return "\n".join(log_file.read_text(errors="replace").splitlines()[-lines:])
    return "(no log)"


def _runs_in_group(pid: int, pgid: int | None) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return False
    # Fields after the command name: state, ppid, pgrp. A zombie is as good as gone.
    return state[0] != "Z" and int(state[2]) == pgid
