"""A real Kubernetes control plane on loopback, for the e2e tests and the demo.

The controller must be proven against a real kube-apiserver (RBAC, ServiceAccount tokens,
rollouts), and these machines have no container runtime. So etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and KWOK (fake nodes whose pods turn Ready) run as plain
processes, built by `testbed/build.sh`. They share one process group, so `stop()` - or
`python -m tests.support.testbed down` from another process - ends them all. Ports are free
loopback ports and all state sits in one directory, so parallel runs never collide.

Layout of a run directory: `kubeconfig` (cluster-admin), `logs/<component>.log`,
`run/` (certificates, keys, etcd data, `state.json` with the process ids).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tests.support.binaries import (
    BIN_ENV,
    STAGES,
    default_bin_dir,
    missing_binaries,
)
from tests.support.kubeconfig import certificate_user, token_user, write_kubeconfig
from tests.support.pki import ControlPlanePKI, make_control_plane_pki
from tests.support.processes import ProcessGroup, Service, free_ports, log_tail

__all__ = ["BIN_ENV", "Testbed", "TestbedError", "default_bin_dir", "missing_binaries"]

REPO = Path(__file__).resolve().parents[2]
DEFAULT_DIR = REPO / ".testbed"
NODE_NAMES = ("kwok-node-0", "kwok-node-1")
# Generous: on a busy 2-core machine the apiserver alone can take half a minute to become ready.
START_TIMEOUT = 180.0
STOP_TIMEOUT = 15.0
POLL_INTERVAL = 0.2
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
SERVICE_CIDR = "10.96.0.0/16"
POD_CIDR = "10.244.0.0/16"  # KWOK hands out pod IPs from here; must not overlap SERVICE_CIDR
NODE_CAPACITY = {"cpu": "32", "memory": "256Gi", "pods": "110"}


class TestbedError(RuntimeError):
    """The test bed could not be built, started, reached or stopped; the message says why."""

    __test__ = False


class Testbed(Service):
    """One control plane whose state lives in `directory`; `start()` it, then `stop()` it."""

    __test__ = False

    def __init__(
        self,
        directory: Path,
        *,
        bin_dir: Path | None = None,
        die_with_parent: bool = False,
        api_qps: int | None = None,
    ) -> None:
        """With `die_with_parent`, the kernel kills the components when this process dies, even
        by SIGKILL (a killed pytest must not leave a control plane running). `api_qps` lifts
        the controller-manager's and scheduler's client rate limit (20 and 50 requests per
        second by default): a thousand rollouts at 20 per second take minutes."""
        self.directory = directory.resolve()
        self._qps = (
            []
            if api_qps is None
            else [f"--kube-api-qps={api_qps}", f"--kube-api-burst={api_qps * 2}"]
        )
        # util-linux's setpriv sets PR_SET_PDEATHSIG, which survives its exec of the component.
        self._launcher = ["setpriv", "--pdeathsig=KILL"] if die_with_parent else []
        self.bin_dir = (bin_dir or default_bin_dir()).resolve()
        self.kubeconfig = self.directory / "kubeconfig"
        """Admin kubeconfig (client certificate in group system:masters)."""
        self.logs = self.directory / "logs"
        self.run_dir = self.directory / "run"
        self.pki = self.run_dir / "pki"
        self._certs = ControlPlanePKI.at(self.pki)
        self.ca_file = self._certs.ca_cert
        """CA that signed the apiserver's serving certificate (and the client certificates)."""
        self._state_file = self.run_dir / "state.json"
        self._state: dict[str, Any] = {}
        self._group = ProcessGroup(launcher=self._launcher)

    @classmethod
    def attach(cls, directory: Path, *, bin_dir: Path | None = None) -> Testbed:
        """A handle on a test bed another process started in `directory` (to use or stop it)."""
        testbed = cls(directory, bin_dir=bin_dir)
        testbed._load_state()
        return testbed

    @property
    def server(self) -> str:
        """The apiserver's URL, e.g. `https://127.0.0.1:41234`."""
        if "server" not in self._state:
            raise TestbedError(f"no test bed running in {self.directory}")
        return str(self._state["server"])

    @property
    def pids(self) -> dict[str, int]:
        """Component name → process id (bench/scale_bench reads their CPU time in /proc)."""
        return dict(self._group.pids)

    # --- lifecycle -----------------------------------------------------------

    def start(self) -> None:
        """Start every component, create the fake nodes, and wait until the cluster is usable."""
        missing = missing_binaries(self.bin_dir)
        if missing:
            raise TestbedError(
                f"test bed binaries missing in {self.bin_dir}: {', '.join(missing)}; "
                "build them with `make testbed` (testbed/build.sh)"
            )
        if not self._state:
            self._load_state()
        if self._group.alive():
            raise TestbedError(f"a test bed is already running in {self.directory}; stop it first")
        self._remove_state(keep_logs=False)
        for folder in (self.logs, self.pki, self.run_dir / "etcd"):
            folder.mkdir(parents=True, exist_ok=True)
        etcd_port, peer_port, api_port = free_ports(3)
        self._state = {"server": f"https://127.0.0.1:{api_port}", "pgid": None, "pids": {}}
        self._group = ProcessGroup(launcher=self._launcher)
        make_control_plane_pki(self.pki)
        self._write_admin_kubeconfig()
        try:
            self._start_components(etcd_port, peer_port, api_port)
            self._create_nodes()
        except BaseException:
            self.stop(keep_logs=True)
            raise

    def stop(self, *, keep_logs: bool = False) -> None:
        """Stop all components and remove the state directory (logs too, unless `keep_logs`).

        Clients stop before the apiserver and the apiserver before etcd, so that none waits out a
        timeout on a peer already gone; what still runs then gets SIGKILL, as a process group.
        """
        try:
            self._group.stop(timeout=STOP_TIMEOUT, poll=POLL_INTERVAL / 4)
        except RuntimeError as exc:
            raise TestbedError(str(exc)) from exc
        self._group = ProcessGroup(launcher=self._launcher)
        self._state = {}
        self._remove_state(keep_logs=keep_logs)

    def _start_components(self, etcd_port: int, peer_port: int, api_port: int) -> None:
        etcd_url, peer_url = f"http://127.0.0.1:{etcd_port}", f"http://127.0.0.1:{peer_port}"
        self._spawn(
            "etcd",
            "--name=n0",
            f"--data-dir={self.run_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=n0={peer_url}",
            "--listen-metrics-urls=",
            "--unsafe-no-fsync=true",
        )
        self._wait("etcd /health", lambda: _etcd_healthy(etcd_url))
        certs = self._certs
        self._spawn(
            "kube-apiserver",
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={api_port}",
            f"--cert-dir={self.run_dir / 'apiserver'}",
            f"--tls-cert-file={certs.apiserver_cert}",
            f"--tls-private-key-file={certs.apiserver_key}",
            f"--client-ca-file={self.ca_file}",
            f"--service-account-issuer={SA_ISSUER}",
            f"--service-account-key-file={certs.sa_pub}",
            f"--service-account-signing-key-file={certs.sa_key}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            # A loopback advertise address is refused by the endpoints reconciler.
            "--endpoint-reconciler-type=none",
            "--profiling=false",
        )
        self._wait("kube-apiserver /readyz", self._apiserver_ready)
        admin = f"--kubeconfig={self.kubeconfig}"
        common = (
            admin,
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            *self._qps,
        )
        self._spawn(
            "kube-controller-manager",
            *common,
            f"--service-account-private-key-file={certs.sa_key}",
            f"--root-ca-file={self.ca_file}",
            # Nodes are fake; a slow heartbeat on a busy machine must not evict the pods.
            "--node-monitor-grace-period=2m",
        )
        self._spawn("kube-scheduler", *common)
        self._spawn(
            "kwok",
            admin,
            "--manage-all-nodes=true",
            f"--config={self.bin_dir / STAGES}",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
        )

    def _create_nodes(self) -> None:
        nodes = [_node_manifest(name) for name in NODE_NAMES]
        self.kubectl(
            "apply",
            "-f",
            "-",
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes}),
        )
        self._wait(
            "the default ServiceAccount", lambda: self._has_serviceaccount("default", "default")
        )
        self._wait("Ready fake nodes", self._nodes_ready)

    def add_nodes(self, count: int, *, pods: int = int(NODE_CAPACITY["pods"])) -> list[str]:
        """Add `count` more fake nodes, each taking `pods` pods; wait until they are Ready.

        Two nodes of 110 pods hold a test's workloads; a fleet of thousands (bench/scale_bench)
        needs more room, and fewer big nodes cost KWOK fewer heartbeats than many small ones.
        """
        have = json.loads(self.kubectl("get", "nodes", "-o", "json").stdout)["items"]
        first = len(have)
        names = [f"kwok-node-{n}" for n in range(first, first + count)]
        capacity = {**NODE_CAPACITY, "pods": str(pods)}
        nodes = [_node_manifest(name, capacity=capacity) for name in names]
        document = {"apiVersion": "v1", "kind": "List", "items": nodes}
        self.kubectl("apply", "-f", "-", input=json.dumps(document))
        self._wait("Ready fake nodes", lambda: self._nodes_ready(first + count))
        return names

    # --- using the cluster ---------------------------------------------------

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl as cluster-admin; with `check`, failure raises TestbedError (with stderr)."""
        # Discovery cache inside the run directory: it goes away with the cluster.
        cache = f"--cache-dir={self.run_dir / 'kubectl-cache'}"
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", cache, *args]
        result = subprocess.run(
            cmd, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise TestbedError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def create_namespace(self, name: str) -> None:
        """Create a namespace and wait for its `default` ServiceAccount (pods need it)."""
        self.kubectl("create", "namespace", name)
        self._wait(
            f"ServiceAccount {name}/default", lambda: self._has_serviceaccount(name, "default")
        )

    def serviceaccount_kubeconfig(
        self, namespace: str, name: str, *, path: Path, duration: str = "24h"
    ) -> Path:
        """Write a kubeconfig that authenticates as ServiceAccount `namespace/name`.

        The token comes from the TokenRequest API, so the apiserver enforces exactly the RBAC
        rights of that ServiceAccount. The ServiceAccount must exist.
        """
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        return write_kubeconfig(
            path,
            server=self.server,
            ca_file=self.ca_file,
            user_name=f"{namespace}:{name}",
            user=token_user(token),
        )

    # --- internals -----------------------------------------------------------

    def _load_state(self) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            self._state = json.loads(self._state_file.read_text())
        pgid, pids = self._state.get("pgid"), self._state.get("pids", {})
        self._group = ProcessGroup(pgid=pgid, pids=pids, launcher=self._launcher)

    def _spawn(self, name: str, *args: str) -> None:
        command = [str(self.bin_dir / name), *args]
        self._group.spawn(name, command, log_file=self.logs / f"{name}.log", cwd=self.run_dir)
        self._state.update(pgid=self._group.pgid, pids=self._group.pids)
        self._state_file.write_text(json.dumps(self._state))

    def _wait(self, what: str, ready: Callable[[], bool], timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            exited = self._group.exited()
            if exited is not None:
                tail = log_tail(self.logs / f"{exited}.log", lines=20)
                raise TestbedError(f"{exited} exited while waiting for {what}:\n{tail}")
            if time.monotonic() > deadline:
                raise TestbedError(
                    f"timed out after {timeout:.0f}s waiting for {what}; logs in {self.logs}"
                )
            time.sleep(POLL_INTERVAL)

    def _apiserver_ready(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(self._certs.admin_cert, self._certs.admin_key)
        try:
            with urllib.request.urlopen(f"{self.server}/readyz", context=context, timeout=5):
                return True
        except OSError:  # URLError, HTTPError (503 while starting) and connection errors
            return False

    def _has_serviceaccount(self, namespace: str, name: str) -> bool:
        result = self.kubectl("get", "serviceaccount", name, "-n", namespace, check=False)
        return result.returncode == 0

    def _nodes_ready(self, count: int = len(NODE_NAMES)) -> bool:
        jsonpath = '{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}'
        out = self.kubectl("get", "nodes", "-o", f"jsonpath={jsonpath}").stdout.split()
        return len(out) >= count and all(status == "True" for status in out)

    def _remove_state(self, *, keep_logs: bool) -> None:
        shutil.rmtree(self.run_dir, ignore_errors=True)
        self.kubeconfig.unlink(missing_ok=True)
        if not keep_logs:
            shutil.rmtree(self.logs, ignore_errors=True)

    def _write_admin_kubeconfig(self) -> None:
        write_kubeconfig(
            self.kubeconfig,
            server=self.server,
            ca_file=self.ca_file,
            user_name="admin",
            user=certificate_user(self._certs.admin_cert, self._certs.admin_key),
        )


def _etcd_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=5) as resp:
            health: object = json.load(resp).get("health")
            return health == "true"
    except (OSError, ValueError):
        return False


def _node_manifest(name: str, *, capacity: dict[str, str] = NODE_CAPACITY) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                "type": "kwok",
            },
        },
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def main(argv: Sequence[str] | None = None) -> int:
    """`up`, `down` and `sa-kubeconfig` for testbed/cluster.sh and `make cluster-up/down`."""
    parser = argparse.ArgumentParser(
        prog="testbed/cluster.sh", description="The local Kubernetes test bed."
    )
    parser.add_argument(
        "--dir", type=Path, default=DEFAULT_DIR, help="state directory (default: .testbed)"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="start the test bed and write DIR/kubeconfig")
    commands.add_parser("down", help="stop the test bed and remove its state")
    sa = commands.add_parser("sa-kubeconfig", help="write a kubeconfig for a ServiceAccount")
    sa.add_argument("namespace")
    sa.add_argument("name")
    sa.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    testbed = Testbed.attach(args.dir)
    try:
        if args.command == "up":
            testbed.start()
            sys.stdout.write(
                f"test bed up: {testbed.server}\nexport KUBECONFIG={testbed.kubeconfig}\n"
            )
        elif args.command == "down":
            testbed.stop()
        else:
            sys.stdout.write(
                f"{testbed.serviceaccount_kubeconfig(args.namespace, args.name, path=args.out)}\n"
            )
    except TestbedError as exc:
        sys.stderr.write(f"testbed: {exc}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
