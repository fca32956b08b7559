"""The workloads we back up, as plain data: which kinds, when they are ready, what to patch.

Deciding *whether* a workload's rollout is complete and *what* JSON patch rewrites its
images is the heart of the controller. It is kept pure (plain mappings in, plain data
out; no API client, no kopf, no aiohttp) so it can be tested exhaustively and reused by
`revert` and `plan` commands. Objects are the dicts the API server returns and kopf
hands to handlers.

A kind is data (`WorkloadKind`): its API group, version and plural (which give the
controller its watch and its URLs), where its pod template lives (which gives the image
pointers and the patch), its readiness rule (`readiness`), whether its pod template can be
rewritten at all, and which owner makes it no target of its own. Jobs and Pods cannot be
rewritten (their pod template is immutable): their images are backed up and they are left
as they are; a Job made by a CronJob and a Pod made by any controller are its owner's
business. Adding a kind means adding one entry to `KINDS`, not touching the code that
watches, reads pod templates or builds patches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from image_cloner.readiness import (
    Readiness,
    cronjob_readiness,
    daemonset_readiness,
    deployment_readiness,
    job_readiness,
    pod_readiness,
    statefulset_readiness,
)

__all__ = [
    "CONTAINER_SECTIONS",
    "CRONJOB",
    "DAEMONSET",
    "DEPLOYMENT",
    "JOB",
    "KINDS",
    "ORIGINAL_IMAGES_ANNOTATION",
    "POD",
    "STATEFULSET",
    "ContainerImage",
    "InvalidAnnotation",
    "InvalidSelector",
    "PatchError",
    "Readiness",
    "UnsupportedWorkload",
    "WorkloadKey",
    "WorkloadKind",
    "build_marker_patch",
    "build_patch",
    "build_revert_patch",
    "images_of",
    "is_ready",
    "key_of",
    "kind_of",
    "label_selector",
    "original_images",
]

ORIGINAL_IMAGES_ANNOTATION = "image-cloner.io/original-images"
"""Annotation recording, as compact JSON `{container name: image}`, what we replaced."""

CONTAINER_SECTIONS = ("containers", "initContainers")
"""The pod-spec lists whose images we copy. Ephemeral containers never appear in templates."""

Obj = Mapping[str, Any]


class UnsupportedWorkload(ValueError):
    """The object is not of a kind we handle."""


class PatchError(ValueError):
    """The requested rewrite does not fit the object (unknown container, no resourceVersion)."""


class InvalidAnnotation(ValueError):
    """Our annotation on the object is not the JSON object of strings we write."""


def _no_owner(obj: Obj) -> None:
    return None


class InvalidSelector(ValueError):
    """The workload's `spec.selector` is not a label selector we can write as a query."""


@dataclass(frozen=True, kw_only=True)
class WorkloadKind:
    """One kind of workload we watch, back up and patch."""

    kind: str
    """API kind, as in `obj["kind"]`: "Deployment"."""
    group: str
    version: str
    plural: str
    """Resource name for URLs and kopf handlers: "deployments"."""
    noun: str
    """How log lines name it: "deployment" ("inspecting deployment")."""
    template: tuple[str, ...]
    """Path from the object's root to its pod template: ("spec", "template"); () for a Pod,
    which is its own template."""
    readiness: Callable[[Obj], Readiness]
    rewritable: bool = True
    """False when the API server refuses changes to the pod template (Job, Pod): the
    images are backed up, the object is never patched, and RBAC grants no patch."""
    owned_by: Callable[[Obj], str | None] = _no_owner
    """The owner ("CronJob/nightly") that backs this object's images up instead, or None
    when the object is a target of its own."""
    selector: str = ""
    """A label selector the watch and every listing of the kind send to the apiserver, so
    objects `owned_by` would drop never reach us ("": every object)."""

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def pod_spec_pointer(self) -> str:
        """JSON pointer to the template's pod spec: "/spec/template/spec"."""
        return "/" + "/".join(_pointer_token(part) for part in (*self.template, "spec"))

    def pod_spec(self, obj: Obj) -> Any:
        """The pod spec of `obj`'s template (None when the object has none)."""
        return _get(obj, *self.template, "spec")

    def collection(self, namespace: str | None) -> str:
        """API path of the kind's objects, in `namespace` or (None) in all namespaces."""
        root = f"/apis/{self.group}" if self.group else "/api"
        scope = f"/namespaces/{namespace}" if namespace else ""
        return f"{root}/{self.version}{scope}/{self.plural}"

    def path(self, namespace: str, name: str) -> str:
        """API path of one object of the kind."""
        return f"{self.collection(namespace)}/{name}"


