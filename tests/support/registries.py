"""Real registry processes on loopback for integration, e2e tests and benchmarks.

We test against real registries rather than a fake, because what matters is how the copy engine
behaves against a registry's actual auth challenges, upload sessions, digest checks and error
bodies. The default is Debian's `docker-registry` (distribution 2.8); `RegistryImpl` also picks
distribution 3 (what `registry:3` runs) or go-containerregistry's registry, both built by
`testbed/build.sh`, because registries differ in exactly those answers. Each registry gets a
free port, its own temp dir and log file, and is always stopped by whoever started it (use it as
a context manager or call `stop()`).

The process helpers (`free_port`, `wait_until_ready`, `stop_process` and the timeouts) belong to
`tests.support.processes`; they are re-exported here for the code that imports them from here.
"""

from __future__ import annotations

import enum
import json
import os
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from image_cloner.oci.options import Credentials, RegistryOptions
from tests.support.binaries import tool
from tests.support.pki import TestPKI, make_cert_dir
from tests.support.processes import (
    READY_TIMEOUT,
    STOP_TIMEOUT,
    ServiceProcess,
    client_ssl_context,
    free_port,
    stop_process,
    wait_until_ready,
)

__all__ = [
    "HTTP_SECRET",
    "READY_TIMEOUT",
    "REGISTRY_BINARY",
    "STOP_TIMEOUT",
    "TEST_PASSWORD",
    "TEST_USER",
    "RegistryEndpoint",
    "RegistryFactory",
    "RegistryImpl",
    "RegistryKind",
    "Role",
    "RunningRegistry",
    "TokenAuthConfig",
    "free_port",
    "registry_options",
    "stop_process",
    "wait_until_ready",
]

REGISTRY_BINARY = "/usr/bin/docker-registry"
TEST_USER = "testuser"
TEST_PASSWORD = "testpass"
# Fixed so that upload sessions started before a restart stay valid after it (the registry
# signs its upload state with this secret; a random one per start would invalidate them).
HTTP_SECRET = "image-cloner-test-http-secret"

Role = Literal["src", "dest", "inspect"]
"""Which side of a skopeo command the flags are for; `inspect` means unprefixed flags."""


class RegistryKind(enum.StrEnum):
    OPEN = "open"
    """Plain HTTP, no auth."""
    HTPASSWD = "htpasswd"
    """TLS from the test CA, Basic auth (testuser / testpass)."""
    TOKEN = "token"
    """TLS from the test CA, Bearer tokens from the test token issuer."""
    TLS = "tls"
    """TLS from the test CA, no auth."""


class RegistryImpl(enum.StrEnum):
    """Which registry program serves: they differ in status codes, headers and strictness."""

    DISTRIBUTION_2 = "distribution-2"
    """Debian's `docker-registry` (distribution 2.8), /usr/bin/docker-registry."""
    DISTRIBUTION_3 = "distribution-3"
    """distribution v3 (`registry:3`), `registry-v3` from the test bed."""
    GGCR = "ggcr"
    """go-containerregistry's pkg/registry (`ggcr-registry` from the test bed): in memory, so
    its data is lost on `stop()`; no auth, and the OCI referrers API switched on."""

    @property
    def kinds(self) -> frozenset[RegistryKind]:
        """The kinds this implementation can run as."""
        if self is RegistryImpl.GGCR:
            return frozenset({RegistryKind.OPEN, RegistryKind.TLS})
        return frozenset(RegistryKind)


@dataclass(frozen=True)
class TokenAuthConfig:
    """What the registry's `auth.token` section needs to trust a token issuer."""

    realm: str
    service: str
    issuer: str
    rootcertbundle: Path


