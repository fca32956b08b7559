"""One exception tree for everything that can go wrong talking to a registry.

Callers (the CLI, the controller) need to tell "the registry said no" from "the registry
is down" from "the registry lied", and they put the message in front of a user: in a
terminal, a log line, a Kubernetes Event. So every error carries a short message that
names the request and the registry's own error code, and never a credential or token:
URLs are shown without user-info or query string, and bodies are never echoed.

    RegistryError                    anything a registry interaction can raise
    ├── AuthenticationError          401/403 after we authenticated (or could not)
    ├── NotFoundError                404: no such repository, manifest or blob
    ├── DigestMismatchError          content does not hash to the digest it was asked for
    ├── RegistryUnavailableError     connection failures, 429 and 5xx once retries ran out
    ├── InvalidManifestError         a manifest we cannot parse, or one the registry rejects
    └── UnsupportedMediaTypeError    a manifest kind we do not copy (Docker schema 1, ...)

Two functions are the boundary between aiohttp and this tree, as httpx's
`map_httpcore_exceptions` is for httpcore, so every message has one shape, "METHOD url: reason":

- `check_response(resp, *ok)`: the one path from a failed response to its typed error,
  keeping the registry's `{"errors": [{"code", "message"}]}` and, for 429/5xx, `Retry-After`.
- `mapped_errors(method, url)`: aiohttp's exceptions become ours. aiohttp reports an
  exception raised by a streamed request body (a blob whose digest does not match) as a
  generic send error caused by it; the boundary gives back that cause, our own error.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import aiohttp

if TYPE_CHECKING:
    from aiohttp import ClientResponse
    from yarl import URL

__all__ = [
    "AuthenticationError",
    "DigestMismatchError",
    "InvalidManifestError",
    "NotFoundError",
    "RegistryError",
    "RegistryUnavailableError",
    "UnsupportedMediaTypeError",
    "check_response",
    "describe_url",
    "error_for_status",
    "mapped_errors",
    "parse_retry_after",
    "read_body",
]

ERROR_BODY_LIMIT = 64 * 1024
"""Error bodies are read for their error codes; a registry may send HTML pages, so cap it."""


class RegistryError(Exception):
    """Base of every registry failure; `str()` is one line fit for a user."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        """HTTP status of the response that failed, if there was one."""
        self.code = code
        """The registry's error code (`MANIFEST_UNKNOWN`, `DENIED`, ...), if it sent one."""

    def __str__(self) -> str:
        return self.message


class AuthenticationError(RegistryError):
    """The registry refused our credentials (or anonymous access) for this request."""


class NotFoundError(RegistryError):
    """The repository, manifest or blob does not exist."""


class DigestMismatchError(RegistryError):
    """Received content does not match the digest (or size) it was requested by."""


class RegistryUnavailableError(RegistryError):
    """The registry could not be reached or kept failing (429/5xx) after our retries."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
        authority: str | None = None,
    ):
        super().__init__(message, status=status, code=code)
        self.retry_after = retry_after
        """Seconds the registry asked us to wait (`Retry-After`), if it said."""
        self.authority = authority
        """The host that failed (`host:port`), when known: what a circuit breaker counts."""


class InvalidManifestError(RegistryError):
    """A manifest is malformed, or the registry rejected one we pushed."""


class UnsupportedMediaTypeError(RegistryError):
    """A manifest media type this tool does not copy."""


def describe_url(url: URL) -> str:
    """The URL without user-info, query or fragment: safe to show.

    Upload locations carry signed state and token realms carry scopes in their query
    strings; neither helps a reader and either could be sensitive.
    """
    return str(url.with_user(None).with_query(None).with_fragment(None))


async def read_body(resp: ClientResponse, limit: int) -> bytes:
    """The body up to EOF, but never more than `limit + 1` bytes: callers detect overflow."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        chunk = await resp.content.read(limit + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _parse_error_body(body: bytes) -> tuple[str | None, str | None]:
    """The first (code, message) of a distribution error body, if it is one."""
    try:
        errors = json.loads(body)["errors"]
        first = errors[0]
        code = str(first.get("code") or "") or None
        message = str(first.get("message") or "") or None
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None, None
    return code, message


