"""skopeo as the independent witness: it seeds test images and checks what our copier wrote.

Tests never trust our own client to verify our own copies; skopeo (containers/image) reads the
registry independently. These wrappers block; from async code that must keep running
meanwhile, call them through `asyncio.to_thread`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from typing import Any

from tests.support.registries import RegistryEndpoint

__all__ = ["SKOPEO", "SkopeoError", "copy", "docker_ref", "inspect", "inspect_raw", "run"]

SKOPEO = "skopeo"
TIMEOUT = 600.0


class SkopeoError(RuntimeError):
    """skopeo exited non-zero; `stderr` says why (test credentials only, no real secrets)."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        super().__init__(f"skopeo {' '.join(args[:2])} ... exited {returncode}: {stderr.strip()}")
        self.returncode = returncode
        self.stderr = stderr


def run(*args: str, timeout: float = TIMEOUT) -> bytes:
    """Run `skopeo --insecure-policy ARGS`; return stdout, raise SkopeoError on failure."""
    # --insecure-policy: no signature policy applies to synthetic test images, and it keeps
    # us independent of /etc/containers/policy.json on the machine.
    result = subprocess.run(
        [SKOPEO, "--insecure-policy", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise SkopeoError(args, result.returncode, result.stderr.decode(errors="replace"))
    return result.stdout


def docker_ref(registry: RegistryEndpoint, name: str) -> str:
    """`docker://127.0.0.1:PORT/repo:tag` for `repo:tag` or `repo@sha256:...`."""
    return f"docker://{registry.ref(name)}"


def inspect_raw(registry: RegistryEndpoint, name: str) -> bytes:
    """The manifest (or index) bytes exactly as the registry serves them."""
    return run("inspect", "--raw", *registry.skopeo_flags("inspect"), docker_ref(registry, name))


def inspect(registry: RegistryEndpoint, name: str) -> dict[str, Any]:
    """`skopeo inspect` JSON (Digest, Layers, ...) of the image for this machine's platform."""
    out = run("inspect", *registry.skopeo_flags("inspect"), docker_ref(registry, name))
    result: dict[str, Any] = json.loads(out)
    return result


def copy(
    source: str,
    destination: str,
    *,
    src: RegistryEndpoint | None = None,
    dest: RegistryEndpoint | None = None,
    all_platforms: bool = True,
    preserve_digests: bool = True,
    extra: Sequence[str] = (),
) -> None:
    """`skopeo copy` between any transports (`oci:DIR:TAG`, `docker://...`, `dir:DIR`).

    Pass `src` / `dest` when that side is one of our registries, for its credential and TLS
    flags. By default every platform is copied and digests must stay unchanged.
    """
    args = ["copy", "--quiet"]
    if all_platforms:
        args.append("--all")
    if preserve_digests:
        args.append("--preserve-digests")
    if src is not None:
        args += src.skopeo_flags("src")
    if dest is not None:
        args += dest.skopeo_flags("dest")
    run(*args, *extra, source, destination)
