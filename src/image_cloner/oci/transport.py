"""HTTP to registries: one aiohttp session, TLS trust, plain-HTTP fallback, retries.

Everything about *how* bytes reach a registry lives here, so the client above speaks only
in registry terms. Decisions (see docs/copy.md):

- TLS is verified against the system CAs plus `RegistryOptions.ca_file`.
- Loopback hosts and `insecure_hosts` may use plain HTTP. There is no separate ping: the
  first request to such a host goes out over HTTPS, and if the server does not speak TLS
  it is resent over HTTP; the answer is cached for the process. A certificate that fails
  verification is an error for loopback hosts (pass a CA file), while `insecure_hosts`
  skip verification, as Docker's insecure registries do.
- Retries are data (`oci.retries.RetryPolicy`): 408/429/5xx and connection failures are
  retried with backoff, honouring `Retry-After`, from one budget per unit of work (a blob
  transfer retried as a whole does not multiply with its requests' retries), and a host that
  keeps failing has its circuit opened. Streamed uploads cannot be replayed, so the caller
  retries those as a whole, inside `with_retries`.

How many transfers run at once is the copy engine's business (`oci.slots`), not this one's;
the connections to one host are bounded to what that many transfers need
(`CONNECTIONS_PER_TRANSFER`), so they are reused rather than opened for each request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from functools import partial
from types import TracebackType
from typing import Self, TypeVar

import aiohttp
from aiohttp import ClientMiddlewareType, ClientResponse, hdrs
from multidict import CIMultiDictProxy
from yarl import URL

from image_cloner.oci.errors import (
    RegistryError,
    RegistryUnavailableError,
    check_response,
    describe_url,
    mapped_errors,
    read_body,
)
from image_cloner.oci.observing import observing
from image_cloner.oci.options import RegistryOptions
from image_cloner.oci.references import InvalidReference, Registry
from image_cloner.oci.retries import CircuitBreaker, RetryPolicy, current_budget

__all__ = ["Response", "Transport"]

T = TypeVar("T")

CONNECT_TIMEOUT = 30.0
READ_TIMEOUT = 300.0
"""Seconds without a byte before a read fails; registries may hash a large blob before answering."""
MAX_BODY = 4 * 1024 * 1024
STREAM_BUFFER = 1024 * 1024
CONNECTIONS_PER_TRANSFER = 2
"""A blob transfer between two repositories of one host holds two connections to it (GET
and PATCH). Connections per host are bounded by `max_concurrent_transfers` times this, plus
one: every transfer can then hold both, and a check still finds a connection, so a transfer
waiting for its second never waits for another transfer to end. Unbounded, a copy's first
requests (a HEAD for each blob of each platform, all at once) each opened a connection with
its own TLS handshake: 18 for a 2 x 8-layer image, where 9 are reused."""
"""Read buffer of streamed blob downloads: big enough for throughput, small enough to stay flat."""


@dataclass(frozen=True)
class Response:
    """A finished response with its (small) body read."""

    status: int
    headers: CIMultiDictProxy[str]
    url: URL
    body: bytes = field(repr=False)


def ssl_context(options: RegistryOptions) -> ssl.SSLContext:
    """The system's trust store plus the configured CA bundle."""
    context = ssl.create_default_context()
    if options.ca_file is not None:
        try:
            context.load_verify_locations(cafile=str(options.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load CA file {options.ca_file}: {exc}") from None
    return context


def unverified_context() -> ssl.SSLContext:
    """TLS that checks no certificate, for `insecure_hosts` (Docker's insecure registries):
    no trust store to load."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class Transport:
    """The process's connection to registries. Use as an async context manager."""

    def __init__(
        self,
        options: RegistryOptions,
        *,
        retry: RetryPolicy | None = None,
        middlewares: Sequence[ClientMiddlewareType] = (),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.options = options
        self.retry = retry or RetryPolicy()
        self.breaker = CircuitBreaker(self.retry)
        # Innermost, so it sees each request that really goes out (`oci.observing`).
        observer = (
            () if options.request_listener is None else (observing(options.request_listener),)
        )
        self._middlewares = (*middlewares, *observer)
        self._sleep = sleep
        # Our own contexts on every request, never aiohttp's defaults, which `copy` imports
        # without their trust store (`aiohttp_loading`). The unverified one is made when an
        # insecure host is first met.
        self._verified = ssl_context(options)
        self._unverified: ssl.SSLContext | None = None
        self.connections_per_host = CONNECTIONS_PER_TRANSFER * options.max_concurrent_transfers + 1
        self._schemes: dict[str, str] = {}
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Self:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=self._verified, limit_per_host=self.connections_per_host
            ),
            timeout=aiohttp.ClientTimeout(sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT),
            middlewares=self._middlewares,
            auto_decompress=False,
        )
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Transport used outside `async with`")
        return self._session

    # --- where requests go -------------------------------------------------------------

    def plain_http_allowed(self, authority: str) -> bool:
        if authority in self.options.insecure_hosts:
            return True
        try:
            return Registry(authority).is_loopback
        except InvalidReference:
            return False

    def url(self, authority: str, path: str) -> URL:
        """`https://authority/path`, or `http://` once the host turned out to speak plain HTTP."""
        scheme = self._schemes.get(authority, "https")
        return URL.build(scheme=scheme, authority=authority, path=path, encoded=True)

    def _tls(self, authority: str) -> ssl.SSLContext:
        """The TLS context for `authority`: verified, unless it is an insecure host."""
        if authority not in self.options.insecure_hosts:
            return self._verified
        if self._unverified is None:
            self._unverified = unverified_context()
        return self._unverified

    # --- requests --------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: URL,
        *,
        ok: tuple[int, ...] = (200,),
        headers: dict[str, str] | None = None,
        data: bytes | None = None,
        max_body: int = MAX_BODY,
        retry: bool = True,
    ) -> Response:
        """Send (with retries unless `retry=False`); read a body of at most `max_body` bytes.

        Raises `RegistryError`.
        """

        async def once() -> Response:
            async with self._checked(method, url, ok=ok, headers=headers, data=data) as resp:
                body = b""
                if method != hdrs.METH_HEAD:
                    body = await read_body(resp, max_body)
                    if len(body) > max_body:
                        raise RegistryError(
                            f"{method} {describe_url(url)}: response larger than {max_body} bytes"
                        )
                return Response(resp.status, resp.headers, resp.url, body)

        return await self.with_retries(once) if retry else await once()

    @asynccontextmanager
    async def stream(
        self,
        method: str,
        url: URL,
        *,
        ok: tuple[int, ...] = (200,),
        headers: dict[str, str],
        retry: bool = True,
    ) -> AsyncIterator[ClientResponse]:
        """A response whose body the caller streams; retried until its headers arrive.

        Reading the body is the caller's; `mapped_errors` is its error boundary."""

        async def once() -> ClientResponse:
            with self._watched(url.raw_authority), mapped_errors(method, url):
                resp = await self._send(method, url, headers=headers, data=None)
                await check_response(resp, *ok)
                return resp

        resp = await self.with_retries(once) if retry else await once()
        try:
            yield resp
        finally:
            resp.release()

    async def send_stream(
        self,
        method: str,
        url: URL,
        body: AsyncIterable[bytes],
        *,
        ok: tuple[int, ...],
        headers: dict[str, str],
    ) -> Response:
        """Send a streamed body once (it cannot be replayed); the caller retries as a whole.

        A `RegistryError` the body raises (say, a digest mismatch) is raised as it is."""
        async with self._checked(method, url, ok=ok, headers=headers, data=body) as resp:
            return Response(resp.status, resp.headers, resp.url, await read_body(resp, MAX_BODY))

    async def with_retries(self, once: Callable[[], Awaitable[T]]) -> T:
        """Run `once` until it succeeds or the retry budget is spent.

        Inside `retries.shared_budget` (a blob transfer), the budget is the one shared by
        every loop in that unit of work; elsewhere each call has its own."""
        budget = current_budget(self.retry)
        while True:
            try:
                return await once()
            except RegistryUnavailableError as exc:
                if (delay := budget.spend(exc)) is None:
                    raise
                await self._sleep(delay)

    @contextmanager
    def _watched(self, authority: str) -> Iterator[None]:
        """Feed the host's circuit breaker: fail at once while it is open, count the rest."""
        self.breaker.check(authority)
        try:
            yield
        except RegistryUnavailableError as exc:
            # Only the host's own failures: a streamed body's error names its source host.
            if exc.authority == authority:
                self.breaker.failed(authority, exc)
            raise
        except RegistryError:
            self.breaker.succeeded(authority)  # an answer, if a refusal: the host is up
            raise
        self.breaker.succeeded(authority)

    @asynccontextmanager
    async def _checked(
        self,
        method: str,
        url: URL,
        *,
        ok: tuple[int, ...],
        headers: dict[str, str] | None,
        data: bytes | AsyncIterable[bytes] | None,
    ) -> AsyncIterator[ClientResponse]:
        """A response whose status is one of `ok`, inside the error boundary."""
        with self._watched(url.raw_authority), mapped_errors(method, url):
            resp = await self._send(method, url, headers=headers, data=data)
            try:
                await check_response(resp, *ok)
                yield resp
            finally:
                resp.release()

    async def _send(
        self,
        method: str,
        url: URL,
        *,
        headers: dict[str, str] | None,
        data: bytes | AsyncIterable[bytes] | None,
    ) -> ClientResponse:
        authority = url.raw_authority
        if self._schemes.get(authority) == "http" and url.scheme == "https":
            url = url.with_scheme("http")  # built (or retried) before we learnt it speaks HTTP
        undecided = authority not in self._schemes and url.scheme == "https"
        send = partial(
            self.session.request,
            method,
            headers=headers,
            data=data,
            ssl=self._tls(authority),
            read_bufsize=STREAM_BUFFER,
        )
        try:
            resp = await send(url)
        except aiohttp.ClientConnectorSSLError:
            if not (undecided and self.plain_http_allowed(authority)):
                raise
            # The host does not speak TLS: it is a plain-HTTP registry on loopback or an
            # insecure host. Remember that, and send the same request over HTTP.
            self._schemes[authority] = "http"
            url = url.with_scheme("http")
            with mapped_errors(method, url):  # a failure names the URL really tried
                resp = await send(url)
        if undecided:
            self._schemes.setdefault(authority, url.scheme)
        return resp
