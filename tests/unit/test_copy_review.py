"""Review findings in the copy engine: single-flight after cancellation, token realm hosts."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from aiohttp import ClientRequest

from image_cloner.oci.auth import Challenge, RegistryAuth
from image_cloner.oci.copying import _SingleFlight
from image_cloner.oci.errors import AuthenticationError
from image_cloner.oci.options import Credentials


async def _winding_down(started: asyncio.Event, cleaned: list[str]) -> str:
    """Work that, once cancelled, needs a moment to clean up (DELETE an upload session)."""
    started.set()
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        await asyncio.sleep(0.05)
        cleaned.append("done")
        raise
    return "first"


async def test_a_new_caller_does_not_join_work_that_is_being_cancelled() -> None:
    flights: _SingleFlight[str] = _SingleFlight()
    started, cleaned = asyncio.Event(), list[str]()
    first = asyncio.create_task(flights.run("blob", lambda: _winding_down(started, cleaned)))
    await started.wait()
    first.cancel()  # its only caller gave up: the work is cancelled and cleans up
    with pytest.raises(asyncio.CancelledError):
        await first

    async def again() -> str:
        return "second"

    # A later copy needing the same blob gets its own work, not a CancelledError.
    assert await flights.run("blob", again) == "second"


async def test_cancel_all_lets_cancelled_work_finish_its_clean_up() -> None:
    flights: _SingleFlight[str] = _SingleFlight()
    started, cleaned = asyncio.Event(), list[str]()
    first = asyncio.create_task(flights.run("blob", lambda: _winding_down(started, cleaned)))
    await started.wait()
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await flights.cancel_all()  # what Copier.__aexit__ does after an interrupted copy
    assert cleaned == ["done"]


async def test_a_realm_host_that_is_no_reference_host_is_an_authentication_error() -> None:
    # Compose service names such as `auth_server` are fine in URLs but not in image names.
    auth = RegistryAuth({"registry.example.com": Credentials("user", "secret")})
    challenge = Challenge("bearer", {"realm": "http://auth_server/token"})
    request = cast(ClientRequest, None)  # never used: we refuse before sending anything
    with pytest.raises(AuthenticationError, match="plain-HTTP token realm") as caught:
        await auth._fetch_token(request, "registry.example.com", challenge, ())
    assert "secret" not in str(caught.value)
