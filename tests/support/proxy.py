"""A reverse proxy in front of a real registry that counts, lies and fails on demand.

Some behaviours can only be provoked from the outside: "one request when already backed up"
needs a request count, "a registry that lies about digests" needs a blob served with flipped
bytes, and retry logic needs 429 / 503 answers. The proxy forwards everything else unchanged
(streaming both ways, all headers incl. WWW-Authenticate; Location rewritten to itself).

It runs as a subprocess (`python -m tests.support.proxy ...`), outside the tests' event loops
and on its own CPU; `RegistryProxy` starts it and drives it through `/_proxy/*` endpoints.
"""

from __future__ import annotations

import argparse
import json
import re
import ssl
import sys
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from tests.support.pki import TestPKI
from tests.support.processes import ServiceProcess, free_port
from tests.support.quirks import (
    DOCKER_HUB_RATE_LIMIT,
    Quirks,
    QuirkState,
    apply_quirks,
    rewrite_status,
)
from tests.support.registries import RegistryEndpoint

__all__ = ["DOCKER_HUB_RATE_LIMIT", "ProxiedRequest", "ProxyFactory", "RegistryProxy", "main"]

CHUNK = 256 * 1024
HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection",
        "Keep-Alive",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "TE",
        "Trailer",
        "Transfer-Encoding",
        "Upgrade",
        "Host",
    )
)
BLOB_PATH = re.compile(r"^/v2/.+/blobs/(?P<digest>[a-z0-9]+:[a-f0-9]+)$")
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ProxiedRequest:
    method: str
    path: str
    """Path without the query string."""
    status: int
    query: str = ""
    ranged: bool = False
    """The request carried `Content-Range` (a chunk of a chunked upload)."""


@dataclass
class _Failure:
    remaining: int
    status: int
    retry_after: int | None
    path: re.Pattern[str] | None
    message: str


@dataclass
class _State:
    upstream: str
    session: aiohttp.ClientSession | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    corrupt: set[str] = field(default_factory=set)
    failure: _Failure | None = None
    quirks: QuirkState = field(default_factory=QuirkState)


STATE = web.AppKey("state", _State)


def build_app(upstream: str, *, ca_file: Path | None) -> web.Application:
    app = web.Application(client_max_size=0)
    state = _State(upstream=upstream.rstrip("/"))
    app[STATE] = state

    async def session_context(app: web.Application) -> Any:
        context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
        connector = aiohttp.TCPConnector(ssl=context if context else False)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with aiohttp.ClientSession(
            connector=connector, timeout=timeout, auto_decompress=False
        ) as session:
            state.session = session
            yield

    app.cleanup_ctx.append(session_context)
    app.router.add_get("/_proxy/requests", _requests)
    app.router.add_post("/_proxy/reset", _reset)
    app.router.add_post("/_proxy/corrupt", _corrupt)
    app.router.add_post("/_proxy/fail", _fail)
    app.router.add_post("/_proxy/quirks", _set_quirks)
    app.router.add_route("*", "/{tail:.*}", _forward)
    return app


async def _forward(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    entry: dict[str, Any] = {
        "method": request.method,
        "path": request.path,
        "status": 0,
        "query": request.query_string,
        "ranged": "Content-Range" in request.headers,
    }
    state.log.append(entry)
    failure = state.failure
    if failure and failure.remaining > 0 and _matches(failure, request.path):
        failure.remaining -= 1
        entry["status"] = failure.status
        return _failure_response(failure)

    async def forward(request: web.Request, lose: bool) -> web.StreamResponse:
        return await _proxy(state, request, entry, lose=lose)

    try:
        response = await apply_quirks(state.quirks, request, forward)
        entry["status"] = entry["status"] or response.status
        return response
    except aiohttp.ClientConnectionError as error:
        entry["status"] = 502
        return web.json_response(
            {"errors": [{"code": "UNAVAILABLE", "message": str(error)}]}, status=502
        )


async def _proxy(
    state: _State, request: web.Request, entry: dict[str, Any], *, lose: bool = False
) -> web.StreamResponse:
    assert state.session is not None
    # A multidict, not a dict: clients send one Accept header per media type.
    headers = CIMultiDict((k, v) for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP)
    body = request.content if request.body_exists else None
    async with state.session.request(
        request.method,
        f"{state.upstream}{request.path_qs}",
        headers=headers,
        data=body,
        allow_redirects=False,
        skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
    ) as upstream:
        entry["status"] = upstream.status
        if lose:
            await upstream.read()
            assert request.transport is not None
            request.transport.abort()  # done upstream; the client never hears of it
            return web.Response(status=upstream.status)
        status = rewrite_status(state.quirks.quirks, request.method, request.path, upstream.status)
        entry["status"] = status
        response = web.StreamResponse(status=status)
        for name, value in upstream.headers.items():
            if name.lower() not in HOP_BY_HOP:
                response.headers.add(name, _rewrite(name, value, state.upstream, request))
        await response.prepare(request)
        flip = request.method == "GET" and upstream.status == 200 and _corrupted(state, request)
        async for chunk in upstream.content.iter_chunked(CHUNK):
            if flip and chunk:
                # Same length, different bytes: only a digest check can notice.
                await response.write(bytes([chunk[0] ^ 0xFF]) + chunk[1:])
                flip = False
            else:
                await response.write(chunk)
        await response.write_eof()
        return response


def _rewrite(name: str, value: str, upstream: str, request: web.Request) -> str:
    """Point absolute upload Locations at the proxy, so the client keeps talking to us."""
    if name.lower() == "location" and value.startswith(upstream):
        return f"{request.scheme}://{request.host}{value[len(upstream) :]}"
    return value


def _matches(failure: _Failure, path: str) -> bool:
    return failure.path is None or failure.path.search(path) is not None


def _corrupted(state: _State, request: web.Request) -> bool:
    match = BLOB_PATH.match(request.path)
    return match is not None and match["digest"] in state.corrupt


def _failure_response(failure: _Failure) -> web.Response:
    code = "TOOMANYREQUESTS" if failure.status == 429 else "UNAVAILABLE"
    headers = {} if failure.retry_after is None else {"Retry-After": str(failure.retry_after)}
    return web.json_response(
        {"errors": [{"code": code, "message": failure.message}]},
        status=failure.status,
        headers=headers,
    )


async def _requests(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATE].log)


