"""The Pod admission decision: an AdmissionReview in, the AdmissionReview answer out.

Pure (no I/O), so that every answer the webhook gives can be checked table by table.
The rules, in order, each one failing open (the Pod is admitted as it was written):

1. a Pod in an ignored namespace, or labelled or annotated `image-cloner.io/skip: "true"`,
   is left alone and nothing is queued;
2. while the backup registry's health check fails, nothing is rewritten (a Pod pointed at
   a registry that is down would not start), and the images are still queued;
3. each image of `containers` and `initContainers` (never `ephemeralContainers`: they are
   added to running Pods by people debugging, and must stay what they typed) that the
   index knows as verified, and the namespace may use, is replaced by its pinned backup;
   images already in the backup registry or excluded by `IMAGE_CLONER_EXCLUDE_IMAGES` are
   left as they are; every other image is queued for a copy;
4. a rewritten Pod gets `image-cloner.io/original-images` (container → image as written)
   and the pull Secret in `imagePullSecrets` when its namespace has one.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from image_cloner.admission_index import BackupIndex, MayUse, public_only
from image_cloner.mapping import BackupLocation, is_backup
from image_cloner.oci.references import InvalidReference, Reference, parse_reference
from image_cloner.policy import SKIP_ANNOTATION, ImagePattern
from image_cloner.workloads import ORIGINAL_IMAGES_ANNOTATION

__all__ = ["REWRITTEN_SECTIONS", "AdmissionDecision", "AdmissionRules", "Rewrite", "decide"]

REWRITTEN_SECTIONS = ("initContainers", "containers")
"""Where a Pod's rewritten images live; `ephemeralContainers` is left alone on purpose."""


@dataclass(frozen=True)
class Rewrite:
    container: str
    source: str
    """The image as the Pod named it."""
    backup: str
    """The pinned backup it now names."""


@dataclass(frozen=True, kw_only=True)
class AdmissionRules:
    """What the decision depends on besides the Pod: settings, and the state of this process."""

    backup: BackupLocation
    index: BackupIndex
    registry_ok: bool
    """Backups may be used now: the backup registry's health check passes (and the
    namespace has its pull Secret, where one is managed; the queued copy writes it)."""
    ignored_namespaces: frozenset[str] = frozenset()
    exclude_images: tuple[ImagePattern, ...] = ()
    pull_secret: str | None = None
    """The pull Secret to add: set only when the Pod's namespace has it."""
    may_use: MayUse = public_only


@dataclass(frozen=True, kw_only=True)
class AdmissionDecision:
    response: dict[str, Any]
    """The AdmissionReview to answer with."""
    rewrites: tuple[Rewrite, ...] = ()
    queued: tuple[Reference, ...] = ()
    """Images to back up, so that later Pods can be rewritten."""
    namespace: str = ""
    owner: Mapping[str, Any] | None = field(default=None)
    """The Pod's controller ownerReference (a ReplicaSet, a Job), if any."""


def decide(review: Mapping[str, Any], rules: AdmissionRules) -> AdmissionDecision:
    """Answer `review` (admission.k8s.io/v1); raises `ValueError` when it is no review."""
    request = review.get("request") if isinstance(review, Mapping) else None
    if not isinstance(request, Mapping) or not isinstance(request.get("uid"), str):
        raise ValueError("not an AdmissionReview request: no request.uid")
    pod = request.get("object")
    namespace = str(request.get("namespace") or "")
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    answer = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}
    if not isinstance(pod, Mapping) or pod.get("kind", "Pod") != "Pod":
        return AdmissionDecision(response=answer, namespace=namespace)
    if namespace in rules.ignored_namespaces or _opted_out(pod):
        return AdmissionDecision(response=answer, namespace=namespace)
    rewrites, queued, ops = _plan(pod, namespace, rules)
    if rewrites:
        ops.append(_annotation_op(pod, {r.container: r.source for r in rewrites}))
        ops.extend(_pull_secret_ops(pod, rules.pull_secret))
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(ops).encode()).decode()
    return AdmissionDecision(
        response=answer,
        rewrites=tuple(rewrites),
        queued=tuple(queued),
        namespace=namespace,
        owner=_controller_owner(pod),
    )


def _plan(
    pod: Mapping[str, Any], namespace: str, rules: AdmissionRules
) -> tuple[list[Rewrite], list[Reference], list[dict[str, Any]]]:
    rewrites: list[Rewrite] = []
    queued: list[Reference] = []
    ops: list[dict[str, Any]] = []
    spec = pod.get("spec") if isinstance(pod.get("spec"), Mapping) else {}
    for section in REWRITTEN_SECTIONS:
        containers = spec.get(section) if isinstance(spec, Mapping) else None
        for i, container in enumerate(containers if isinstance(containers, Sequence) else ()):
            image = container.get("image") if isinstance(container, Mapping) else None
            if not isinstance(image, str):
                continue
            try:
                source = parse_reference(image)
            except InvalidReference:
                continue  # the kubelet will say what is wrong with it; not ours to judge
            if is_backup(source, rules.backup) or any(
                p.matches(source) for p in rules.exclude_images
            ):
                continue
            pinned = rules.index.lookup(namespace, image, may_use=rules.may_use)
            if pinned is None or not rules.registry_ok:
                # Unknown, or not usable now (the source is the safer bet): the copy
                # (or its verification) brings it into the index.
                queued.append(source)
                continue
            path = f"/spec/{section}/{i}/image"
            ops.append({"op": "test", "path": path, "value": image})
            ops.append({"op": "replace", "path": path, "value": str(pinned)})
            rewrites.append(Rewrite(str(container.get("name", "")), image, str(pinned)))
    return rewrites, queued, ops


def _opted_out(pod: Mapping[str, Any]) -> bool:
    meta = pod.get("metadata") if isinstance(pod.get("metadata"), Mapping) else {}
    for key in ("labels", "annotations"):
        values = meta.get(key) if isinstance(meta, Mapping) else None
        if isinstance(values, Mapping) and str(values.get(SKIP_ANNOTATION, "")).lower() == "true":
            return True
    return False


def _annotation_op(pod: Mapping[str, Any], originals: Mapping[str, str]) -> dict[str, Any]:
    value = json.dumps(dict(sorted(originals.items())), separators=(",", ":"))
    annotations = pod.get("metadata", {}).get("annotations")
    if isinstance(annotations, Mapping):
        token = ORIGINAL_IMAGES_ANNOTATION.replace("~", "~0").replace("/", "~1")
        return {"op": "add", "path": f"/metadata/annotations/{token}", "value": value}
    return {
        "op": "add",
        "path": "/metadata/annotations",
        "value": {ORIGINAL_IMAGES_ANNOTATION: value},
    }


def _pull_secret_ops(pod: Mapping[str, Any], name: str | None) -> list[dict[str, Any]]:
    if name is None:
        return []
    existing = pod.get("spec", {}).get("imagePullSecrets")
    if not isinstance(existing, Sequence):
        return [{"op": "add", "path": "/spec/imagePullSecrets", "value": [{"name": name}]}]
    if any(isinstance(e, Mapping) and e.get("name") == name for e in existing):
        return []
    return [{"op": "add", "path": "/spec/imagePullSecrets/-", "value": {"name": name}}]


def _controller_owner(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    owners = pod.get("metadata", {}).get("ownerReferences")
    for owner in owners if isinstance(owners, Sequence) else ():
        if isinstance(owner, Mapping) and owner.get("controller") is True:
            return owner
    return None