@dataclass(frozen=True)
class WorkloadKey:
    """What the work queue holds: enough to re-read the object, nothing that goes stale."""

    kind: str
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.namespace}/{self.name}"


@dataclass(frozen=True)
class ContainerImage:
    """One container of a pod template and the image it runs."""

    section: str
    """"containers" or "initContainers"."""
    index: int
    name: str
    image: str
    pod_spec: str
    """JSON pointer to the pod spec holding the container (`WorkloadKind.pod_spec_pointer`)."""

    @property
    def pointer(self) -> str:
        """JSON pointer to the image field, for patches."""
        return f"{self.pod_spec}/{self.section}/{self.index}/image"


def _get(obj: Obj, *path: str) -> Any:
    node: Any = obj
    for part in path:
        if not isinstance(node, Mapping):
            return None
        node = node.get(part)
    return node


DEPLOYMENT = WorkloadKind(
    kind="Deployment",
    group="apps",
    version="v1",
    plural="deployments",
    noun="deployment",
    template=("spec", "template"),
    readiness=deployment_readiness,
)
DAEMONSET = WorkloadKind(
    kind="DaemonSet",
    group="apps",
    version="v1",
    plural="daemonsets",
    noun="daemonset",
    template=("spec", "template"),
    readiness=daemonset_readiness,
)

STATEFULSET = WorkloadKind(
    kind="StatefulSet",
    group="apps",
    version="v1",
    plural="statefulsets",
    noun="statefulset",
    template=("spec", "template"),
    readiness=statefulset_readiness,
)
CRONJOB = WorkloadKind(
    kind="CronJob",
    group="batch",
    version="v1",
    plural="cronjobs",
    noun="cronjob",
    template=("spec", "jobTemplate", "spec", "template"),
    readiness=cronjob_readiness,
)


def _controller(obj: Obj, *, kinds: frozenset[str] | None = None) -> str | None:
    """The controlling owner ("Kind/name"), if its kind is in `kinds` (None: any kind)."""
    for owner in _get(obj, "metadata", "ownerReferences") or []:
        # The API server allows one controlling owner per object.
        if isinstance(owner, Mapping) and owner.get("controller") is True:
            wanted = kinds is None or owner.get("kind") in kinds
            return f"{owner.get('kind')}/{owner.get('name')}" if wanted else None
    return None


JOB = WorkloadKind(
    kind="Job",
    group="batch",
    version="v1",
    plural="jobs",
    noun="job",
    template=("spec", "template"),
    readiness=job_readiness,
    rewritable=False,
    # A Job of someone else's controller (a workflow engine, an operator) is nobody's
    # target but its own: we handle no such owner.
    owned_by=lambda obj: _controller(obj, kinds=frozenset({"CronJob"})),
)
POD = WorkloadKind(
    kind="Pod",
    group="",
    version="v1",
    plural="pods",
    noun="pod",
    template=(),
    readiness=pod_readiness,
    rewritable=False,
    # Only bare Pods: a controller's pods are covered by their owner, or (an operator's)
    # are for the admission mode, which sees every new Pod.
    owned_by=_controller,
    # The labels our kinds' controllers put on every pod they make (ReplicaSets of a
    # Deployment, StatefulSets and DaemonSets, Jobs), filtered by the apiserver: every
    # rollout is half a dozen Pod events, which would otherwise all be parsed to be dropped
    # (at 1,000 rewrites, most of the controller's CPU). A bare Pod copied from such a
    # pod's YAML, labels and all, is missed: `owned_by` still decides the rest.
    selector=",".join(
        f"!{label}"
        for label in (
            "pod-template-hash",
            "controller-revision-hash",
            "batch.kubernetes.io/controller-uid",
            "controller-uid",
        )
    ),
)

