"""The controller's HTTP endpoints: `/metrics` for Prometheus, `/healthz` and `/readyz` probes.

One small aiohttp application over `metrics.Metrics` and `health.Health`; it listens on
all interfaces (a pod's probes and Prometheus reach it through the pod IP) on
`IMAGE_CLONER_METRICS_PORT`.
"""

from __future__ import annotations

from typing import Self

from aiohttp import web
from prometheus_client.exposition import choose_encoder

from image_cloner.health import Health
from image_cloner.metrics import Metrics
from image_cloner.settings import DEFAULT_METRICS_PORT

__all__ = ["MetricsServer", "make_app"]


def make_app(*, metrics: Metrics, health: Health) -> web.Application:
    """`/metrics` (Prometheus text or OpenMetrics), `/healthz` (alive), `/readyz`."""

    async def serve_metrics(request: web.Request) -> web.Response:
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return web.Response(body=encode(metrics.registry), headers={"Content-Type": content_type})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(request: web.Request) -> web.Response:
        problems = health.problems()
        if problems:
            return web.Response(status=503, text="".join(f"{p}\n" for p in problems))
        return web.Response(text="ok\n")

    app = web.Application()
    app.router.add_get("/metrics", serve_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


class MetricsServer:
    """Serves `make_app` on `port` (0: any free port; see `.port` once started)."""

    def __init__(
        self,
        *,
        metrics: Metrics,
        health: Health,
        port: int = DEFAULT_METRICS_PORT,
        host: str | None = None,
    ) -> None:
        """`host=None` listens on all interfaces, as a pod must."""
        self._runner = web.AppRunner(make_app(metrics=metrics, health=health), access_log=None)
        self._host = host
        self._port = port

    @property
    def port(self) -> int:
        """The port actually listened on."""
        addresses = self._runner.addresses
        if not addresses:
            raise RuntimeError("metrics server is not started")
        return int(addresses[0][1])

    async def start(self) -> None:
        await self._runner.setup()
        await web.TCPSite(self._runner, self._host, self._port).start()

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()
