"""Where the Go-built test bed binaries are, and the one list of their names.

`testbed/build.sh` builds them into `$IMAGE_CLONER_TESTBED_BIN` (or `.testbed/bin`); tests never
build anything themselves. A test that needs a binary that is not there must fail at once with a
message naming it and saying how to build it, not with a bare FileNotFoundError from subprocess.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = [
    "BIN_ENV",
    "CHART_TOOLS",
    "CONTROL_PLANE",
    "REGISTRY_TOOLS",
    "STAGES",
    "MissingBinaryError",
    "default_bin_dir",
    "missing_binaries",
    "tool",
]

BIN_ENV = "IMAGE_CLONER_TESTBED_BIN"
REPO = Path(__file__).resolve().parents[2]
CONTROL_PLANE = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
)
"""What the Kubernetes test bed runs (helm is used on its own by the chart tests)."""
STAGES = "kwok-stages.yaml"
REGISTRY_TOOLS = ("registry-v3", "ggcr-registry", "crane", "regctl", "cosign")
"""Registry implementations and witnesses of the registry compatibility tests, and cosign
(the signature-copy tests)."""
CHART_TOOLS = ("helm", "promtool")
"""What the chart tests render and check the chart with (alerts: `promtool test rules`)."""


class MissingBinaryError(RuntimeError):
    """A test bed binary is not built; the message names it and says how to build it."""


def default_bin_dir() -> Path:
    """Where build.sh puts the binaries: `$IMAGE_CLONER_TESTBED_BIN` or `<repo>/.testbed/bin`."""
    return Path(os.environ.get(BIN_ENV) or REPO / ".testbed" / "bin")


def missing_binaries(
    bin_dir: Path, *, names: Iterable[str] = (*CONTROL_PLANE, STAGES)
) -> list[str]:
    """Those of `names` (by default the control plane and the KWOK stages file) not in `bin_dir`."""
    return [name for name in names if not (bin_dir / name).is_file()]


def tool(name: str, *, bin_dir: Path | None = None) -> Path:
    """The path of one of the `REGISTRY_TOOLS` or `CHART_TOOLS`; MissingBinaryError if not built."""
    if name not in (*REGISTRY_TOOLS, *CHART_TOOLS):
        raise ValueError(f"{name!r} is not one of {(*REGISTRY_TOOLS, *CHART_TOOLS)}")
    directory = bin_dir or default_bin_dir()
    if missing_binaries(directory, names=(name,)):
        raise MissingBinaryError(
            f"{name} is not built in {directory}: run `make testbed` (testbed/build.sh)"
            f" with the same {BIN_ENV}"
        )
    return directory / name