KINDS: Mapping[str, WorkloadKind] = MappingProxyType(
    {k.kind: k for k in (DEPLOYMENT, DAEMONSET, STATEFULSET, CRONJOB, JOB, POD)}
)
"""Every kind we handle, by API kind."""


def kind_of(obj: Obj) -> WorkloadKind:
    """The `WorkloadKind` of an object, from its `kind` field; raises `UnsupportedWorkload`."""
    kind = obj.get("kind")
    found = KINDS.get(kind) if isinstance(kind, str) else None
    if found is None:
        raise UnsupportedWorkload(f"unsupported workload kind {kind!r}")
    return found


def key_of(obj: Obj) -> WorkloadKey:
    """The queue key of an object."""
    return WorkloadKey(
        kind=kind_of(obj).kind,
        namespace=str(_get(obj, "metadata", "namespace") or ""),
        name=str(_get(obj, "metadata", "name") or ""),
    )


def is_ready(obj: Obj) -> Readiness:
    """Whether the workload's rollout is complete, as `kubectl rollout status` judges it."""
    return kind_of(obj).readiness(obj)


def images_of(obj: Obj) -> list[ContainerImage]:
    """Every container image of the pod template, containers first, in spec order."""
    kind = kind_of(obj)
    pod_spec = kind.pod_spec(obj)
    found: list[ContainerImage] = []
    for section in CONTAINER_SECTIONS:
        containers = _get(pod_spec, section) or []
        for index, container in enumerate(containers):
            image = container.get("image") if isinstance(container, Mapping) else None
            # The API server requires an image for workload templates; skip rather than
            # crash on a hand-made object that lacks one.
            if isinstance(image, str) and image:
                name = str(container.get("name"))
                found.append(ContainerImage(section, index, name, image, kind.pod_spec_pointer))
    return found


_SELECTOR_OPERATORS: Mapping[str, Callable[[str, list[str]], str]] = {
    "In": lambda key, values: f"{key} in ({','.join(values)})",
    "NotIn": lambda key, values: f"{key} notin ({','.join(values)})",
    "Exists": lambda key, _: key,
    "DoesNotExist": lambda key, _: f"!{key}",
}


def label_selector(obj: Obj) -> str:
    """The workload's `spec.selector` as a `labelSelector` query ("app=web,tier in (a,b)").

    That is how the controller lists the workload's pods, in its namespace only (the
    ReplicaSet and DaemonSet controllers select the same way). "" when the object has no
    selector (apps/v1 requires one): such a query would match every pod of the namespace.
    Raises `InvalidSelector` on a shape the apiserver would not have accepted.
    """
    selector = _get(obj, "spec", "selector")
    if selector is None:
        return ""
    if not isinstance(selector, Mapping):
        raise InvalidSelector("spec.selector is not an object")
    labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not isinstance(labels, Mapping) or not isinstance(expressions, list):
        raise InvalidSelector("spec.selector has a matchLabels or matchExpressions of bad shape")
    parts = [f"{key}={value}" for key, value in labels.items()]
    for expression in expressions:
        parts.append(_requirement(expression))
    return ",".join(parts)


def _requirement(expression: object) -> str:
    if not isinstance(expression, Mapping):
        raise InvalidSelector("spec.selector.matchExpressions holds a non-object")
    key, operator = expression.get("key"), expression.get("operator")
    values = expression.get("values") or []
    write = _SELECTOR_OPERATORS.get(operator) if isinstance(operator, str) else None
    if not isinstance(key, str) or write is None or not isinstance(values, list):
        raise InvalidSelector(f"spec.selector: cannot read requirement {dict(expression)!r}")
    return write(key, [str(value) for value in values])


