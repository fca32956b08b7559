"""The workloads we back up, as plain data: which kinds, when they are ready, what to patch.

Deciding *whether* a workload's rollout is complete and *what* JSON patch rewrites its
images is the heart of the controller. It is kept pure (plain mappings in, plain data
out; no API client, no kopf, no aiohttp) so it can be tested exhaustively and reused by
`revert` and `plan` commands. Objects are the dicts the API server returns and kopf
hands to handlers.

A kind is data (`WorkloadKind`): its API group, version and plural (which give the
controller its watch and its URLs), where its pod template lives (which gives the image
pointers and the patch) and its readiness rule. Adding StatefulSet (template at
`spec.template`) or CronJob (`spec.jobTemplate.spec.template`) means adding one entry to
`KINDS`, not touching the code that watches, reads pod templates or builds patches.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

__all__ = [
    "CONTAINER_SECTIONS",
    "DAEMONSET",
    "DEPLOYMENT",
    "KINDS",
    "ORIGINAL_IMAGES_ANNOTATION",
    "ContainerImage",
    "InvalidAnnotation",
    "InvalidSelector",
    "PatchError",
    "Readiness",
    "UnsupportedWorkload",
    "WorkloadKey",
    "WorkloadKind",
    "build_patch",
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


class InvalidSelector(ValueError):
    """The workload's `spec.selector` is not a label selector we can write as a query."""


@dataclass(frozen=True)
class Readiness:
    """The verdict on a rollout, in the words `kubectl rollout status` would use."""

    ready: bool
    reason: str
    """Why it is not ready yet ("waiting for rollout: 1 of 2 updated replicas are available"),
    or "rollout complete"."""
    failed: bool = False
    """The rollout will not complete by itself (Deployment: progress deadline exceeded)."""


_COMPLETE = Readiness(ready=True, reason="rollout complete")
_NOT_OBSERVED = Readiness(ready=False, reason="waiting for rollout: spec update to be observed")


def _waiting(what: str) -> Readiness:
    return Readiness(ready=False, reason=f"waiting for rollout: {what}")


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
    """Path from the object's root to its pod template: ("spec", "template")."""
    readiness: Callable[[Obj], Readiness]

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


def _count(obj: Obj, *path: str) -> int:
    # The API server omits zero-valued status counters, so absent means 0.
    value = _get(obj, *path)
    return value if isinstance(value, int) else 0


def _observed(obj: Obj) -> bool:
    return _count(obj, "metadata", "generation") <= _count(obj, "status", "observedGeneration")


def _deployment_readiness(obj: Obj) -> Readiness:
    # Mirrors kubectl's DeploymentStatusViewer, check for check and in the same order.
    if not _observed(obj):
        return _NOT_OBSERVED
    conditions = _get(obj, "status", "conditions") or []
    for condition in conditions:
        if (
            isinstance(condition, Mapping)
            and condition.get("type") == "Progressing"
            and condition.get("reason") == "ProgressDeadlineExceeded"
        ):
            return Readiness(
                ready=False, reason="rollout failed: progress deadline exceeded", failed=True
            )
    desired = _get(obj, "spec", "replicas")
    replicas = _count(obj, "status", "replicas")
    updated = _count(obj, "status", "updatedReplicas")
    available = _count(obj, "status", "availableReplicas")
    if isinstance(desired, int) and updated < desired:
        return _waiting(f"{updated} out of {desired} new replicas have been updated")
    if replicas > updated:
        return _waiting(f"{replicas - updated} old replicas are pending termination")
    if available < updated:
        return _waiting(f"{available} of {updated} updated replicas are available")
    return _COMPLETE


def _daemonset_readiness(obj: Obj) -> Readiness:
    # Mirrors kubectl's DaemonSetStatusViewer. kubectl declines to judge OnDelete DaemonSets;
    # we apply the same counts to them, which waits until every pod runs the current template,
    # so we never back up images no pod has proven it can run.
    if not _observed(obj):
        return _NOT_OBSERVED
    desired = _count(obj, "status", "desiredNumberScheduled")
    updated = _count(obj, "status", "updatedNumberScheduled")
    available = _count(obj, "status", "numberAvailable")
    if updated < desired:
        return _waiting(f"{updated} out of {desired} new pods have been updated")
    if available < desired:
        return _waiting(f"{available} of {desired} updated pods are available")
    return _COMPLETE


DEPLOYMENT = WorkloadKind(
    kind="Deployment",
    group="apps",
    version="v1",
    plural="deployments",
    noun="deployment",
    template=("spec", "template"),
    readiness=_deployment_readiness,
)
DAEMONSET = WorkloadKind(
    kind="DaemonSet",
    group="apps",
    version="v1",
    plural="daemonsets",
    noun="daemonset",
    template=("spec", "template"),
    readiness=_daemonset_readiness,
)

KINDS: Mapping[str, WorkloadKind] = MappingProxyType({k.kind: k for k in (DEPLOYMENT, DAEMONSET)})
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
    resource_version = _get(obj, "metadata", "resourceVersion")
    if not isinstance(resource_version, str) or not resource_version:
        raise PatchError("object has no metadata.resourceVersion to guard the patch with")
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
        {"op": "test", "path": "/metadata/resourceVersion", "value": resource_version},
        *image_ops,
        _annotation_op(obj, annotation, originals),
        *_pull_secret_ops(obj, kind_of(obj), pull_secret),
    ]


def _kept_originals(obj: Obj, annotation: str, names: set[str]) -> dict[str, str]:
    try:
        recorded = original_images(obj, annotation=annotation)
    except InvalidAnnotation:
        # Someone damaged our record; the rewrite about to happen writes a valid one.
        return {}
    return {name: image for name, image in recorded.items() if name in names}


def _annotation_op(obj: Obj, annotation: str, originals: Mapping[str, str]) -> dict[str, Any]:
    value = json.dumps(dict(sorted(originals.items())), separators=(",", ":"))
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
