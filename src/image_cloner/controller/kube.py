"""The Kubernetes API calls the controller makes itself, on one explicit client.

kopf watches; everything else goes through here: reading a workload again before
deciding, its namespace's annotations (the opt-out), its pods (by its selector), the JSON
patch that rewrites it, Events, the pull Secret and the leader-election Lease. Keeping them
in one small module makes the RBAC the controller needs exactly the list of methods below
(get/list workloads, patch the rewritable kinds only, list pods in a namespace by a
selector, get namespaces, create/patch events, get/create/patch one Secret name,
get/create/update one Lease). Every write names us as its field manager (`FIELD_MANAGER`),
so `managedFields` tells our changes apart from those of whoever undoes them. Objects travel
as plain JSON dicts, as the API serves them: `workloads` works on those, and no model class
can drop a field we do not know.
Each workload method takes a `WorkloadKind`, whose entry gives the API path.
`image-cloner revert` uses the same client with the user's kubeconfig, and two more
calls the controller never makes (list Secrets as metadata, delete one), so the
controller's RBAC does not grow for it.

The requests go out on one aiohttp session to the endpoint `kubeconfig.load_endpoint` found: the
calls are a dozen REST paths and JSON bodies, so no generated client is needed (see
`kubeconfig` for why there is none). `_call` is the one place where a refused request,
aiohttp's connection errors and timeouts become ours: a `KubeApiError` keeping the
apiserver's `Status` (see `kube_errors`), so callers decide from its reason.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

import aiohttp

from image_cloner import __version__

if TYPE_CHECKING:
    import kopf

from image_cloner.controller.events import COMPONENT, EventRecorder
from image_cloner.controller.kube_errors import (
    AlreadyExists,
    NotFound,
    Unreachable,
    api_error,
)
from image_cloner.controller.kubeconfig import Endpoint, load_endpoint
from image_cloner.logs import CONTROLLER_LOGGER
from image_cloner.oci.options import Credentials
from image_cloner.settings import ConfigError
from image_cloner.workloads import WorkloadKind

__all__ = [
    "COMPONENT",
    "FIELD_MANAGER",
    "MANAGED_BY_LABEL",
    "JsonObject",
    "Kube",
    "KubeCalls",
    "SecretOutcome",
]

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

FIELD_MANAGER = COMPONENT
"""The `fieldManager` of our writes: the `manager` of our entries in `managedFields`."""

_WRITES = frozenset({"POST", "PATCH", "PUT"})

REQUEST_TIMEOUT = 30.0
"""Seconds for one API request; a hung apiserver must not hold a worker forever."""

_METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
"""Accept header for a list of objects' metadata only (what `kubectl get -o name` asks for)."""

LIST_PAGE = 500
"""Items per page of a listing (client-go's pager asks for 500 too)."""

logger = logging.getLogger(CONTROLLER_LOGGER)

JsonObject = dict[str, Any]
SecretOutcome = Literal["created", "updated", "unchanged", "not-managed"]


class KubeCalls(Protocol):
    """What the reconciler and the watch tracker call: `Kube`, or a fake in unit tests."""

    async def read_workload(
        self, kind: WorkloadKind, namespace: str, name: str
    ) -> JsonObject | None: ...

    async def list_workloads(
        self, kind: WorkloadKind, *, namespace: str | None
    ) -> list[JsonObject]: ...

    async def workload_versions(
        self, kind: WorkloadKind, *, namespace: str | None
    ) -> dict[tuple[str, str], str]: ...

    async def patch_workload(
        self, kind: WorkloadKind, namespace: str, name: str, patch: Sequence[Mapping[str, Any]]
    ) -> JsonObject: ...

    async def read_namespace(self, name: str) -> JsonObject: ...
    async def list_pods(self, namespace: str, label_selector: str) -> list[JsonObject]: ...

    def record_event(
        self, obj: Mapping[str, Any], *, reason: str, message: str, warning: bool = False
    ) -> None: ...

    async def ensure_pull_secret(
        self, namespace: str, name: str, *, registry_host: str, credentials: Credentials
    ) -> SecretOutcome: ...

    async def read_object(
        self, kind: Literal["secrets", "serviceaccounts"], namespace: str, name: str
    ) -> JsonObject | None: ...