def _pointer_token(text: str) -> str:
    # RFC 6901: "~" first, so the "~" that "~1" introduces is not escaped again.
    return text.replace("~", "~0").replace("/", "~1")


def original_images(obj: Obj, *, annotation: str = ORIGINAL_IMAGES_ANNOTATION) -> dict[str, str]:
    """What our annotation says each container ran before we rewrote it ({} when unpatched).

    This is how to undo a rewrite: set each named container's image back to its value,
    if the container still runs the copy we wrote.
    """
    text = _get(obj, "metadata", "annotations", annotation)
    if text is None:
        return {}
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise InvalidAnnotation(
            f"annotation {annotation} is not a JSON object of container name to image"
        )
    return value


def build_patch(
    obj: Obj,
    rewrites: Mapping[str, str],
    *,
    annotation: str = ORIGINAL_IMAGES_ANNOTATION,
    pull_secret: str | None = None,
) -> list[dict[str, Any]]:
    """The JSON patch that points containers at new images, or [] when nothing changes.

    `rewrites` maps container name (unique across containers and initContainers, as the
    API server enforces) to its new image. The patch first tests `resourceVersion` and
    each old image, so a concurrent edit makes the API server reject it (the caller then
    re-reads and decides again) instead of being overwritten. It records the replaced
    images in `annotation`, keeping the entries of other containers that still exist, and
    adds `pull_secret` to the template's `imagePullSecrets` if it is not there yet.
    """
    kind = kind_of(obj)
    if not kind.rewritable:
        raise PatchError(f"the pod template of a {kind.kind} cannot be changed")
    guard = _guard(obj)
    containers = {c.name: c for c in images_of(obj)}
    unknown = sorted(set(rewrites) - set(containers))
    if unknown:
        raise PatchError(f"no container named {', '.join(map(repr, unknown))} in the pod template")

    image_ops: list[dict[str, Any]] = []
    originals = _kept_originals(obj, annotation, set(containers))
    for name, new_image in rewrites.items():
        container = containers[name]
        if container.image == new_image:
            continue
        image_ops.append({"op": "test", "path": container.pointer, "value": container.image})
        image_ops.append({"op": "replace", "path": container.pointer, "value": new_image})
        # The image it runs now is what the user last asked for, so that is what to restore.
        originals[name] = container.image
    if not image_ops:
        return []

    return [
        guard,
        *image_ops,
        _annotation_op(obj, annotation, originals),
        *_pull_secret_ops(obj, kind, pull_secret),
    ]


def build_marker_patch(
    obj: Obj,
    marker: str,
    value: str,
    *,
    forget: Collection[str] = (),
    annotation: str = ORIGINAL_IMAGES_ANNOTATION,
) -> list[dict[str, Any]]:
    """The JSON patch that puts annotation `marker` (= `value`) on the workload.

    Guarded by `resourceVersion` like `build_patch`: if the object changed since it was
    read, the apiserver rejects it and the caller decides again. The containers named in
    `forget` leave our record of originals (the whole annotation goes when none is left):
    they run their originals again, so there is nothing of ours to record or to restore,
    and once a person removes the marker they count as never rewritten.
    """
    ops = [_guard(obj), _add_annotation_op(obj, marker, value)]
    if not forget or _get(obj, "metadata", "annotations", annotation) is None:
        return ops
    names = {c.name for c in images_of(obj)} - set(forget)
    kept = _kept_originals(obj, annotation, names)
    if kept:
        ops.append(_annotation_op(obj, annotation, kept))
    else:
        ops.append({"op": "remove", "path": f"/metadata/annotations/{_pointer_token(annotation)}"})
    return ops


