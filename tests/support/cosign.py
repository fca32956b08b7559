"""cosign (sigstore), the signing tool whose signatures a backup must keep verifiable.

Each `Cosign` has its own HOME and DOCKER_CONFIG (no machine credentials or sigstore caches leak
in) and a key pair made with `cosign generate-key-pair` under a test password. Everything runs
offline: signatures are made with that key and never uploaded to a transparency log
(`--tlog-upload=false`), and verification skips the log (`--insecure-ignore-tlog`). Plain-HTTP
loopback registries need `--allow-insecure-registry --allow-http-registry`; TLS ones get the
test CA (`--registry-cacert`) and, with a login, `--registry-username`/`--registry-password`.
Blocking, as the other support wrappers.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.support.binaries import tool
from tests.support.registries import RegistryEndpoint

__all__ = ["Cosign", "CosignError"]

TIMEOUT = 120.0
PASSWORD = "cosign-test-password"
OFFLINE = ("--tlog-upload=false", "--use-signing-config=false", "--yes")
"""Sign with the key alone: no transparency log, no signing config fetched, no prompt."""


class CosignError(RuntimeError):
    """cosign exited non-zero; `stderr` says why (a test key only, no real secrets)."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"cosign {' '.join(args[:2])} ... exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


class Cosign:
    """cosign with a home of its own under `home` and a fresh key pair there."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.binary = tool("cosign")
        home.mkdir(parents=True, exist_ok=True)
        (home / "docker").mkdir(exist_ok=True)
        (home / "docker" / "config.json").write_text('{"auths": {}}')
        self._run("generate-key-pair", cwd=home)
        self.private_key = home / "cosign.key"
        self.public_key = home / "cosign.pub"

    def sign(self, registry: RegistryEndpoint, name: str) -> None:
        """`cosign sign --key`: a signature of `name` (by digest), kept out of any log."""
        self._run(
            "sign", "--key", str(self.private_key), *OFFLINE,
            *self._flags(registry), registry.ref(name),
        )  # fmt: skip

    def attest(self, registry: RegistryEndpoint, name: str, predicate: Path) -> None:
        """`cosign attest --type spdxjson`: an SBOM attestation of `name`."""
        self._run(
            "attest", "--key", str(self.private_key), *OFFLINE,
            "--type", "spdxjson", "--predicate", str(predicate),
            *self._flags(registry), registry.ref(name),
        )  # fmt: skip

    def verify(self, registry: RegistryEndpoint, name: str) -> bytes:
        """`cosign verify --key --insecure-ignore-tlog`; raises CosignError if it fails."""
        return self._run(
            "verify", "--key", str(self.public_key), "--insecure-ignore-tlog",
            *self._flags(registry), registry.ref(name),
        )  # fmt: skip

    def verify_attestation(self, registry: RegistryEndpoint, name: str) -> bytes:
        """`cosign verify-attestation --type spdxjson`; raises CosignError if it fails."""
        return self._run(
            "verify-attestation", "--key", str(self.public_key), "--insecure-ignore-tlog",
            "--type", "spdxjson", *self._flags(registry), registry.ref(name),
        )  # fmt: skip

    @staticmethod
    def _flags(registry: RegistryEndpoint) -> list[str]:
        if registry.ca_file is None:
            flags = ["--allow-insecure-registry", "--allow-http-registry"]
        else:
            flags = ["--registry-cacert", str(registry.ca_file)]
        if registry.username is not None and registry.password is not None:
            # The test registry's login; CosignError never repeats the arguments past two.
            flags += ["--registry-username", registry.username]
            flags += ["--registry-password", registry.password]
        return flags

    def _run(self, *args: str, cwd: Path | None = None) -> bytes:
        env = {
            **os.environ,
            "HOME": str(self.home),
            "DOCKER_CONFIG": str(self.home / "docker"),
            "COSIGN_PASSWORD": PASSWORD,
            "TUF_ROOT": str(self.home / "tuf"),
        }
        result = subprocess.run(
            [str(self.binary), *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
        )
        if result.returncode != 0:
            raise CosignError(args, result.returncode, result.stderr.decode(errors="replace"))
        return result.stdout
