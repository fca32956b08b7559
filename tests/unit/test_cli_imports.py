"""What each `image-cloner` command imports: the start-up cost a user pays on every command.

Each case runs the command line in a fresh interpreter (`python -c`, as the `image-cloner`
script does: `from image_cloner.cli import main`) and reads `sys.modules` when `main`
returns. Module sets are asserted, never times: how long an import takes on a shared
machine is a measurement (docs/benchmarks.md), which modules load is not.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from tests.support.fake_registry import FakeRegistry
from tests.support.pki import make_pki
from tests.unit.test_copier import seed_index

# What `main(argv)` loaded: printed as JSON on the last line of stdout.
PROBE = """
import gc, json, sys
from image_cloner.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:  # --help and --version exit from argparse
    status = exit.code
print()
print(json.dumps({"status": status, "modules": sorted(sys.modules),
                  "gc": {"enabled": gc.isenabled(), "frozen": gc.get_freeze_count()}}))
"""

HEAVY = ("aiohttp", "yaml", "asyncio", "ssl", "multidict", "yarl")
"""What parsing a command line has no use for (aiohttp alone was 0.4 s of `--version`)."""
NOT_FOR_COPY = ("kopf", "prometheus_client", "rich", "yaml")
"""The controller's and the terminal display's libraries; `copy --quiet` uses none."""


async def _run(*argv: str) -> tuple[int, set[str]]:
    status, modules, _ = await _run_with_gc(*argv)
    return status, modules


async def _run_with_gc(*argv: str) -> tuple[int, set[str], dict[str, int]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        PROBE,
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    found = json.loads(out.decode().strip().splitlines()[-1])
    return found["status"], set(found["modules"]), found["gc"]


def _loaded(modules: set[str], packages: tuple[str, ...]) -> set[str]:
    return {m for m in modules if m.split(".")[0] in packages}


async def test_version_and_help_import_no_library() -> None:
    for argv in (["--version"], ["--help"], ["copy", "--help"], ["run", "--help"]):
        status, modules = await _run(*argv)
        assert status == 0, argv
        assert not _loaded(modules, HEAVY), argv
        assert not _loaded(modules, NOT_FOR_COPY), argv
        ours = {m for m in modules if m.startswith("image_cloner")}
        assert ours == {
            "image_cloner",
            "image_cloner.cli",
            "image_cloner.exits",
            "image_cloner.logs",
        }


async def test_a_copy_imports_the_registry_client_and_nothing_of_the_controller() -> None:
    async with FakeRegistry() as source, FakeRegistry() as target:
        seed_index(source, "src/app", "1")
        status, modules, gc = await _run_with_gc(
            "copy", "--quiet", f"{source.host}/src/app:1", f"{target.host}/backup/app:1"
        )
        pushed = target.seen("PUT", "/manifests/1")
    assert status == 0
    assert pushed, "the copy really ran"
    # What the imports made is frozen out of the cyclic GC's walks (cli._start_up), and the
    # GC is back on for the copy itself.
    assert gc["enabled"]
    assert gc["frozen"] > 10_000
    assert "aiohttp" in modules
    assert "image_cloner.oci.copying" in modules
    assert not _loaded(modules, NOT_FOR_COPY)
    assert not {m for m in modules if m.startswith("image_cloner.controller")}
    assert "image_cloner.metrics" not in modules


async def test_plan_and_status_read_the_cluster_without_loading_kopf(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Only `run` watches through kopf; the read-only views use the Kubernetes client alone.
    monkeypatch.setenv("IMAGE_CLONER_REGISTRY", "localhost:5000")
    for command in ("plan", "status"):
        status, modules = await _run(command, f"--kubeconfig={tmp_path / 'missing'}")
        assert status == 2, command  # the missing kubeconfig, reported after the imports
        assert f"image_cloner.controller.{command}" in modules
        assert "image_cloner.controller.kube" in modules
        assert "kopf" not in modules, command


TRUST_PROBE = """
import json, ssl, sys
from image_cloner.cli import main
main(sys.argv[1:])
import aiohttp.connector
print()
print(json.dumps({
    "aiohttp_default": aiohttp.connector._SSL_CONTEXT_VERIFIED.cert_store_stats()["x509_ca"],
    "after": ssl.create_default_context().cert_store_stats()["x509_ca"],
}))
"""


async def test_copy_loads_the_trust_store_only_into_its_own_context(tmp_path: Path) -> None:
    # One CA in the "system" store (SSL_CERT_FILE is OpenSSL's), so loads can be counted.
    # aiohttp's unused default context gets none of it; ssl is left as it was.
    pki = make_pki(tmp_path / "pki")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TRUST_PROBE,
        "copy",
        "--quiet",
        "localhost:1/none:1",
        "localhost:1/backup/none:1",
        env={**os.environ, "SSL_CERT_FILE": str(pki.ca_cert), "SSL_CERT_DIR": str(tmp_path)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    assert json.loads(out.decode().strip().splitlines()[-1]) == {"aiohttp_default": 0, "after": 1}
