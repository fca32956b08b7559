"""The benchmark's lab: loopback registries, synthetic images, and the two copy commands.

Everything comes from the test support (`tests.support`), so the benchmark runs against the
same real registries and images as the integration tests. Every measured copy goes into a
destination registry of its own, started empty on a new port: no tool finds blobs left by an
earlier round, and skopeo's machine-wide blob-info cache (which remembers where it pushed
blobs, to mount them later) knows nothing about that registry.
"""

from __future__ import annotations

import enum
import hashlib
import os
import shutil
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import skopeo
from tests.support.images import ImageFactory, ImageSpec, SyntheticImage, push_image
from tests.support.pki import make_pki
from tests.support.processes import Service
from tests.support.proxy import RegistryProxy
from tests.support.registries import RegistryEndpoint, RegistryKind, RunningRegistry

from bench.measure import Measurement, run_measured

__all__ = ["Lab", "RequestCount", "Tool"]

IMAGE_CLONER = Path(sys.executable).parent / "image-cloner"


class Tool(enum.StrEnum):
    IMAGE_CLONER = "image-cloner"
    SKOPEO = "skopeo"


@dataclass(frozen=True)
class RequestCount:
    """HTTP requests one copy sent to each registry (as counted by a proxy in front of it)."""

    source: int
    destination: int
    destination_kinds: dict[str, int]
    """How many of each `METHOD what -> status` went to the destination."""

    @property
    def total(self) -> int:
        return self.source + self.destination


class Lab(Service):
    """A source registry (open, plain HTTP) and fresh destinations (htpasswd + TLS) on demand.

    Use as a context manager: every process it started is stopped on the way out.
    """

    def __init__(self, root: Path, *, timeout: float) -> None:
        self.root = root
        self.timeout = timeout
        self._stack = ExitStack()
        self._count = 0
        self.pki = make_pki(root / "pki")
        self.images = ImageFactory(root / "images")
        self.source = RunningRegistry(root / "source", kind=RegistryKind.OPEN)
        self.logs = root / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        # Our children must not pick up a developer's image-cloner configuration.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGE_CLONER_")}
        if not IMAGE_CLONER.exists():
            raise RuntimeError(f"{IMAGE_CLONER} not found: run `make venv` first")

    def start(self) -> None:
        self._stack.enter_context(self.source)

    def stop(self) -> None:
        self._stack.close()

    def seed(self, spec: ImageSpec, name: str) -> SyntheticImage:
        """Generate `spec` (streamed to disk) and push it to the source registry as `name`."""
        image = self.images.build(spec)
        push_image(image, self.source, name)
        return image

    def drop_layout(self, image: SyntheticImage) -> None:
        """Delete the image's files once the registry has it (a 1 GiB layer is big enough)."""
        shutil.rmtree(image.layout, ignore_errors=True)

    @contextmanager
    def destination(self) -> Iterator[RunningRegistry]:
        """An empty htpasswd + TLS registry, stopped and deleted afterwards."""
        self._count += 1
        registry = RunningRegistry(
            self.root / f"dest-{self._count}", kind=RegistryKind.HTPASSWD, pki=self.pki
        )
        try:
            with registry:
                yield registry
        finally:
            shutil.rmtree(registry.workdir, ignore_errors=True)

    @contextmanager
    def proxy(self, upstream: RegistryEndpoint) -> Iterator[RegistryProxy]:
        """A counting proxy in front of `upstream` (same scheme, credentials and CA)."""
        self._count += 1
        with RegistryProxy(self.root / f"proxy-{self._count}", upstream, pki=self.pki) as proxy:
            yield proxy

    def copy(
        self,
        tool: Tool,
        source: RegistryEndpoint,
        destination: RegistryEndpoint,
        name: str,
    ) -> Measurement:
        """Copy `name` (every platform, digests kept) with `tool`; measure the process."""
        self._count += 1
        log = self.logs / f"{self._count:03d}-{tool}.log"
        argv = self.argv(tool, source, destination, name)
        return run_measured(argv, env=self.env, log=log, timeout=self.timeout)

    def start_up(self, tool: Tool) -> Measurement:
        """`TOOL --version`: what starting the program costs before it copies anything."""
        self._count += 1
        log = self.logs / f"{self._count:03d}-{tool}-version.log"
        program = str(IMAGE_CLONER) if tool is Tool.IMAGE_CLONER else skopeo.SKOPEO
        return run_measured([program, "--version"], env=self.env, log=log, timeout=self.timeout)

    @staticmethod
    def argv(
        tool: Tool, source: RegistryEndpoint, destination: RegistryEndpoint, name: str
    ) -> list[str]:
        """The command line a user would type, with the credentials and trust it needs."""
        if tool is Tool.SKOPEO:
            return [
                skopeo.SKOPEO,
                "--insecure-policy",
                "copy",
                "--quiet",
                "--all",
                "--preserve-digests",
                *source.skopeo_flags("src"),
                *destination.skopeo_flags("dest"),
                skopeo.docker_ref(source, name),
                skopeo.docker_ref(destination, name),
            ]
        argv = [str(IMAGE_CLONER), "copy", "--quiet"]
        if source.username is not None:
            argv.append(f"--src-creds={source.username}:{source.password}")
        if destination.username is not None:
            argv.append(f"--dest-creds={destination.username}:{destination.password}")
        ca_file = destination.ca_file or source.ca_file
        if ca_file is not None:
            argv.append(f"--ca-file={ca_file}")
        return [*argv, source.ref(name), destination.ref(name)]

    @staticmethod
    def verify(destination: RegistryEndpoint, name: str, image: SyntheticImage) -> None:
        """Check with skopeo (not our own client) that the copy has the source's digest."""
        raw = skopeo.inspect_raw(destination, name)
        digest = "sha256:" + hashlib.sha256(raw).hexdigest()
        if digest != image.digest:
            raise RuntimeError(f"{destination.ref(name)} has {digest}, expected {image.digest}")

    def count_requests(self, tool: Tool, destination: RunningRegistry, name: str) -> RequestCount:
        """Requests `tool` sends to copy `name` into `destination`, which already holds it."""
        with self.proxy(self.source) as source_proxy, self.proxy(destination) as dest_proxy:
            self.copy(tool, source_proxy, dest_proxy, name)
            sent = dest_proxy.requests()
            kinds = Counter(f"{r.method} {_what(r.path)} -> {r.status}" for r in sent)
            return RequestCount(
                source=len(source_proxy.requests()),
                destination=len(sent),
                destination_kinds=dict(kinds),
            )


def _what(path: str) -> str:
    """What a registry API path addresses, without names and digests."""
    if path.rstrip("/") == "/v2":
        return "/v2/"
    for what in ("blobs/uploads", "manifests", "blobs"):
        if f"/{what}/" in path:
            return what
    return path
