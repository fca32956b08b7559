"""The error boundary: aiohttp's exceptions and failed responses become one typed tree."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from image_cloner.oci.errors import (
    DigestMismatchError,
    NotFoundError,
    RegistryUnavailableError,
    mapped_errors,
)
from image_cloner.oci.options import RegistryOptions
from image_cloner.oci.retries import RetryPolicy
from image_cloner.oci.transport import Transport

URL_WITH_SECRETS = URL("https://user:pw@r.example/v2/app/blobs/sha256:1?X-Amz-Signature=s3cr3t")


def test_aiohttp_errors_become_unavailable_naming_the_request_without_secrets() -> None:
    with pytest.raises(RegistryUnavailableError) as caught, mapped_errors("GET", URL_WITH_SECRETS):
        raise aiohttp.ClientConnectionError("connection reset")
    assert str(caught.value) == (
        "GET https://r.example/v2/app/blobs/sha256:1: ClientConnectionError: connection reset"
    )


def test_a_timeout_is_unavailable_too() -> None:
    shown = r"^PUT https://r.example/v2/app/blobs/sha256:1: TimeoutError$"
    with (
        pytest.raises(RegistryUnavailableError, match=shown),
        mapped_errors("PUT", URL_WITH_SECRETS),
    ):
        raise TimeoutError


def test_our_error_behind_a_send_error_is_given_back() -> None:
    ours = DigestMismatchError("blob sha256:1 from r/app: content has digest sha256:2")
    wrapped = aiohttp.ClientConnectionError("Failed to send bytes")
    wrapped.__cause__ = ours  # what aiohttp's write_bytes does with a failing body
    with pytest.raises(DigestMismatchError) as caught, mapped_errors("PATCH", URL_WITH_SECRETS):
        raise wrapped
    assert caught.value is ours


def test_our_errors_pass_unchanged() -> None:
    ours = NotFoundError("GET x: 404")
    with pytest.raises(NotFoundError) as caught, mapped_errors("GET", URL_WITH_SECRETS):
        raise ours
    assert caught.value is ours


def test_a_response_error_is_shown_without_its_url() -> None:
    info = aiohttp.RequestInfo(URL_WITH_SECRETS, "GET", {}, URL_WITH_SECRETS)  # type: ignore[arg-type]
    with pytest.raises(RegistryUnavailableError) as caught, mapped_errors("GET", URL_WITH_SECRETS):
        raise aiohttp.TooManyRedirects(info, (), status=302, message="Found")
    assert "s3cr3t" not in str(caught.value)
    assert str(caught.value).endswith(": TooManyRedirects: 302 Found")


@pytest.fixture
async def throttling_registry() -> AsyncIterator[URL]:
    async def throttled(request: web.Request) -> web.Response:
        body = b'{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}'
        return web.Response(status=429, body=body, headers={"Retry-After": "7"})

    app = web.Application()
    app.router.add_get("/v2/app/manifests/1", throttled)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield URL(f"http://127.0.0.1:{runner.addresses[0][1]}/v2/app/manifests/1")
    finally:
        await runner.cleanup()


async def test_a_retryable_status_keeps_the_registry_code_message_and_retry_after(
    throttling_registry: URL,
) -> None:
    async with Transport(RegistryOptions(), retry=RetryPolicy(attempts=1)) as transport:
        with pytest.raises(RegistryUnavailableError) as caught:
            await transport.request("GET", throttling_registry)
    error = caught.value
    assert (error.status, error.code, error.retry_after) == (429, "TOOMANYREQUESTS", 7.0)
    assert str(error) == f"GET {throttling_registry}: 429 TOOMANYREQUESTS (slow down)"
