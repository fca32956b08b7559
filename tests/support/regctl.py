"""regctl (regclient) as a third independent witness of what a registry serves.

regclient is a client stack of its own (neither containers/image nor go-containerregistry).
Each `Regctl` has its own config file (REGCTL_CONFIG) and HOME, so neither the machine's regctl
nor its Docker logins leak in. A registry is configured once, on first use, with
`regctl registry set` (TLS mode, the test CA) and `regctl registry login`. These wrappers block;
from async code call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support.binaries import tool
from tests.support.registries import RegistryEndpoint

__all__ = ["Regctl", "RegctlError"]

TIMEOUT = 120.0


class RegctlError(RuntimeError):
    """regctl exited non-zero; `stderr` says why (test credentials only, no real secrets)."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"regctl {' '.join(args[:3])} ... exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class Regctl:
    """regctl with its own config under `home`; registries are configured as they are used."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.binary = tool("regctl")
        self._configured: set[str] = set()
        home.mkdir(parents=True, exist_ok=True)

    def manifest(self, registry: RegistryEndpoint, name: str) -> bytes:
        """`regctl manifest get --format raw-body`: the manifest or index bytes as served."""
        return self.run(registry, "manifest", "get", "--format", "raw-body", registry.ref(name))

    def digest(self, registry: RegistryEndpoint, name: str) -> str:
        """`regctl image digest`: the digest the registry reports for `name`."""
        return self.run(registry, "image", "digest", registry.ref(name)).decode().strip()

    def run(self, registry: RegistryEndpoint, *args: str, stdin: bytes | None = None) -> bytes:
        """`regctl ARGS` with `registry` configured first; stdout."""
        self.configure(registry)
        return self._regctl(*args, stdin=stdin)

    @property
    def env(self) -> dict[str, str]:
        """The environment regctl runs in: this config and HOME, no Docker logins."""
        return {
            **os.environ,
            "HOME": str(self.home),
            "REGCTL_CONFIG": str(self.home / "config.json"),
            "DOCKER_CONFIG": str(self.home / "docker"),
        }

    def configure(self, registry: RegistryEndpoint) -> None:
        """`regctl registry set` (TLS mode, CA) and `registry login` for `registry`, once."""
        if registry.host in self._configured:
            return
        if registry.ca_file is None:
            self._regctl("registry", "set", registry.host, "--tls", "disabled", "--skip-check")
        else:
            cacert = registry.ca_file.read_text()
            self._regctl(
                "registry", "set", registry.host, "--tls", "enabled", "--cacert", cacert,
                "--skip-check",
            )  # fmt: skip
        if registry.username is not None and registry.password is not None:
            self._regctl(
                "registry", "login", registry.host, "--user", registry.username, "--pass-stdin",
                "--skip-check",
                stdin=registry.password.encode(),
            )  # fmt: skip
        self._configured.add(registry.host)

    def _regctl(self, *args: str, stdin: bytes | None = None) -> bytes:
        result = subprocess.run(
            [str(self.binary), *args],
            env=self.env,
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise RegctlError(args, result.returncode, result.stderr.decode(errors="replace"))
        return result.stdout