def error_for_status(
    what: str,
    status: int,
    *,
    code: str | None = None,
    message: str | None = None,
    retry_after: float | None = None,
    authority: str | None = None,
) -> RegistryError:
    """The typed error for a failed response; `what` names the request ("GET https://...")."""
    reason = " ".join(part for part in (str(status), code, message and f"({message})") if part)
    text = f"{what}: {reason}"
    if status in (401, 403):
        text = f"{text}: credentials missing or refused"
        return AuthenticationError(text, status=status, code=code)
    if status == 404:
        return NotFoundError(text, status=status, code=code)
    if status == 429 or status >= 500 or status == 408:
        return RegistryUnavailableError(
            text, status=status, code=code, retry_after=retry_after, authority=authority
        )
    if code in ("MANIFEST_INVALID", "MANIFEST_BLOB_UNKNOWN", "BLOB_UNKNOWN", "TAG_INVALID"):
        return InvalidManifestError(text, status=status, code=code)
    if code == "DIGEST_INVALID":
        return DigestMismatchError(text, status=status, code=code)
    if status == 415:
        return UnsupportedMediaTypeError(text, status=status, code=code)
    return RegistryError(text, status=status, code=code)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


async def check_response(resp: ClientResponse, *ok: int) -> None:
    """Raise the matching `RegistryError` unless `resp.status` is one of `ok`.

    The response is released when it fails; on success it is left for the caller to read.
    """
    if resp.status in ok:
        return
    try:
        body = await read_body(resp, ERROR_BODY_LIMIT) if resp.method != "HEAD" else b""
    except Exception:  # the status alone is enough to report a failure
        body = b""
    finally:
        resp.release()
    code, message = _parse_error_body(body)
    raise error_for_status(
        f"{resp.method} {describe_url(resp.url)}",
        resp.status,
        code=code,
        message=message,
        retry_after=parse_retry_after(resp.headers.get("Retry-After")),
        authority=resp.url.raw_authority,
    )


@contextmanager
def mapped_errors(method: str, url: URL) -> Iterator[None]:
    """Within this block, aiohttp's exceptions (and timeouts) are raised as `RegistryError`s
    naming the request; our own errors pass unchanged."""
    try:
        yield
    except RegistryError:
        raise
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise _mapped(method, url, exc) from None


def _mapped(method: str, url: URL, exc: BaseException) -> RegistryError:
    if (ours := _our_cause(exc)) is not None:
        return ours
    what = f"{method} {describe_url(url)}"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return RegistryError(
            f"{what}: TLS certificate not trusted ({exc.certificate_error}); "
            "give the registry's CA file, or mark the host insecure"
        )
    authority = url.raw_authority
    if isinstance(exc, aiohttp.ClientConnectorSSLError):
        return RegistryUnavailableError(f"{what}: TLS handshake failed", authority=authority)
    return RegistryUnavailableError(f"{what}: {_reason(exc)}", authority=authority)


def _our_cause(exc: BaseException) -> RegistryError | None:
    """Our own error behind an aiohttp one: a streamed request body that failed.

    aiohttp's `ClientRequest.write_bytes` raises what a body raised as the `__cause__` of
    a `ClientConnectionError`. Only causes are followed: a `__context__` is whatever was
    being handled at the time, not necessarily why this request failed.
    """
    cause, seen = exc.__cause__, {id(exc)}
    while cause is not None and id(cause) not in seen:  # a hand-made cycle must not hang us
        if isinstance(cause, RegistryError):
            return cause
        seen.add(id(cause))
        cause = cause.__cause__
    return None


def _reason(exc: BaseException) -> str:
    """The exception as "Type: text", leaving out what may hold a URL with a query string
    (a redirect to storage carries a signed one)."""
    name = type(exc).__name__
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"{name}: {exc.status} {exc.message}".rstrip()
    if isinstance(exc, aiohttp.InvalidURL) or not str(exc):
        return name
    return f"{name}: {exc}"
