"""A TCP forwarder in front of the apiserver that a test can cut, as a network partition would.

"The apiserver is unreachable for longer than the renew deadline" cannot be staged by
stopping the shared test bed. So one controller gets a kubeconfig pointing here instead,
and `cut()` turns this into a black hole: open connections are dropped and new ones are
accepted but never answered (the worst case: a request that hangs, not one refused at
once). `restore()` forwards again. TLS passes through untouched, so the apiserver's
certificate (issued for 127.0.0.1) still verifies. It runs on its own event loop in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from pathlib import Path
from typing import Self

from tests.support.processes import free_port

__all__ = ["TcpForwarder", "kubeconfig_via"]

CHUNK = 64 * 1024


class TcpForwarder:
    """127.0.0.1:`port` → `host`:`target_port`, with `cut()` and `restore()`."""

    def __init__(self, host: str, target_port: int) -> None:
        self.host = host
        self.target_port = target_port
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False

    def start(self) -> None:
        self._thread.start()
        self._call(self._start())

    def stop(self) -> None:
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def cut(self) -> None:
        """Drop every open connection; accept new ones and never answer them."""
        self._call(self._set_cut(True))

    def restore(self) -> None:
        """Forward again (held connections are closed: their clients retry)."""
        self._call(self._set_cut(False))

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _call(self, coroutine: object) -> None:
        asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)  # type: ignore[arg-type]

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self._drop_all()

    async def _set_cut(self, cut: bool) -> None:
        self._cut = cut
        self._drop_all()

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        if self._cut:
            return  # held open, never answered, until restore() or stop() drops it
        try:
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(CHUNK):
                writer.write(chunk)
                await writer.drain()
        finally:
            with contextlib.suppress(OSError):
                writer.close()
            self._writers.discard(writer)


def kubeconfig_via(kubeconfig: Path, forwarder: TcpForwarder, path: Path) -> Path:
    """A copy of `kubeconfig` (JSON, as tests/support/kubeconfig.py writes) via `forwarder`."""
    config = json.loads(kubeconfig.read_text())
    for cluster in config["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{forwarder.port}"
    path.touch(mode=0o600)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path
