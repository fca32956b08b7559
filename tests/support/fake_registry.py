"""A small in-process registry for fast unit tests of the copy engine.

The integration suite proves the engine against real `docker-registry` processes; this fake
answers the same distribution API calls from dicts, in the test's own event loop, so a copy
takes milliseconds and the test can read exactly which requests arrived, in which order.
It implements what `Copier` sends: HEAD/GET/PUT manifests, HEAD/GET blobs, POST uploads
(with `mount=`), PATCH, `PUT ?digest=` and DELETE of an upload. Plain HTTP on 127.0.0.1
with an ephemeral port (a loopback host, so the client falls back from HTTPS to HTTP).

Quirk switches are keyword options; only those a test uses exist:
`corrupt`: digests whose blob is served with other bytes of the same length (a lying source);
`after_manifest_put`: called with (repository, reference) after each manifest PUT (someone
else pushing meanwhile).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from aiohttp import web

__all__ = ["FakeRegistry", "Seen", "digest"]

CONTENT_DIGEST = "Docker-Content-Digest"


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Seen:
    """One request the fake answered."""

    method: str
    path: str
    query: str = ""
    client_port: int = 0
    """The client's port: one per connection, so the distinct ones count connections."""


class FakeRegistry:
    """Use as an async context manager; `host` is `127.0.0.1:<port>`."""

    def __init__(
        self,
        *,
        corrupt: frozenset[str] = frozenset(),
        after_manifest_put: Callable[[str, str], None] | None = None,
    ) -> None:
        self.corrupt = corrupt
        self.after_manifest_put = after_manifest_put
        self.blobs: dict[tuple[str, str], bytes] = {}
        self.manifests: dict[tuple[str, str], tuple[bytes, str]] = {}
        self.uploads: dict[str, bytearray] = {}
        self.requests: list[Seen] = []
        self.host = ""
        self._runner: web.AppRunner | None = None

    async def __aenter__(self) -> Self:
        app = web.Application(middlewares=[self._record])
        uploads = "/v2/{name:.+}/blobs/uploads/"
        app.router.add_post(uploads, self._start_upload)
        app.router.add_patch(uploads + "{id}", self._patch)
        app.router.add_put(uploads + "{id}", self._commit)
        app.router.add_delete(uploads + "{id}", self._cancel)
        app.router.add_route("GET", "/v2/{name:.+}/blobs/{digest:sha256:[a-f0-9]+}", self._blob)
        app.router.add_route("HEAD", "/v2/{name:.+}/blobs/{digest:sha256:[a-f0-9]+}", self._blob)
        app.router.add_route("GET", "/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_route("HEAD", "/v2/{name:.+}/manifests/{ref}", self._manifest)
        app.router.add_put("/v2/{name:.+}/manifests/{ref}", self._put_manifest)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.host = f"127.0.0.1:{self._runner.addresses[0][1]}"
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    # --- seeding and reading back ------------------------------------------------------

    def add_blob(self, repo: str, data: bytes, *, media_type: str) -> dict[str, Any]:
        """Store a blob; its descriptor as a manifest lists it."""
        self.blobs[(repo, digest(data))] = data
        return {"mediaType": media_type, "digest": digest(data), "size": len(data)}

    def add_manifest(self, repo: str, ref: str, document: dict[str, Any]) -> dict[str, Any]:
        """Store a manifest under `ref` and its digest; its descriptor."""
        raw = json.dumps(document).encode()
        media_type = str(document["mediaType"])
        self.manifests[(repo, ref)] = self.manifests[(repo, digest(raw))] = (raw, media_type)
        return {"mediaType": media_type, "digest": digest(raw), "size": len(raw)}

    def seen(self, method: str, fragment: str = "") -> list[Seen]:
        return [r for r in self.requests if r.method == method and fragment in r.path + r.query]

    # --- the API -------------------------------------------------------------------------

    @web.middleware
    async def _record(self, request: web.Request, handler: Any) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        port = peer[1] if peer else 0
        self.requests.append(Seen(request.method, request.path, request.query_string, port))
        response: web.StreamResponse = await handler(request)
        return response

    async def _manifest(self, request: web.Request) -> web.Response:
        found = self.manifests.get((request.match_info["name"], request.match_info["ref"]))
        if found is None:
            return _error(404, "MANIFEST_UNKNOWN")
        raw, media_type = found
        headers = {CONTENT_DIGEST: digest(raw), "Content-Type": media_type}
        return web.Response(body=raw if request.method == "GET" else None, headers=headers)

    async def _put_manifest(self, request: web.Request) -> web.Response:
        name, raw = request.match_info["name"], await request.read()
        media_type = request.headers.get("Content-Type", "")
        self.manifests[(name, request.match_info["ref"])] = (raw, media_type)
        self.manifests[(name, digest(raw))] = (raw, media_type)
        if self.after_manifest_put is not None:
            self.after_manifest_put(name, request.match_info["ref"])
        return web.Response(status=201, headers={CONTENT_DIGEST: digest(raw)})

    async def _blob(self, request: web.Request) -> web.Response:
        wanted = request.match_info["digest"]
        data = self.blobs.get((request.match_info["name"], wanted))
        if data is None:
            return _error(404, "BLOB_UNKNOWN")
        if wanted in self.corrupt:
            data = bytes(len(data))
        if request.method == "HEAD":
            return web.Response(headers={"Content-Length": str(len(data))})
        return web.Response(body=data, content_type="application/octet-stream")

    async def _start_upload(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        mount, source = request.query.get("mount"), request.query.get("from")
        if mount and source and (source, mount) in self.blobs:
            self.blobs[(name, mount)] = self.blobs[(source, mount)]
            return web.Response(status=201, headers={CONTENT_DIGEST: mount})
        session = uuid.uuid4().hex
        self.uploads[session] = bytearray()
        return web.Response(status=202, headers={"Location": self._location(name, session)})

    async def _patch(self, request: web.Request) -> web.Response:
        session = request.match_info["id"]
        if session not in self.uploads:
            return _error(404, "BLOB_UPLOAD_UNKNOWN")
        self.uploads[session] += await request.read()
        location = self._location(request.match_info["name"], session)
        return web.Response(status=202, headers={"Location": location})

    async def _commit(self, request: web.Request) -> web.Response:
        data = self.uploads.pop(request.match_info["id"], None)
        if data is None:
            return _error(404, "BLOB_UPLOAD_UNKNOWN")
        data += await request.read()
        claimed = request.query.get("digest", "")
        if digest(bytes(data)) != claimed:
            return _error(400, "DIGEST_INVALID")
        self.blobs[(request.match_info["name"], claimed)] = bytes(data)
        return web.Response(status=201, headers={CONTENT_DIGEST: claimed})

    async def _cancel(self, request: web.Request) -> web.Response:
        found = self.uploads.pop(request.match_info["id"], None)
        return web.Response(status=204 if found is not None else 404)

    @staticmethod
    def _location(name: str, session: str) -> str:
        return f"/v2/{name}/blobs/uploads/{session}"


def _error(status: int, code: str) -> web.Response:
    body = json.dumps({"errors": [{"code": code, "message": code.lower()}]})
    return web.Response(status=status, text=body, content_type="application/json")
