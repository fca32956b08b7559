"""The controller as a real process (`python -m image_cloner run`), for e2e tests and the demo.

Tests judge the controller by what a user sees: its log lines (JSON, one per decision), its
`/metrics` and `/readyz`, and the cluster and registries it changed. So it runs exactly as a
user would run it, with an environment and a kubeconfig, and is stopped (SIGTERM, or SIGKILL
to simulate a crash) by whoever started it.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from tests.support.processes import ServiceProcess, free_port
from tests.support.testbed import Testbed

__all__ = ["ControllerProcess", "LogLine", "controller_kubeconfig", "wait_until"]

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"
CONTROLLER_NAMESPACE = "image-cloner-system"
SERVICE_ACCOUNT = "image-cloner"
LEASE = "image-cloner"
"""The leader-election Lease examples/rbac-leader-election.yml allows (in CONTROLLER_NAMESPACE)."""
RBAC_TIMEOUT = 30.0
START_TIMEOUT = 60.0
POLL = 0.1

LogLine = dict[str, Any]
T = TypeVar("T")


class ControllerProcess(ServiceProcess):
    """`image-cloner run --log-format json --log-level debug` with `env` on a free metrics port.

    `log_format="text"` runs it with the human format instead (then only `log_text()` reads it);
    `log_level="info"` as a user runs it (bench/scale_bench: debug lines cost CPU at scale).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        kubeconfig: Path,
        env: Mapping[str, str],
        log_format: str = "json",
        log_level: str = "debug",
    ) -> None:
        self.workdir = workdir
        self.kubeconfig = kubeconfig
        self.log_format = log_format
        self.log_level = log_level
        self.metrics_port = free_port()
        self.env = {**env, "IMAGE_CLONER_METRICS_PORT": str(self.metrics_port)}
        self.log_file = workdir / "controller.log"
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        """Start it and wait until its metrics endpoint answers."""
        if self.running:
            return
        # Only what the test gives, plus what Python needs: no stray IMAGE_CLONER_* or KUBECONFIG.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGE_CLONER_", "KUBE"))}
        env.update(self.env)
        command = [
            sys.executable,
            "-m",
            "image_cloner",
            "run",
            f"--kubeconfig={self.kubeconfig}",
            f"--log-format={self.log_format}",
            f"--log-level={self.log_level}",
        ]
        self._launch(
            command,
            ready_url=f"http://127.0.0.1:{self.metrics_port}/healthz",
            ca_file=None,
            env=env,
            cwd=REPO_ROOT,
            timeout=START_TIMEOUT,
        )

    @property
    def pid(self) -> int | None:
        """The process id while it runs (to read its CPU time and peak RSS in /proc)."""
        return self._process.pid if self.running and self._process is not None else None

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL if it hangs); returns its exit status (None if it was not running)."""
        return self._terminate()

    def interrupt(self) -> None:
        """SIGTERM without waiting for the exit (`stop()` waits for it)."""
        if self._process is not None:
            self._process.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        if self._process is not None:
            self._process.send_signal(signal.SIGKILL)
            self._process.wait()
            self._process = None

    # --- what it says -------------------------------------------------------------------

    def lines(self) -> list[LogLine]:
        """Every JSON log line so far (anything else, like a traceback, is skipped)."""
        found: list[LogLine] = []
        with self.log_file.open(encoding="utf-8", errors="replace") as log:
            for text in log:
                if text.startswith("{"):
                    try:
                        found.append(json.loads(text))
                    except ValueError:
                        continue
        return found

    def find(self, msg: str, **fields: object) -> list[LogLine]:
        """Lines with this message whose fields have these values."""
        return [
            line
            for line in self.lines()
            if line.get("msg") == msg and all(line.get(k) == v for k, v in fields.items())
        ]

    def wait_for_line(self, msg: str, *, timeout: float = 60.0, **fields: object) -> LogLine:
        """The first line matching `find(msg, **fields)`, waiting for it to appear."""
        return wait_until(
            lambda: next(iter(self.find(msg, **fields)), None),
            timeout=timeout,
            what=f"log line {msg!r} {fields}",
            log_file=self.log_file,
        )

    def log_text(self) -> str:
        return self.log_file.read_text(encoding="utf-8", errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        """The current value of one sample from `/metrics` (0 when it is absent)."""
        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        sample = f"{name}{{{wanted}}}" if labels else name
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            for text in response.read().decode().splitlines():
                key, _, value = text.rpartition(" ")
                if key == sample:
                    return float(value)
        return 0.0

    def readyz(self) -> tuple[int, str]:
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()


def controller_kubeconfig(testbed: Testbed, path: Path) -> Path:
    """Apply examples/rbac*.yml and write a kubeconfig for that ServiceAccount's token.

    The controller then runs with exactly the rights the install instructions give it.
    """
    testbed.kubectl("apply", "-f", str(EXAMPLES / "rbac.yml"))
    testbed.kubectl("apply", "-f", str(EXAMPLES / "rbac-pull-secrets.yml"))
    testbed.kubectl("apply", "-f", str(EXAMPLES / "rbac-leader-election.yml"))
    user = f"system:serviceaccount:{CONTROLLER_NAMESPACE}:{SERVICE_ACCOUNT}"

    def allowed() -> bool:
        # RBAC reaches the authorizer through an informer: wait for the last rule we rely on.
        checks = [
            ("patch", "deployments.apps"),
            ("patch", "events"),
            ("create", "secrets"),
            ("update", f"leases.coordination.k8s.io/{LEASE}", "-n", CONTROLLER_NAMESPACE),
        ]
        return all(
            testbed.kubectl("auth", "can-i", *check, f"--as={user}", check=False).returncode == 0
            for check in checks
        )

    wait_until(allowed, timeout=RBAC_TIMEOUT, what="RBAC of examples/rbac*.yml", interval=0.3)
    return testbed.serviceaccount_kubeconfig(CONTROLLER_NAMESPACE, SERVICE_ACCOUNT, path=path)


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    log_file: Path | None = None,
    interval: float = POLL,
) -> T:
    """Poll `probe` until it returns something other than None/False; fail with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            tail = ""
            if log_file is not None and log_file.exists():
                tail = "\n".join(log_file.read_text(errors="replace").splitlines()[-30:])
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tail}")
        time.sleep(interval)
