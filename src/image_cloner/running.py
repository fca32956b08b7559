"""What a workload's pods really run: the digest behind each container's image, from pod status.

A tag is a pointer that moves; the bits a Ready workload runs are a fact its kubelets report
in `status.containerStatuses[].imageID` (and `initContainerStatuses`). Backing up "what the
tag says now" would back up, and roll the workload onto, bits that never ran there. So the
backup is pinned to the digest the pods report, when they report one and agree on it.

Runtimes write `imageID` differently, and not every form names a manifest:

- containerd and CRI-O: `docker.io/library/nginx@sha256:<digest>` (a repo digest: the
  manifest, or index, the node resolved the tag to);
- cri-dockerd (and the old dockershim): `docker-pullable://nginx@sha256:<digest>`;
- an image with no repo digest (built or loaded on the node): `docker://sha256:<id>` or a
  bare `sha256:<id>`, the image's *config* digest, which no registry can serve as a
  manifest. That counts as "not reported".

Depending on the runtime the repo digest is the index's or one platform's manifest's;
which of the two it is can only be told with the registry (the controller resolves it).
This module is pure: pod objects in, a verdict out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from image_cloner.oci.references import InvalidReference, parse_digest

__all__ = ["Agreed", "Disagreed", "NotReported", "RunningDigest", "digest_in_image_id", "running"]

Obj = Mapping[str, Any]

_RUNTIME_PREFIXES = ("docker-pullable://", "docker://", "containerd://", "cri-o://")
_STATUS_SECTIONS = {"containers": "containerStatuses", "initContainers": "initContainerStatuses"}


@dataclass(frozen=True)
class Agreed:
    """Every current pod that reports a digest for the container reports this one."""

    digest: str
    pods: int
    """How many pods reported it."""


@dataclass(frozen=True)
class Disagreed:
    """Current pods report different digests for the same container: which one to keep?"""

    counts: Mapping[str, int]
    """Pods per digest."""

    def __str__(self) -> str:
        parts = sorted(self.counts.items(), key=lambda item: (-item[1], item[0]))
        return ", ".join(f"{digest} on {n} pod{'s' if n != 1 else ''}" for digest, n in parts)


@dataclass(frozen=True)
class NotReported:
    """No current pod reports a manifest digest for the container (yet)."""

    reason: str


RunningDigest = Agreed | Disagreed | NotReported


def digest_in_image_id(image_id: object) -> str | None:
    """The manifest digest named by a container status's `imageID`, or None if it names none."""
    if not isinstance(image_id, str) or not image_id:
        return None
    text = image_id
    for prefix in _RUNTIME_PREFIXES:
        text = text.removeprefix(prefix)
    name, at, digest = text.rpartition("@")
    if not at or not name:
        return None  # a bare `sha256:…` is the image's config ID, not a manifest
    try:
        return parse_digest(digest)
    except InvalidReference:
        return None


def running(pods: Iterable[Obj], *, section: str, container: str, image: str) -> RunningDigest:
    """What the current pods run for one container of the pod template.

    Current pods are those not being deleted whose spec runs `image` in a container
    named `container` (in `section`, "containers" or "initContainers"): a pod of an older
    revision, or of another controller whose labels overlap, is no evidence for this one.
    """
    counts: Counter[str] = Counter()
    current = 0
    for pod in pods:
        if _terminating(pod) or not _runs(pod, section, container, image):
            continue
        current += 1
        digest = _reported(pod, section, container)
        if digest is not None:
            counts[digest] += 1
    if len(counts) > 1:
        return Disagreed(dict(counts))
    if counts:
        ((digest, n),) = counts.items()
        return Agreed(digest, n)
    if current == 0:
        return NotReported("no current pod runs this container")
    return NotReported("the container runtime reports no image digest")


def _terminating(pod: Obj) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _runs(pod: Obj, section: str, container: str, image: str) -> bool:
    for spec in (pod.get("spec") or {}).get(section) or []:
        if isinstance(spec, Mapping) and spec.get("name") == container:
            return spec.get("image") == image
    return False


def _reported(pod: Obj, section: str, container: str) -> str | None:
    statuses = (pod.get("status") or {}).get(_STATUS_SECTIONS[section]) or []
    for status in statuses:
        if isinstance(status, Mapping) and status.get("name") == container:
            return digest_in_image_id(status.get("imageID"))
    return None