def build_revert_patch(
    obj: Obj,
    restores: Mapping[str, str],
    *,
    annotation: str = ORIGINAL_IMAGES_ANNOTATION,
    pull_secret: str | None = None,
) -> list[dict[str, Any]]:
    """The JSON patch that undoes `build_patch`, or [] when there is nothing left to undo.

    `restores` maps container name to the image to put back (the caller decides which
    containers still run our copy; see `controller.revert`). Guarded like the rewrite: a
    `test` of `resourceVersion` and of each image being replaced. It removes `annotation`
    and the `pull_secret` entry of the template's `imagePullSecrets` (the whole list when
    that entry was its only one, as the rewrite added it then), so the template is again
    what the user wrote.
    """
    guard = _guard(obj)
    containers = {c.name: c for c in images_of(obj)}
    unknown = sorted(set(restores) - set(containers))
    if unknown:
        raise PatchError(f"no container named {', '.join(map(repr, unknown))} in the pod template")
    ops: list[dict[str, Any]] = []
    for name, image in restores.items():
        container = containers[name]
        if container.image != image:
            ops.append({"op": "test", "path": container.pointer, "value": container.image})
            ops.append({"op": "replace", "path": container.pointer, "value": image})
    annotations = _get(obj, "metadata", "annotations")
    if isinstance(annotations, Mapping) and annotation in annotations:
        ops.append({"op": "remove", "path": f"/metadata/annotations/{_pointer_token(annotation)}"})
    ops.extend(_pull_secret_removal(obj, kind_of(obj), pull_secret))
    if not ops:
        return []
    return [guard, *ops]


def _pull_secret_removal(
    obj: Obj, kind: WorkloadKind, pull_secret: str | None
) -> list[dict[str, Any]]:
    existing = _get(kind.pod_spec(obj), "imagePullSecrets")
    if not pull_secret or not isinstance(existing, list):
        return []
    path = f"{kind.pod_spec_pointer}/imagePullSecrets"
    found = [
        i for i, s in enumerate(existing) if isinstance(s, Mapping) and s.get("name") == pull_secret
    ]
    if found and len(found) == len(existing):
        return [{"op": "remove", "path": path}]
    # Highest index first, so each removal leaves the indices of the next ones valid.
    return [{"op": "remove", "path": f"{path}/{index}"} for index in reversed(found)]


def _kept_originals(obj: Obj, annotation: str, names: set[str]) -> dict[str, str]:
    try:
        recorded = original_images(obj, annotation=annotation)
    except InvalidAnnotation:
        # Someone damaged our record; the rewrite about to happen writes a valid one.
        return {}
    return {name: image for name, image in recorded.items() if name in names}


def _guard(obj: Obj) -> dict[str, Any]:
    resource_version = _get(obj, "metadata", "resourceVersion")
    if not isinstance(resource_version, str) or not resource_version:
        raise PatchError("object has no metadata.resourceVersion to guard the patch with")
    return {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version}


def _annotation_op(obj: Obj, annotation: str, originals: Mapping[str, str]) -> dict[str, Any]:
    value = json.dumps(dict(sorted(originals.items())), separators=(",", ":"))
    return _add_annotation_op(obj, annotation, value)


def _add_annotation_op(obj: Obj, annotation: str, value: str) -> dict[str, Any]:
    if isinstance(_get(obj, "metadata", "annotations"), Mapping):
        # "add" on an existing member replaces it, so one op covers both cases.
        path = f"/metadata/annotations/{_pointer_token(annotation)}"
        return {"op": "add", "path": path, "value": value}
    return {"op": "add", "path": "/metadata/annotations", "value": {annotation: value}}


def _pull_secret_ops(obj: Obj, kind: WorkloadKind, pull_secret: str | None) -> list[dict[str, Any]]:
    if not pull_secret:
        return []
    existing = _get(kind.pod_spec(obj), "imagePullSecrets")
    path = f"{kind.pod_spec_pointer}/imagePullSecrets"
    if not isinstance(existing, list):
        return [{"op": "add", "path": path, "value": [{"name": pull_secret}]}]
    if any(isinstance(s, Mapping) and s.get("name") == pull_secret for s in existing):
        return []
    return [{"op": "add", "path": f"{path}/-", "value": {"name": pull_secret}}]
