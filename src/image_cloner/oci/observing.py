"""Telling someone about every request sent to a registry, without knowing who listens.

The controller counts requests and failures per registry (`metrics.Metrics`), but `oci`
must not import Prometheus (or anything of the controller): the listener is a plain
callable on `RegistryOptions.request_listener`, and this middleware calls it. It sits
innermost in the session's chain, after the auth middleware, so it sees each request
that really went out (a 401 challenge and its authenticated retry are two, every retry
of `RetryPolicy` one more), each redirect hop under its own host. Token requests to an
auth realm use their own session call and are not seen.
"""

from __future__ import annotations

from aiohttp import (
    ClientError,
    ClientHandlerType,
    ClientMiddlewareType,
    ClientRequest,
    ClientResponse,
)

from image_cloner.oci.options import RequestListener

__all__ = ["observing"]


def observing(listener: RequestListener) -> ClientMiddlewareType:
    """A client middleware calling `listener(host, status)`; status None when no answer came."""

    async def middleware(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        host = request.url.raw_authority or ""
        try:
            response = await handler(request)
        except (ClientError, TimeoutError):
            listener(host, None)
            raise
        listener(host, response.status)
        return response

    return middleware