class Kube:
    """Our Kubernetes client: one aiohttp session to one endpoint, no globals."""

    def __init__(self, endpoint: Endpoint) -> None:
        self._endpoint = endpoint
        self._ssl = endpoint.ssl_context()
        self._session: aiohttp.ClientSession | None = None
        instance = os.environ.get("HOSTNAME") or socket.gethostname()
        self._recorder = EventRecorder(self._call, instance=instance)

    @classmethod
    async def connect(cls, *, kubeconfig: str | None) -> Kube:
        """Build the client from `kubeconfig`, else in-cluster, else $KUBECONFIG/~/.kube/config.

        Raises `ConfigError` for a configuration that cannot be used, naming what is wrong.
        """
        endpoint = load_endpoint(kubeconfig)
        await endpoint.source.identity()  # a broken token file or plugin fails here, once
        try:
            return cls(endpoint)
        except OSError as e:  # ssl.SSLError too: a CA, certificate or key missing or not PEM
            raise ConfigError(f"kubeconfig: cannot load its certificates: {e}") from None

    async def close(self) -> None:
        """Send the Events still queued (`events.EVENT_FLUSH` seconds at most), then close."""
        await self._recorder.close()
        if self._session is not None:
            await self._session.close()

    async def connection_info(self) -> kopf.ConnectionInfo:
        """The same endpoint and identity for kopf's watch streams (its login handler)."""
        ep = self._endpoint
        # Asked again on every login: a re-read token file or a re-run plugin is used.
        identity = await ep.source.identity()
        import kopf  # only `run` watches through kopf: plan, status and revert never load it

        return kopf.ConnectionInfo(
            server=ep.server,
            ca_path=ep.ca_file,
            ca_data=ep.ca_data,
            insecure=ep.insecure or None,
            scheme="Bearer" if identity.token else None,
            token=identity.token,
            username=identity.username,
            password=identity.password,
            certificate_path=ep.cert_file,
            private_key_path=ep.key_file,
            certificate_data=ep.cert_data,
            private_key_data=ep.key_data,
            proxy_url=ep.proxy_url,
            expiration=identity.expires,
        )

    # --- workloads ------------------------------------------------------------

    async def read_workload(
        self, kind: WorkloadKind, namespace: str, name: str
    ) -> JsonObject | None:
        """The workload as stored now, or None when it is gone."""
        try:
            return await self._call("GET", kind.path(namespace, name))
        except NotFound:
            return None

    async def list_workloads(
        self, kind: WorkloadKind, *, namespace: str | None
    ) -> list[JsonObject]:
        """Every workload of a kind (in one namespace or all), whole, page by page."""
        items: list[JsonObject] = []
        async for page in self._pages(kind.collection(namespace), selector=kind.selector):
            # Lists omit each item's kind; put it back so items look like single reads.
            for item in page:
                item.setdefault("kind", kind.kind)
                item.setdefault("apiVersion", kind.api_version)
            items.extend(page)
        return items

    async def workload_versions(
        self, kind: WorkloadKind, *, namespace: str | None
    ) -> dict[tuple[str, str], str]:
        """(namespace, name) → resourceVersion of every workload of a kind, for the resync.

        Listed as metadata only (`PartialObjectMetadataList`: no spec, no status) and page
        by page, so that comparing versions with the watch never holds the cluster's
        workloads, all of them whole, in memory at once.
        """
        versions: dict[tuple[str, str], str] = {}
        pages = self._pages(
            kind.collection(namespace), selector=kind.selector, accept=_METADATA_LIST
        )
        async for page in pages:
            for item in page:
                meta = item.get("metadata") or {}
                where = (str(meta.get("namespace", "")), str(meta.get("name", "")))
                versions[where] = str(meta.get("resourceVersion", ""))
        return versions

    async def _pages(
        self, path: str, *, selector: str, accept: str = "application/json"
    ) -> AsyncIterator[list[JsonObject]]:
        """A listing's items, `LIST_PAGE` at a time (`limit` and `continue`, as client-go's
        pager asks), so the apiserver never builds one response of a whole cluster."""
        token = ""
        while True:
            query = [("limit", str(LIST_PAGE)), *([("continue", token)] if token else [])]
            if selector:
                query.append(("labelSelector", selector))
            listing = await self._call("GET", path, query=query, accept=accept)
            # A metadata list with nothing in it says `"items": null`.
            yield listing.get("items") or []
            token = (listing.get("metadata") or {}).get("continue") or ""
            if not token:
                return

    async def patch_workload(
        self, kind: WorkloadKind, namespace: str, name: str, patch: Sequence[Mapping[str, Any]]
    ) -> JsonObject:
        """Apply a JSON patch. A failed `test` raises `Invalid` with `patch_did_not_apply`."""
        return await self._call(
            "PATCH",
            kind.path(namespace, name),
            body=list(patch),
            content_type="application/json-patch+json",
        )

    # --- namespaces -----------------------------------------------------------

    async def read_namespace(self, name: str) -> JsonObject:
        """The Namespace object, for its annotations; `NotFound` when it is gone."""
        return await self._call("GET", f"/api/v1/namespaces/{name}")

    # --- pods -----------------------------------------------------------------

    async def list_pods(self, namespace: str, label_selector: str) -> list[JsonObject]:
        """The pods of one namespace that `label_selector` selects: a workload's pods, read
        when it is reconciled (no pod watch, no cluster-wide list: `pods: list` is all)."""
        listing = await self._call(
            "GET",
            f"/api/v1/namespaces/{namespace}/pods",
            query=[("labelSelector", label_selector)],
        )
        items: list[JsonObject] = listing.get("items", [])
        return items

    # --- events ---------------------------------------------------------------

    async def list_events(self, namespace: str) -> list[JsonObject]:
        """The core/v1 Events of one namespace (what `status` reads the last Event from)."""
        listing = await self._call("GET", f"/api/v1/namespaces/{namespace}/events")
        items: list[JsonObject] = listing.get("items") or []
        return items

    def record_event(
        self, obj: Mapping[str, Any], *, reason: str, message: str, warning: bool = False
    ) -> None:
        """Queue an Event on `obj`, sent in the background (see `events.EventRecorder`)."""
        self._recorder.record(obj, reason=reason, message=message, warning=warning)

    async def post_event(
        self, obj: Mapping[str, Any], *, reason: str, message: str, warning: bool = False
    ) -> None:
        """Post an Event on `obj` now (raises `KubeApiError`): what `revert` uses."""
        await self._recorder.post(obj, reason=reason, message=message, warning=warning)

    # --- the pull Secret ------------------------------------------------------

    async def ensure_pull_secret(
        self, namespace: str, name: str, *, registry_host: str, credentials: Credentials
    ) -> SecretOutcome:
        """Keep a dockerconfigjson Secret for the backup registry, and only for it.

        A Secret of that name that we did not create is left alone: it is the user's.
        """
        desired = _docker_config(registry_host, credentials)
        path = f"/api/v1/namespaces/{namespace}/secrets/{name}"
        try:
            current: JsonObject | None = await self._call("GET", path)
        except NotFound:
            current = None
        if current is None:
            try:
                await self._call(
                    "POST",
                    f"/api/v1/namespaces/{namespace}/secrets",
                    body=_pull_secret(name, desired),
                )
            except AlreadyExists:
                # Another worker created it for a workload in the same namespace just now.
                current = await self._call("GET", path)
            else:
                return "created"
        labels = current.get("metadata", {}).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) != COMPONENT:
            return "not-managed"
        if _decoded_config(current) == desired:
            return "unchanged"
        await self._call(
            "PATCH",
            path,
            body={"data": {".dockerconfigjson": _b64(json.dumps(desired))}},
            content_type="application/merge-patch+json",
        )
        return "updated"

    # --- the leader-election Lease ---------------------------------------------

    async def read_lease(self, namespace: str, name: str) -> JsonObject | None:
        """The Lease as stored now, or None when there is none yet."""
        try:
            return await self._call("GET", _lease_path(namespace, name))
        except NotFound:
            return None

    async def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> JsonObject:
        """Create the Lease; `AlreadyExists` when another replica was first."""
        return await self._call("POST", _lease_path(namespace), body=dict(lease))

    async def replace_lease(
        self, namespace: str, name: str, lease: Mapping[str, Any]
    ) -> JsonObject:
        """PUT the Lease; its `resourceVersion` guards it (`Conflict` if it changed)."""
        return await self._call("PUT", _lease_path(namespace, name), body=dict(lease))

    # --- what `revert` removes -------------------------------------------------

    async def list_managed_secrets(self, name: str, *, namespace: str | None) -> list[JsonObject]:
        """Our Secrets (managed-by label) called `name`, in one namespace or (None) all.

        Asked for as metadata only: the Secrets' data never reaches this process.
        """
        scope = f"/namespaces/{namespace}" if namespace else ""
        listing = await self._call(
            "GET",
            f"/api/v1{scope}/secrets",
            query=[
                ("labelSelector", f"{MANAGED_BY_LABEL}={COMPONENT}"),
                ("fieldSelector", f"metadata.name={name}"),
            ],
            accept=_METADATA_LIST,
        )
        # A metadata list with nothing in it says `"items": null`.
        items: list[JsonObject] = listing.get("items") or []
        return items

    async def delete_secret(self, namespace: str, name: str, *, resource_version: str) -> bool:
        """Delete the Secret if it is still the one we read; False when it is already gone.

        A Secret changed since (another `resourceVersion`) raises `Conflict`.
        """
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"resourceVersion": resource_version},
        }
        try:
            await self._call("DELETE", f"/api/v1/namespaces/{namespace}/secrets/{name}", body=body)
        except NotFound:
            return False
        return True

    # --- users' pull Secrets (opt-in: IMAGE_CLONER_READ_PULL_SECRETS) --------------

    async def read_object(
        self, kind: Literal["secrets", "serviceaccounts"], namespace: str, name: str
    ) -> JsonObject | None:
        """A Secret or ServiceAccount by name (`get` only, never list), or None if absent.

        Errors carry the apiserver's Status, which names the object, never its data."""
        try:
            return await self._call("GET", f"/api/v1/namespaces/{namespace}/{kind}/{name}")
        except NotFound:
            return None

    # --- plumbing -------------------------------------------------------------

    async def _call(
        self,
        method: str,
        path: str,
        *,
        body: object = None,
        content_type: str = "application/json",
        query: Sequence[tuple[str, str]] = (),
        accept: str = "application/json",
    ) -> JsonObject:
        params = [*query, *([("fieldManager", FIELD_MANAGER)] if method in _WRITES else [])]
        data = None if body is None else json.dumps(body).encode()
        for attempt in (1, 2):
            try:
                status, reason, payload = await self._send(
                    method,
                    path,
                    params=params,
                    data=data,
                    content_type=content_type,
                    accept=accept,
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as e:
                # Refused, reset, TLS trouble or no answer in time: a failed request like any
                # other (status 0), which callers retry; it must not escape them and end a task.
                reason = str(e) or type(e).__name__
                raise Unreachable(0, f"cannot reach the apiserver: {reason}") from None
            except ConfigError as e:  # the token file or plugin failed: retried like a 503
                raise Unreachable(0, f"no credentials for the apiserver: {e}") from None
            if status == 401 and attempt == 1 and self._endpoint.source.refused():
                # An expired token: read the file or run the plugin again, once (client-go).
                continue
            break
        if status >= 400:
            # The body is the apiserver's Status: it names what failed, never request data.
            raise api_error(status, payload, fallback=reason)
        result = json.loads(payload) if payload else {}
        return result if isinstance(result, dict) else {}

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Sequence[tuple[str, str]],
        data: bytes | None,
        content_type: str,
        accept: str,
    ) -> tuple[int, str, bytes]:
        headers = {"Accept": accept, "User-Agent": f"image-cloner/{__version__}"}
        if data is not None:
            headers["Content-Type"] = content_type
        if authorization := (await self._endpoint.source.identity()).header():
            headers["Authorization"] = authorization
        if self._session is None:
            # Made on first use, inside the running loop; never reads proxies from the env.
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl or True)
            )
        async with self._session.request(
            method,
            self._endpoint.server + path,
            params=params,
            data=data,
            headers=headers,
            proxy=self._endpoint.proxy_url,
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT),
        ) as response:
            return response.status, response.reason or "", await response.read()


def _lease_path(namespace: str, name: str = "") -> str:
    collection = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases"
    return f"{collection}/{name}" if name else collection


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _docker_config(registry_host: str, credentials: Credentials) -> JsonObject:
    auth = _b64(f"{credentials.username}:{credentials.password}")
    entry = {"username": credentials.username, "password": credentials.password, "auth": auth}
    return {"auths": {registry_host: entry}}


def _pull_secret(name: str, config: Mapping[str, Any]) -> JsonObject:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {MANAGED_BY_LABEL: COMPONENT}},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": _b64(json.dumps(config))},
    }


def _decoded_config(secret: Mapping[str, Any]) -> object:
    encoded = (secret.get("data") or {}).get(".dockerconfigjson")
    if not encoded:
        return None
    try:
        return json.loads(base64.b64decode(encoded))
    except ValueError:
        return None
