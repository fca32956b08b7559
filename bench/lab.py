"""The benchmark's lab: loopback registries, synthetic images, and the four copy commands.

Everything comes from the test support (`tests.support`), so the benchmark runs against the
same real registries and images as the integration tests. Every measured copy goes into a
destination registry of its own, started empty on a new port: no tool finds blobs left by an
earlier round. Each peer runs with a configuration of its own, made for that one copy (its
logins and trust for the two registries, nothing of the machine's), and skopeo with an empty
blob-info cache: that machine-wide cache remembers where blobs were pushed, to mount them
later, and a new registry may get the port of an earlier one (`_skopeo_without_cache`).
"""

from __future__ import annotations

import compileall
import enum
import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support import skopeo
from tests.support.binaries import tool
from tests.support.crane import Crane
from tests.support.images import ImageFactory, ImageSpec, SyntheticImage, push_image
from tests.support.pki import make_pki
from tests.support.processes import Service
from tests.support.proxy import RegistryProxy
from tests.support.regctl import Regctl
from tests.support.registries import RegistryEndpoint, RegistryKind, RunningRegistry

from bench.measure import Measurement, run_measured

__all__ = ["PEERS", "Lab", "RequestCount", "Tool"]

IMAGE_CLONER = Path(sys.executable).parent / "image-cloner"
SKOPEO_SYSTEM_CACHE = Path("/var/lib/containers/cache")
"""Where skopeo run as root keeps its blob-info cache (containers/image: no flag moves it)."""


class Tool(enum.StrEnum):
    IMAGE_CLONER = "image-cloner"
    SKOPEO = "skopeo"
    CRANE = "crane"
    REGCTL = "regctl"


PEERS = (Tool.SKOPEO, Tool.CRANE, Tool.REGCTL)
"""The tools image-cloner is measured against."""


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
        compile_bytecode()
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
        home = self.root / "homes" / f"{self._count:03d}-{tool}"
        argv, env = self.command(tool, source, destination, name, home=home)
        return run_measured(argv, env=env, log=log, timeout=self.timeout)

    def start_up(self, tool: Tool) -> Measurement:
        """`TOOL --version`: what starting the program costs before it copies anything."""
        self._count += 1
        log = self.logs / f"{self._count:03d}-{tool}-version.log"
        argv = {
            Tool.IMAGE_CLONER: [str(IMAGE_CLONER), "--version"],
            Tool.SKOPEO: [skopeo.SKOPEO, "--version"],
            Tool.CRANE: [str(_binary(Tool.CRANE)), "version"],
            Tool.REGCTL: [str(_binary(Tool.REGCTL)), "version"],
        }[tool]
        return run_measured(argv, env=self.env, log=log, timeout=self.timeout)

    def command(
        self,
        tool: Tool,
        source: RegistryEndpoint,
        destination: RegistryEndpoint,
        name: str,
        *,
        home: Path,
    ) -> tuple[list[str], dict[str, str]]:
        """The command line a user would type, with the credentials and trust it needs, and
        its environment; the tool's configuration is written under `home` (not measured)."""
        home.mkdir(parents=True, exist_ok=True)
        src, dst = source.ref(name), destination.ref(name)
        if tool is Tool.SKOPEO:
            argv = [
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
            return _skopeo_without_cache(argv, self.env, home)
        if tool is Tool.CRANE:
            # `crane copy` copies an index as it is (every platform, digests kept); loopback
            # hosts may answer plain HTTP (the source), TLS is verified with the test CA.
            crane = Crane(home)
            crane.login(source)
            crane.login(destination)
            env = {**self.env, **crane.env(destination.ca_file or source.ca_file)}
            return [str(crane.binary), "copy", src, dst], env
        if tool is Tool.REGCTL:
            # `regctl image copy` copies every platform of an index, digests kept.
            regctl = Regctl(home)
            regctl.configure(source)
            regctl.configure(destination)
            return [str(regctl.binary), "image", "copy", src, dst], {**self.env, **regctl.env}
        argv = [str(IMAGE_CLONER), "copy", "--quiet"]
        if source.username is not None:
            argv.append(f"--src-creds={source.username}:{source.password}")
        if destination.username is not None:
            argv.append(f"--dest-creds={destination.username}:{destination.password}")
        ca_file = destination.ca_file or source.ca_file
        if ca_file is not None:
            argv.append(f"--ca-file={ca_file}")
        return [*argv, src, dst], self.env

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


def compile_bytecode() -> None:
    """Compile image-cloner and its libraries to bytecode, as they are when installed.

    pip and the container image (`UV_COMPILE_BYTECODE=1`) install bytecode, and Python caches
    it on a package's first import; an editable checkout under `PYTHONDONTWRITEBYTECODE`
    (some CI machines set it) has none, and every `image-cloner copy` would compile aiohttp
    and the package from source first: ~0.12 s of CPU a run, measured by callgrind (2.0 G
    instructions of imports with no bytecode, 0.78 G with it). The Go tools start compiled.
    """
    spec = importlib.util.find_spec("image_cloner")
    package = spec.submodule_search_locations if spec is not None else None
    for directory in [sysconfig.get_paths()["purelib"], *(package or [])]:
        if not compileall.compile_dir(directory, quiet=1, workers=0):
            raise RuntimeError(f"compiling {directory} to bytecode failed")


def _binary(peer: Tool) -> Path:
    return tool(str(peer))


def _skopeo_without_cache(
    argv: list[str], env: dict[str, str], home: Path
) -> tuple[list[str], dict[str, str]]:
    """skopeo with an empty blob-info cache of its own.

    Unprivileged, skopeo keeps it under `$XDG_DATA_HOME`; as root always in
    `SKOPEO_SYSTEM_CACHE`, shared by every skopeo on the machine, so root's skopeo runs in a
    mount namespace of its own with an empty tmpfs there (`unshare`, a few ms of the figures).
    """
    if os.geteuid() != 0:
        return argv, {**env, "XDG_DATA_HOME": str(home)}
    SKOPEO_SYSTEM_CACHE.mkdir(parents=True, exist_ok=True)
    script = f'mount -t tmpfs bench-skopeo-cache {SKOPEO_SYSTEM_CACHE} && exec "$@"'
    wrapper = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    return [*wrapper, *argv], env


def _what(path: str) -> str:
    """What a registry API path addresses, without names and digests."""
    if path.rstrip("/") == "/v2":
        return "/v2/"
    for what in ("blobs/uploads", "manifests", "blobs"):
        if f"/{what}/" in path:
            return what
    return path
