"""Registry quirks the test proxy can put in front of a real registry, each one a switch.

Each switch reproduces how some registry people use answers differently from distribution
(docs/copy.md has the table): ECR's PATCH 201, a mount refused with 405, a PATCH refused
without `Content-Range`, a body limit (413), an upload session that expires, a commit whose
answer is lost, Docker Hub's 429. `Quirks` is the switch board (set through
`POST /_proxy/quirks`); `QuirkState` is what the proxy remembers while applying them.
Refused requests have their body read first, so the client sees the answer, not a reset.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import Any

from aiohttp import web

__all__ = ["DOCKER_HUB_RATE_LIMIT", "QuirkState", "Quirks", "apply_quirks"]

DOCKER_HUB_RATE_LIMIT = (
    "You have reached your pull rate limit. You may increase the limit by authenticating "
    "and upgrading: https://www.docker.com/increase-rate-limit"
)
UPLOAD_PATH = re.compile(r"/blobs/uploads/(?P<id>[^/]+)$")

Forward = Callable[[web.Request, bool], Awaitable[web.StreamResponse]]
"""Forwards a request upstream; with `True` the answer is dropped (the connection aborted)."""


@dataclass
class Quirks:
    """Every switch off by default; `from_json` takes any subset."""

    patch_status: int | None = None
    """Answer a successful PATCH with this status instead (ECR: 201)."""
    manifest_put_status: int | None = None
    """Answer a successful manifest PUT with this status instead (202)."""
    mount_status: int | None = None
    """Answer every `POST ?mount=` with this status and an `UNSUPPORTED` error (405)."""
    require_content_range: bool = False
    """Refuse a PATCH without `Content-Range` (400), as registries without streamed PATCH do."""
    max_body: int | None = None
    """Refuse a PATCH or PUT whose body is larger than this with 413."""
    expire_sessions: int = 0
    """The next N upload sessions expire after their first PATCH (404 BLOB_UPLOAD_UNKNOWN)."""
    lose_commits: int = 0
    """The next N `PUT ?digest=` reach the registry, then the connection drops unanswered."""

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Quirks:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in document.items() if k in names})


@dataclass
class QuirkState:
    quirks: Quirks = field(default_factory=Quirks)
    expired: set[str] = field(default_factory=set)
    """Upload sessions that got their first PATCH while `expire_sessions` was on."""


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"errors": [{"code": code, "message": message}]}, status=status)


async def _drained(request: web.Request, response: web.Response) -> web.Response:
    await request.read()  # the client finishes sending, then reads our answer
    return response


async def apply_quirks(
    state: QuirkState, request: web.Request, forward: Forward
) -> web.StreamResponse:
    """Answer `request` as the switched-on quirks say, forwarding what they leave alone."""
    quirks = state.quirks
    method, path = request.method, request.path
    upload = UPLOAD_PATH.search(path)
    if method == "POST" and "mount" in request.query and quirks.mount_status is not None:
        return _error(quirks.mount_status, "UNSUPPORTED", "cross-repository mount not supported")
    too_large = quirks.max_body is not None and method in ("PATCH", "PUT")
    if too_large and int(request.headers.get("Content-Length", "0")) > (quirks.max_body or 0):
        return await _drained(request, _error(413, "SIZE_INVALID", "request entity too large"))
    if (
        method == "PATCH"
        and quirks.require_content_range
        and "Content-Range" not in request.headers
    ):
        refusal = _error(400, "BLOB_UPLOAD_INVALID", "Content-Range header required")
        return await _drained(request, refusal)
    if upload is not None and upload["id"] in state.expired:
        expired = _error(404, "BLOB_UPLOAD_UNKNOWN", "blob upload unknown to registry")
        return await _drained(request, expired)
    commit = upload is not None and method == "PUT" and "digest" in request.query
    lose = commit and quirks.lose_commits > 0
    if lose:
        quirks.lose_commits -= 1
    response = await forward(request, lose)
    patched = upload is not None and method == "PATCH" and response.status < 300
    if patched and upload is not None and quirks.expire_sessions > 0:
        quirks.expire_sessions -= 1
        state.expired.add(upload["id"])
    return response


def rewrite_status(quirks: Quirks, method: str, path: str, status: int) -> int:
    """The status to send for an upstream answer (ECR's 201 for a PATCH, 202 for a PUT)."""
    if method == "PATCH" and status == 202 and quirks.patch_status is not None:
        return quirks.patch_status
    if method == "PUT" and "/manifests/" in path and status == 201 and quirks.manifest_put_status:
        return quirks.manifest_put_status
    return status