async def _reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.log.clear()
    state.corrupt.clear()
    state.failure = None
    state.quirks = QuirkState()
    return web.json_response({})


async def _corrupt(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[STATE].corrupt.add(body["digest"])
    return web.json_response({})


async def _fail(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[STATE].failure = _Failure(
        remaining=int(body["count"]),
        status=int(body["status"]),
        retry_after=body.get("retry_after"),
        path=re.compile(body["path"]) if body.get("path") else None,
        message=body.get("message") or "injected by the test proxy",
    )
    return web.json_response({})


async def _set_quirks(request: web.Request) -> web.Response:
    request.app[STATE].quirks = QuirkState(Quirks.from_json(await request.json()))
    return web.json_response({})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="reverse proxy for registry tests")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--ca-file", type=Path)
    parser.add_argument("--tls-cert", type=Path)
    parser.add_argument("--tls-key", type=Path)
    args = parser.parse_args(argv)
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    app = build_app(args.upstream, ca_file=args.ca_file)
    web.run_app(app, host="127.0.0.1", port=args.port, ssl_context=tls, print=None)


class RegistryProxy(RegistryEndpoint, ServiceProcess):
    """The proxy as a registry endpoint: same scheme, credentials and CA as its upstream.

    TLS upstreams get a TLS proxy (server certificate from the test PKI), so clients configured
    for the real registry work unchanged against the proxy.
    """

    def __init__(self, workdir: Path, upstream: RegistryEndpoint, *, pki: TestPKI) -> None:
        self.workdir = workdir
        self.upstream = upstream
        self.pki = pki
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self.scheme = upstream.scheme
        self.username = upstream.username
        self.password = upstream.password
        self.ca_file = upstream.ca_file
        self.cert_dir = upstream.cert_dir
        self.log_file = workdir / "proxy.log"
        workdir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        if self.running:
            return
        command = [
            sys.executable,
            "-m",
            "tests.support.proxy",
            f"--port={self.port}",
            f"--upstream={self.upstream.url}",
        ]
        if self.upstream.ca_file is not None:
            command.append(f"--ca-file={self.upstream.ca_file}")
        if self.scheme == "https":
            command += [f"--tls-cert={self.pki.server_cert}", f"--tls-key={self.pki.server_key}"]
        self._launch(
            command, ready_url=f"{self.url}/_proxy/requests", ca_file=self.ca_file, cwd=REPO_ROOT
        )
        self.reset()

    def stop(self) -> None:
        self._terminate()

    def requests(self) -> list[ProxiedRequest]:
        """Every request forwarded or answered since the last `reset()`, in order."""
        return [ProxiedRequest(**entry) for entry in self._control("GET", "/_proxy/requests")]

    def count(self, method: str | None = None, path: str | None = None) -> int:
        """How many requests matched `method` (exact) and `path` (regex, searched)."""
        return sum(
            1
            for r in self.requests()
            if (method is None or r.method == method)
            and (path is None or re.search(path, r.path) is not None)
        )

    def reset(self) -> None:
        """Forget recorded requests, corrupted digests and pending failures."""
        self._control("POST", "/_proxy/reset", {})

    def corrupt_blob(self, digest: str) -> None:
        """Serve this blob with its first byte flipped (same length) from now on."""
        self._control("POST", "/_proxy/corrupt", {"digest": digest})

    def fail_next(
        self,
        count: int,
        *,
        status: int = 503,
        retry_after: int | None = None,
        path: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next `count` requests (whose path matches regex `path`) with `status`
        and an error body with `message` (e.g. `DOCKER_HUB_RATE_LIMIT`)."""
        body = {
            "count": count,
            "status": status,
            "retry_after": retry_after,
            "path": path,
            "message": message,
        }
        self._control("POST", "/_proxy/fail", body)

    def set_quirks(self, **switches: Any) -> None:
        """Switch on quirks (`tests.support.quirks.Quirks` fields); `reset()` turns all off."""
        self._control("POST", "/_proxy/quirks", switches)

    def _control(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        with urllib.request.urlopen(request, context=self.ssl_context(), timeout=10) as response:
            return json.load(response)

    def __repr__(self) -> str:
        return f"<RegistryProxy {self.url} -> {self.upstream.url}>"


ProxyFactory = Callable[[RegistryEndpoint], RegistryProxy]
"""What the `proxy_factory` fixture is: upstream endpoint → started proxy."""


if __name__ == "__main__":
    main()