class RegistryEndpoint:
    """Anything that looks like a registry to a client: a real registry or a proxy in front."""

    host: str
    """`127.0.0.1:PORT`, what goes into image references."""
    scheme: Literal["http", "https"]
    username: str | None
    password: str | None
    ca_file: Path | None
    """CA certificate to trust for TLS endpoints; None for plain HTTP."""
    cert_dir: Path | None
    """The CA in the layout skopeo's `--*-cert-dir` wants; None for plain HTTP."""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}"

    def ref(self, name: str) -> str:
        """`repo:tag` or `repo@digest` → `127.0.0.1:PORT/repo:tag`."""
        return f"{self.host}/{name}"

    def skopeo_flags(self, role: Role = "src") -> list[str]:
        """Credentials and TLS flags for skopeo (`--src-*`, `--dest-*`, or unprefixed)."""
        prefix = "--" if role == "inspect" else f"--{role}-"
        if self.username is not None and self.password is not None:
            flags = [f"{prefix}creds={self.username}:{self.password}"]
        else:
            flags = [f"{prefix}no-creds"]
        if self.cert_dir is not None:
            flags += [f"{prefix}cert-dir={self.cert_dir}", f"{prefix}tls-verify=true"]
        else:
            flags.append(f"{prefix}tls-verify=false")
        return flags

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client SSL context trusting the test CA (None for plain HTTP)."""
        return client_ssl_context(self.ca_file)


class RunningRegistry(RegistryEndpoint, ServiceProcess):
    """A registry process on 127.0.0.1 (`impl`, by default `docker-registry serve`) whose
    storage, config and log are in `workdir`.

    `stop()` then `start()` restarts it on the same port with the same data, for
    "registry down, then up again" tests. Both block (about a second for `start`); from async
    code call them through `asyncio.to_thread` if something must keep running meanwhile.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        kind: RegistryKind = RegistryKind.OPEN,
        pki: TestPKI | None = None,
        token: TokenAuthConfig | None = None,
        port: int | None = None,
        impl: RegistryImpl = RegistryImpl.DISTRIBUTION_2,
        foreign_urls: str | None = None,
    ) -> None:
        """`foreign_urls`: the regular expression distribution's `validation.manifests.urls.
        allow` takes; without it, distribution refuses manifests with foreign layers."""
        if kind not in impl.kinds:
            raise ValueError(f"{impl} registries cannot run as {kind}")
        if kind is not RegistryKind.OPEN and pki is None:
            raise ValueError(f"a {kind} registry needs the test PKI for TLS")
        if kind is RegistryKind.TOKEN and token is None:
            raise ValueError("a token registry needs a TokenAuthConfig")
        self.kind = kind
        self.impl = impl
        self.pki = pki
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_file = workdir / "registry.log"
        self.config_file = workdir / "config.yml"
        self.port = port or free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.scheme = "http" if kind is RegistryKind.OPEN else "https"
        with_password = kind in (RegistryKind.HTPASSWD, RegistryKind.TOKEN)
        self.username = TEST_USER if with_password else None
        self.password = TEST_PASSWORD if with_password else None
        self.ca_file = None if pki is None or kind is RegistryKind.OPEN else pki.ca_cert
        self.cert_dir = None
        self.foreign_urls = foreign_urls
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.ca_file is not None:
            self.cert_dir = make_cert_dir(workdir / "certs.d", self.ca_file)
        if impl is not RegistryImpl.GGCR:  # it takes flags, not a config file
            self._write_config(pki, token)

    def start(self) -> None:
        """Start (or restart) the registry and wait until `/v2/` answers."""
        if self.running:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
        env["REGISTRY_HTTP_SECRET"] = HTTP_SECRET
        # distribution 3 exports OpenTelemetry traces to localhost:4318 unless told not to.
        env["OTEL_TRACES_EXPORTER"] = "none"
        self._launch(
            self._command(),
            ready_url=f"{self.url}/v2/",
            ca_file=self.ca_file,
            env=env,
            new_session=True,
        )

    def stop(self) -> None:
        """Stop the registry (data and port are kept for a later `start()`)."""
        self._terminate()

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def __repr__(self) -> str:
        return f"<RunningRegistry {self.impl} {self.kind} {self.url}>"

    def _command(self) -> list[str]:
        if self.impl is RegistryImpl.DISTRIBUTION_2:
            return [REGISTRY_BINARY, "serve", str(self.config_file)]
        if self.impl is RegistryImpl.DISTRIBUTION_3:
            return [str(tool("registry-v3")), "serve", str(self.config_file)]
        command = [str(tool("ggcr-registry")), "--address", self.host]
        if self.kind is RegistryKind.TLS and self.pki is not None:
            command += [
                "--tls-cert",
                str(self.pki.server_cert),
                "--tls-key",
                str(self.pki.server_key),
            ]
        return command

    def _write_config(self, pki: TestPKI | None, token: TokenAuthConfig | None) -> None:
        """The config.yml of distribution 2.8 and 3 (3 reads the same keys)."""
        http: dict[str, object] = {
            "addr": self.host,
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        }
        if self.kind is not RegistryKind.OPEN and pki is not None:
            http["tls"] = {"certificate": str(pki.server_cert), "key": str(pki.server_key)}
        auth: dict[str, object] = {}
        if self.kind is RegistryKind.HTPASSWD:
            auth = {"htpasswd": {"realm": "image-cloner-test", "path": str(self._htpasswd())}}
        elif self.kind is RegistryKind.TOKEN and token is not None:
            auth = {
                "token": {
                    "realm": token.realm,
                    "service": token.service,
                    "issuer": token.issuer,
                    "rootcertbundle": str(token.rootcertbundle),
                }
            }
        config: dict[str, object] = {
            "version": "0.1",
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.data_dir)},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": http,
            "health": {"storagedriver": {"enabled": False}},
        }
        if auth:
            config["auth"] = auth
        if self.foreign_urls is not None:
            config["validation"] = {"manifests": {"urls": {"allow": [self.foreign_urls]}}}
        # YAML is a superset of JSON, so the registry reads this as its config.yml.
        self.config_file.write_text(json.dumps(config, indent=2))

    def _htpasswd(self) -> Path:
        # Cost 4 (the minimum): the registry checks bcrypt on every request, and a high cost
        # would make request-heavy tests and benchmarks measure bcrypt instead of copying.
        line = subprocess.run(
            ["htpasswd", "-Bbn", "-C", "4", TEST_USER, TEST_PASSWORD],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        path = self.workdir / "htpasswd"
        path.write_text(line + "\n")
        return path


def registry_options(*endpoints: RegistryEndpoint) -> RegistryOptions:
    """`RegistryOptions` for our copier to reach these endpoints (credentials, test CA).

    Add anything else with `dataclasses.replace(options, max_concurrent_transfers=...)`.
    """
    credentials = {
        e.host: Credentials(e.username, e.password)
        for e in endpoints
        if e.username is not None and e.password is not None
    }
    ca_files = {e.ca_file for e in endpoints if e.ca_file is not None}
    if len(ca_files) > 1:
        raise ValueError(f"endpoints trust different CAs: {sorted(map(str, ca_files))}")
    return RegistryOptions(credentials=credentials, ca_file=next(iter(ca_files), None))


class RegistryFactory:
    """Starts registries on demand (each in its own dir under `root`) and stops them all.

    For tests that stop/restart a registry or need one to themselves, so they never disturb
    the session-wide registries other tests share.
    """

    def __init__(self, root: Path, *, pki: TestPKI, token: TokenAuthConfig | None = None) -> None:
        self.root = root
        self.pki = pki
        self.token = token
        self.started: list[RunningRegistry] = []

    def __call__(
        self,
        kind: RegistryKind | str = RegistryKind.OPEN,
        *,
        impl: RegistryImpl = RegistryImpl.DISTRIBUTION_2,
    ) -> RunningRegistry:
        kind = RegistryKind(kind)
        workdir = self.root / f"{impl}-{kind}-{len(self.started)}"
        registry = RunningRegistry(workdir, kind=kind, pki=self.pki, token=self.token, impl=impl)
        self.started.append(registry)
        registry.start()
        return registry

    def stop_all(self) -> None:
        for registry in self.started:
            registry.stop()
