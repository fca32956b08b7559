"""A small in-process Kubernetes API for fast unit tests of the reconciler and the watch.

It answers the calls of `controller.kube.KubeCalls` the way the apiserver does where the
controller's decisions depend on it: a JSON patch is applied for real (RFC 6902, `test`
ops included) and bumps `resourceVersion`; a failed `test` and an admission refusal raise
the same `KubeApiError`s, built from the same `Status` bodies the test bed's apiserver
sends (see tests/unit/test_kube_errors.py). The real-apiserver suites stay the proof.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jsonpatch
import jsonpointer

from image_cloner.controller.kube import JsonObject, SecretOutcome
from image_cloner.controller.kube_errors import KubeApiError, api_error
from image_cloner.oci.options import Credentials
from image_cloner.workloads import WorkloadKind

__all__ = ["FakeKube", "PostedEvent", "deployment", "pod"]

Key = tuple[str, str, str]


@dataclass(frozen=True)
class PostedEvent:
    kind: str
    name: str
    reason: str
    message: str
    warning: bool


def _status(code: int, reason: str, message: str, details: Mapping[str, Any]) -> str:
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "status": "Failure",
            "code": code,
            "reason": reason,
            "message": message,
            "details": dict(details),
        }
    )


@dataclass
class FakeKube:
    """Workloads as dicts, Events and Secrets as lists; hooks to play a concurrent user."""

    objects: dict[Key, JsonObject] = field(default_factory=dict)
    events: list[PostedEvent] = field(default_factory=list)
    patches: list[list[dict[str, Any]]] = field(default_factory=list)
    """Every patch that was applied, in order."""
    secrets: dict[tuple[str, str], str] = field(default_factory=dict)
    """(namespace, name) → registry host, for each pull Secret ensured."""
    secret_calls: list[tuple[str, str, Credentials]] = field(default_factory=list)
    """Every `ensure_pull_secret` call: (namespace, name, the login it was given)."""
    admission: Callable[[JsonObject], str | None] | None = None
    """A policy on the patched object: a message refuses it (422 naming the object)."""
    before_patch: Callable[[], None] | None = None
    """Runs as a patch arrives: the user editing the object just before we write."""
    namespaces: dict[str, JsonObject] = field(default_factory=dict)
    """Namespace objects by name (`add_namespace`); others read as bare namespaces."""
    namespace_reads: list[str] = field(default_factory=list)
    """The name of every Namespace read, in order."""
    namespace_error: KubeApiError | None = None
    """When set, every Namespace read raises it (RBAC refusing, an outage)."""
    pods: dict[str, list[JsonObject]] = field(default_factory=dict)
    """Namespace → its pods (the test makes them match the selector it lists by)."""
    pod_lists: list[tuple[str, str]] = field(default_factory=list)
    """Every (namespace, label selector) pods were listed by."""
    users_objects: dict[tuple[str, str, str], JsonObject] = field(default_factory=dict)
    """(kind plural, namespace, name) → users' Secrets and ServiceAccounts we may read."""
    object_reads: list[tuple[str, str, str]] = field(default_factory=list)
    workload_reads: list[tuple[str, str, str]] = field(default_factory=list)
    """(kind, namespace, name) of every workload read (a GET), in order."""
    _versions: itertools.count[int] = field(default_factory=lambda: itertools.count(100))

    def add(self, obj: JsonObject) -> JsonObject:
        """Store `obj` (a copy) with a fresh resourceVersion and a uid; returns the copy."""
        stored = copy.deepcopy(obj)
        meta = stored.setdefault("metadata", {})
        meta.setdefault("uid", f"uid-{meta['name']}")
        meta["resourceVersion"] = str(next(self._versions))
        self.objects[self._key_of(stored)] = stored
        return stored

    def add_namespace(self, name: str, annotations: Mapping[str, str] | None = None) -> None:
        meta: JsonObject = {"name": name}
        if annotations is not None:
            meta["annotations"] = dict(annotations)
        self.namespaces[name] = {"apiVersion": "v1", "kind": "Namespace", "metadata": meta}

    def edit(
        self, kind: str, namespace: str, name: str, change: Callable[[JsonObject], None]
    ) -> None:
        """Change a stored object as a user would: a new resourceVersion."""
        obj = self.objects[(kind, namespace, name)]
        change(obj)
        obj["metadata"]["resourceVersion"] = str(next(self._versions))

    def get(self, kind: str, namespace: str, name: str) -> JsonObject:
        return self.objects[(kind, namespace, name)]

    def read_now(self, kind: str, namespace: str, name: str) -> JsonObject:
        """A copy of the stored object, as a watch event delivers it (not counted as a read)."""
        return copy.deepcopy(self.objects[(kind, namespace, name)])

    # --- KubeCalls ----------------------------------------------------------------

    async def read_workload(
        self, kind: WorkloadKind, namespace: str, name: str
    ) -> JsonObject | None:
        self.workload_reads.append((kind.kind, namespace, name))
        found = self.objects.get((kind.kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def list_workloads(
        self, kind: WorkloadKind, *, namespace: str | None
    ) -> list[JsonObject]:
        return [
            copy.deepcopy(obj)
            for (k, ns, _), obj in self.objects.items()
            if k == kind.kind and (namespace is None or ns == namespace)
        ]

    async def workload_versions(
        self, kind: WorkloadKind, *, namespace: str | None
    ) -> dict[tuple[str, str], str]:
        return {
            (ns, name): str(obj["metadata"].get("resourceVersion", ""))
            for (k, ns, name), obj in self.objects.items()
            if k == kind.kind and (namespace is None or ns == namespace)
        }

    async def patch_workload(
        self, kind: WorkloadKind, namespace: str, name: str, patch: Sequence[Mapping[str, Any]]
    ) -> JsonObject:
        if self.before_patch is not None:
            self.before_patch()
        key = (kind.kind, namespace, name)
        current = self.objects.get(key)
        if current is None:
            details = {"name": name, "group": kind.group, "kind": kind.plural}
            raise api_error(
                404, _status(404, "NotFound", f"{name} not found", details), fallback=""
            )
        try:
            patched: JsonObject = jsonpatch.apply_patch(current, list(patch))
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException) as e:
            # What the apiserver answers when the patch document fails: it names no object.
            message = "the server rejected our request due to an error in our request"
            raise api_error(422, _status(422, "Invalid", message, {}), fallback="") from e
        refusal = self.admission(patched) if self.admission is not None else None
        if refusal is not None:
            message = f"ValidatingAdmissionPolicy 'deny' denied request: {refusal}"
            refused: dict[str, Any] = {
                "name": name,
                "group": kind.group,
                "kind": kind.plural,
                "causes": [{"message": message}],
            }
            full = f'{kind.plural}.{kind.group} "{name}" is forbidden: {message}'
            raise api_error(422, _status(422, "Invalid", full, refused), fallback="")
        patched["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[key] = patched
        self.patches.append([dict(op) for op in patch])
        return copy.deepcopy(patched)

    async def read_namespace(self, name: str) -> JsonObject:
        self.namespace_reads.append(name)
        await asyncio.sleep(0)  # a real read yields: lets concurrent callers meet
        if self.namespace_error is not None:
            raise self.namespace_error
        bare = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        return copy.deepcopy(self.namespaces.get(name, bare))

    async def list_pods(self, namespace: str, label_selector: str) -> list[JsonObject]:
        self.pod_lists.append((namespace, label_selector))
        return copy.deepcopy(self.pods.get(namespace, []))

    async def post_event(
        self, obj: Mapping[str, Any], *, reason: str, message: str, warning: bool = False
    ) -> None:
        self.record_event(obj, reason=reason, message=message, warning=warning)

    def record_event(
        self, obj: Mapping[str, Any], *, reason: str, message: str, warning: bool = False
    ) -> None:
        meta = obj["metadata"]
        self.events.append(PostedEvent(obj["kind"], meta["name"], reason, message, warning))

    async def ensure_pull_secret(
        self, namespace: str, name: str, *, registry_host: str, credentials: Credentials
    ) -> SecretOutcome:
        self.secret_calls.append((namespace, name, credentials))
        known = self.secrets.get((namespace, name))
        self.secrets[(namespace, name)] = registry_host
        return "unchanged" if known == registry_host else "created"

    # --- what revert adds ---------------------------------------------------------

    async def list_managed_secrets(self, name: str, *, namespace: str | None) -> list[JsonObject]:
        # Every ensured pull Secret is ours; its metadata is all `Kube` asks for.
        return [
            {"metadata": {"name": n, "namespace": ns, "resourceVersion": "1"}}
            for (ns, n) in sorted(self.secrets)
            if n == name and (namespace is None or ns == namespace)
        ]

    async def delete_secret(self, namespace: str, name: str, *, resource_version: str) -> bool:
        return self.secrets.pop((namespace, name), None) is not None

    async def read_object(
        self, kind: Literal["secrets", "serviceaccounts"], namespace: str, name: str
    ) -> JsonObject | None:
        self.object_reads.append((kind, namespace, name))
        found = self.users_objects.get((kind, namespace, name))
        return copy.deepcopy(found) if found is not None else None

    @staticmethod
    def _key_of(obj: JsonObject) -> Key:
        meta = obj["metadata"]
        return (obj["kind"], meta["namespace"], meta["name"])


def deployment(
    name: str,
    images: Mapping[str, str],
    *,
    namespace: str = "demo",
    ready: bool = True,
    annotations: Mapping[str, str] | None = None,
) -> JsonObject:
    """A Deployment with one container per entry of `images`, rolled out if `ready`."""
    available = 1 if ready else 0
    meta: JsonObject = {"name": name, "namespace": namespace, "generation": 1}
    if annotations is not None:
        meta["annotations"] = dict(annotations)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": c, "image": i} for c, i in images.items()]},
            },
        },
        "status": {
            "observedGeneration": 1,
            "replicas": 1,
            "updatedReplicas": 1,
            "availableReplicas": available,
        },
    }


def pod(
    name: str, images: Mapping[str, str], image_ids: Mapping[str, str], *, app: str
) -> JsonObject:
    """A running pod of the Deployment `app`, its containers reporting `image_ids`."""
    return {
        "metadata": {"name": name, "labels": {"app": app}},
        "spec": {"containers": [{"name": c, "image": i} for c, i in images.items()]},
        "status": {
            "containerStatuses": [
                {"name": c, "image": images[c], "imageID": image_id}
                for c, image_id in image_ids.items()
            ]
        },
    }
