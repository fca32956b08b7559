"""What the operator commands share: which workloads they act on, read through our client.

`revert`, `plan` and `status` run on a person's machine with that person's
kubeconfig, not as the controller's ServiceAccount, and act on a scope given on the
command line: every workload of every kind in `workloads.KINDS` (in one namespace or all
of them), or named ones (`deployment/web`). This module turns that scope into the objects
as the apiserver serves them now, through the same `kube.Kube` the controller uses, so
the commands and the controller read the same fields the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from image_cloner.controller.kube import JsonObject, Kube
from image_cloner.settings import ConfigError
from image_cloner.workloads import KINDS, WorkloadKind

__all__ = [
    "Scope",
    "Target",
    "WorkloadReads",
    "check_kubeconfig",
    "connect",
    "parse_target",
    "workloads_in_scope",
]


class WorkloadReads(Protocol):
    """The reads a scope needs: `Kube`, or a fake in unit tests."""

    async def read_workload(
        self, kind: WorkloadKind, namespace: str, name: str
    ) -> JsonObject | None: ...

    async def list_workloads(
        self, kind: WorkloadKind, *, namespace: str | None
    ) -> list[JsonObject]: ...


@dataclass(frozen=True)
class Target:
    """One workload named on the command line."""

    kind: WorkloadKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind.noun}/{self.name}"


@dataclass(frozen=True, kw_only=True)
class Scope:
    """The workloads a command acts on: `targets` in `namespace`, or all in it (None: all)."""

    namespace: str | None
    targets: tuple[Target, ...] = ()

    def __post_init__(self) -> None:
        if self.targets and self.namespace is None:
            raise ConfigError("KIND/NAME needs --namespace")


def parse_target(text: str) -> Target:
    """`KIND/NAME`, KIND as kind, noun or plural in any case (`Deployment`, `deployments`).

    Raises `ConfigError` naming the kinds there are.
    """
    kind_text, slash, name = text.partition("/")
    wanted = kind_text.lower()
    for kind in KINDS.values():
        if wanted in (kind.kind.lower(), kind.noun, kind.plural) and slash and name:
            if "/" in name:
                break
            return Target(kind, name)
    known = ", ".join(kind.noun for kind in KINDS.values())
    raise ConfigError(f"{text!r} is not KIND/NAME with KIND one of {known}")


def check_kubeconfig(kubeconfig: str | None) -> None:
    """Raise `ConfigError` for a `--kubeconfig` that is not a file (before anything starts).

    Checked before anything starts, so the message names the flag.
    """
    if kubeconfig is not None and not Path(kubeconfig).is_file():
        raise ConfigError(f"--kubeconfig: no such file: {kubeconfig}")


async def connect(kubeconfig: str | None) -> Kube:
    """Our client on `kubeconfig` (default: $KUBECONFIG, ~/.kube/config, in-cluster).

    Raises `ConfigError` for a kubeconfig that cannot be used (see `check_kubeconfig`).
    """
    try:
        return await Kube.connect(kubeconfig=kubeconfig)
    except ConfigError as e:
        raise ConfigError(f"cannot load the Kubernetes configuration: {e}") from None


async def workloads_in_scope(
    kube: WorkloadReads, scope: Scope
) -> tuple[list[JsonObject], list[Target]]:
    """The scope's objects as they are now, and the named targets that do not exist.

    Raises `KubeApiError` when a read fails.
    """
    if not scope.targets:
        found: list[JsonObject] = []
        for kind in KINDS.values():
            found.extend(await kube.list_workloads(kind, namespace=scope.namespace))
        return found, []
    return await _read_targets(kube, str(scope.namespace), scope.targets)


async def _read_targets(
    kube: WorkloadReads, namespace: str, targets: Sequence[Target]
) -> tuple[list[JsonObject], list[Target]]:
    found, missing = [], []
    for target in dict.fromkeys(targets):  # each once, in the order given
        obj = await kube.read_workload(target.kind, namespace, target.name)
        if obj is None:
            missing.append(target)
        else:
            found.append(obj)
    return found, missing
