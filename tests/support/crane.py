"""crane (go-containerregistry) as a second independent witness of what a registry serves.

skopeo alone could share a blind spot with a registry (both speak containers/image's dialect);
crane is another client stack. Each `Crane` has its own DOCKER_CONFIG directory, so the machine's
credentials never leak in and tests see exactly the logins they configured. The test CA reaches
it through SSL_CERT_FILE (Go's crypto/x509 reads it); plain-HTTP registries need `--insecure`.
These wrappers block; from async code call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support.binaries import tool
from tests.support.registries import RegistryEndpoint

__all__ = ["Crane", "CraneError"]

TIMEOUT = 120.0


class CraneError(RuntimeError):
    """crane exited non-zero; `stderr` says why (test credentials only, no real secrets)."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"crane {' '.join(args)} exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class Crane:
    """crane with its own config directory `home`; logins are written as registries are used."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.binary = tool("crane")
        self._auths: dict[str, dict[str, str]] = {}
        home.mkdir(parents=True, exist_ok=True)
        self._write_config()

    def manifest(self, registry: RegistryEndpoint, name: str) -> bytes:
        """`crane manifest`: the manifest or index bytes exactly as served."""
        return self.run(registry, "manifest", registry.ref(name))

    def digest(self, registry: RegistryEndpoint, name: str) -> str:
        """`crane digest`: the digest the registry reports for `name` (tag or digest)."""
        return self.run(registry, "digest", registry.ref(name)).decode().strip()

    def validate(self, registry: RegistryEndpoint, name: str) -> str:
        """`crane validate --remote`: every manifest and blob fetched and digested; its report."""
        return self.run(registry, "validate", "--remote", registry.ref(name)).decode()

    def run(self, registry: RegistryEndpoint, *args: str) -> bytes:
        """`crane ARGS` set up for `registry` (login, CA or --insecure); stdout."""
        self.login(registry)
        env = self.env(registry.ca_file)
        flags = [] if registry.ca_file is not None else ["--insecure"]
        result = subprocess.run(
            [str(self.binary), *args, *flags],
            env=env,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise CraneError(args, result.returncode, result.stderr.decode(errors="replace"))
        return result.stdout

    def env(self, ca_file: Path | None) -> dict[str, str]:
        """The environment crane runs in: this config directory, and `ca_file` trusted."""
        env = {**os.environ, "DOCKER_CONFIG": str(self.home)}
        if ca_file is not None:
            env["SSL_CERT_FILE"] = str(ca_file)
        return env

    def login(self, registry: RegistryEndpoint) -> None:
        """Write `registry`'s credentials (if it has any) into the config, once."""
        if registry.username is None or registry.password is None or registry.host in self._auths:
            return
        token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
        self._auths[registry.host] = {"auth": token}
        self._write_config()

    def _write_config(self) -> None:
        (self.home / "config.json").write_text(json.dumps({"auths": self._auths}))
