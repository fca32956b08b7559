"""Kubelet credential provider plugins, run the way the kubelet runs them.

`IMAGE_CLONER_CREDENTIAL_PROVIDER_CONFIG` is the kubelet's own `CredentialProviderConfig`
file (`kubelet.config.k8s.io/v1`, YAML or JSON), so the binaries nodes use
(`ecr-credential-provider`, GCP's, Azure's) serve the controller unchanged, and short-lived
cloud tokens renew themselves. For an image matching a provider's `matchImages` (the
keyring's glob rules), the plugin named by `name` in the bin dir is run with its `args`
and `env`, gets a `CredentialProviderRequest` on stdin and answers a
`CredentialProviderResponse` on stdout: an `auth` map keyed like a docker config, and for
how long it may be used (`cacheDuration`, else the provider's `defaultCacheDuration`; "0"
means not at all), per image, registry or globally (`cacheKeyType`). Concurrent lookups
for one cache key share one run. A plugin that fails gives no credentials (the kubelet
goes on the same way); what it printed is never logged: it may hold a token.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import yaml

from image_cloner.backoff import Backoff
from image_cloner.keyring import Keyring, urls_match
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.oci.options import Credentials
from image_cloner.oci.references import Reference
from image_cloner.singleflight import SingleFlight
from image_cloner.source_credentials import SourceCredential, image_key

__all__ = [
    "PLUGIN_TIMEOUT",
    "RENEW_FLOOR",
    "CredentialPluginError",
    "PluginAnswer",
    "PluginLogin",
    "PluginProvider",
    "PluginSpec",
    "load_provider_config",
    "parse_duration",
]

CONFIG_API_VERSION = "kubelet.config.k8s.io/v1"
PLUGIN_API_VERSIONS = ("credentialprovider.kubelet.k8s.io/v1",)
PLUGIN_TIMEOUT = 60.0
"""Seconds a plugin may take (the kubelet allows a minute too)."""
OUTPUT_LIMIT = 1024 * 1024

logger = logging.getLogger(CONTROLLER_LOGGER)

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


class CredentialPluginError(ValueError):
    """The provider config or a plugin's answer is unusable; never holds credentials."""


def parse_duration(text: str) -> float:
    """Seconds of a Go duration (`12h`, `1h30m`, `5m0s`, `0`); `CredentialPluginError`."""
    if text in ("0", "+0", "-0"):
        return 0.0
    body = text.lstrip("+")
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            raise CredentialPluginError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise CredentialPluginError(f"invalid duration {text!r}")
    return total


@dataclass(frozen=True)
class PluginSpec:
    """One `providers` entry of a CredentialProviderConfig."""

    name: str
    executable: Path
    match_images: tuple[str, ...]
    default_cache_duration: float
    api_version: str
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    def matches(self, image: str) -> bool:
        return any(urls_match(pattern, image) for pattern in self.match_images)


def _required(entry: Mapping[str, Any], name: str, what: str) -> Any:
    value = entry.get(name)
    if value in (None, "", []):
        raise CredentialPluginError(f"{what}: `{name}` is required")
    return value


def _spec(entry: object, bin_dir: Path, what: str) -> PluginSpec:
    if not isinstance(entry, Mapping):
        raise CredentialPluginError(f"{what}: not an object")
    name = str(_required(entry, "name", what))
    if "/" in name or name in (".", ".."):
        raise CredentialPluginError(f"{what}: `name` must be a file name in the bin dir")
    what = f"{what} ({name})"
    api_version = str(_required(entry, "apiVersion", what))
    if api_version not in PLUGIN_API_VERSIONS:
        raise CredentialPluginError(f"{what}: unsupported apiVersion {api_version!r}")
    executable = bin_dir / name
    if not os.access(executable, os.X_OK):
        raise CredentialPluginError(f"{what}: {executable} is not an executable file")
    env = entry.get("env") or []
    return PluginSpec(
        name=name,
        executable=executable,
        match_images=tuple(str(p) for p in _required(entry, "matchImages", what)),
        default_cache_duration=parse_duration(str(_required(entry, "defaultCacheDuration", what))),
        api_version=api_version,
        args=tuple(str(a) for a in entry.get("args") or ()),
        env={str(e["name"]): str(e.get("value", "")) for e in env if isinstance(e, Mapping)},
    )


def load_provider_config(path: Path, *, bin_dir: Path) -> tuple[PluginSpec, ...]:
    """The plugins of a CredentialProviderConfig file; `CredentialPluginError` if unusable."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise CredentialPluginError(f"{path}: cannot read it: {reason}") from None
    if not isinstance(document, Mapping) or document.get("kind") != "CredentialProviderConfig":
        raise CredentialPluginError(f"{path}: not a CredentialProviderConfig")
    if document.get("apiVersion") != CONFIG_API_VERSION:
        raise CredentialPluginError(f"{path}: apiVersion must be {CONFIG_API_VERSION}")
    providers = document.get("providers")
    if not isinstance(providers, list) or not providers:
        raise CredentialPluginError(f"{path}: `providers` must be a non-empty list")
    return tuple(_spec(e, bin_dir, f"{path}: providers[{i}]") for i, e in enumerate(providers))


@dataclass(frozen=True)
class PluginAnswer:
    """A plugin's logins, and until when (monotonic clock) they may be used."""

    keyring: Keyring
    expires_at: float


def _cache_keys(spec_name: str, image: str) -> tuple[tuple[str, str], ...]:
    registry = image.split("/", 1)[0]
    return ((spec_name, "image:" + image), (spec_name, "registry:" + registry), (spec_name, ""))


class PluginProvider:
    """The controller-wide credentials of the configured plugins, cached as they say."""

    def __init__(
        self,
        specs: Sequence[PluginSpec],
        *,
        clock: Callable[[], float] = time.monotonic,
        timeout: float = PLUGIN_TIMEOUT,
    ) -> None:
        self._specs = tuple(specs)
        self._clock = clock
        self._timeout = timeout
        self._cache: dict[tuple[str, str], PluginAnswer] = {}
        self._runs: SingleFlight[PluginAnswer | None] = SingleFlight()

    def __repr__(self) -> str:
        return f"PluginProvider({[s.name for s in self._specs]})"

    async def for_image(self, reference: Reference, namespace: str) -> list[SourceCredential]:
        image = image_key(reference)
        found: list[SourceCredential] = []
        for spec in self._specs:
            if not spec.matches(image):
                continue
            answer = await self.answer(spec, image)
            if answer is not None:
                origin = f"credential provider {spec.name}"
                found.extend(SourceCredential(c, origin) for c in answer.keyring.lookup(image))
        return found

    async def answer(self, spec: PluginSpec, image: str) -> PluginAnswer | None:
        """`spec`'s answer for `image`: cached while it may be, else from a run; None
        when the plugin failed (logged)."""
        answer = self._cached(spec, image)
        if answer is None:
            answer = await self._runs.run((spec.name, image), partial(self._ask, spec, image))
        return answer

    def _cached(self, spec: PluginSpec, image: str) -> PluginAnswer | None:
        now = self._clock()
        for key in _cache_keys(spec.name, image):
            answer = self._cache.get(key)
            if answer is not None and answer.expires_at > now:
                return answer
            if answer is not None:
                del self._cache[key]
        return None

    async def _ask(self, spec: PluginSpec, image: str) -> PluginAnswer | None:
        try:
            document = await self._run(spec, image)
            answer, key_type = self._parse(spec, document)
        except CredentialPluginError as error:
            log_event(
                logger,
                logging.WARNING,
                "credential provider failed",
                provider=spec.name,
                image=image,
                error=str(error),
            )
            return None
        if answer.expires_at > self._clock():
            key = {"Image": 0, "Registry": 1, "Global": 2}[key_type]
            self._cache[_cache_keys(spec.name, image)[key]] = answer
        return answer

    async def _run(self, spec: PluginSpec, image: str) -> Any:
        request = {"apiVersion": spec.api_version, "kind": "CredentialProviderRequest"}
        request["image"] = image
        process = await asyncio.create_subprocess_exec(
            spec.executable,
            *spec.args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, **spec.env},
        )
        try:
            async with asyncio.timeout(self._timeout):
                out, _ = await process.communicate(json.dumps(request).encode())
        except TimeoutError:
            process.kill()
            await process.wait()
            raise CredentialPluginError(f"no answer within {self._timeout:g} s") from None
        if process.returncode != 0:
            raise CredentialPluginError(f"exited with status {process.returncode}")
        if len(out) > OUTPUT_LIMIT:
            raise CredentialPluginError("answer too large")
        try:
            return json.loads(out)
        except ValueError:
            raise CredentialPluginError("answer is not JSON") from None

    def _parse(self, spec: PluginSpec, document: Any) -> tuple[PluginAnswer, str]:
        if not isinstance(document, Mapping) or document.get("kind") != (
            "CredentialProviderResponse"
        ):
            raise CredentialPluginError("answer is not a CredentialProviderResponse")
        if document.get("apiVersion") != spec.api_version:
            raise CredentialPluginError("answer has another apiVersion than the request")
        key_type = document.get("cacheKeyType")
        if key_type not in ("Image", "Registry", "Global"):
            raise CredentialPluginError("cacheKeyType must be Image, Registry or Global")
        duration = document.get("cacheDuration")
        seconds = spec.default_cache_duration if duration is None else parse_duration(str(duration))
        entries: list[tuple[str, Credentials]] = []
        for key, value in (document.get("auth") or {}).items():
            if isinstance(value, Mapping):
                entries.append(
                    (
                        str(key),
                        Credentials(str(value.get("username", "")), str(value.get("password", ""))),
                    )
                )
        answer = PluginAnswer(Keyring.of(entries), expires_at=self._clock() + seconds)
        return answer, str(key_type)


RENEW_FLOOR = 5.0
"""Least seconds between runs for the backup login: an answer cached for less (or "0",
not at all) would otherwise run the plugin at every request."""

RENEW_RETRY = Backoff(base=5.0, cap=300.0)
"""Waits between runs after a run that gave no login for the backup registry."""


class PluginLogin:
    """The backup registry's login from a plugin (`IMAGE_CLONER_BACKUP_CREDENTIAL_PROVIDER`),
    run again when its answer's cache runs out, as the kubelet would.

    Read like a `credentials.WatchedLogin`: `current` at each request, `version` counts
    changes. A run that fails keeps the last login (it may still be accepted: ECR's
    provider caches for half a token's life) and is retried with backoff; until a first
    run succeeds there is no login, and the start-up check of the backup registry says so.
    """

    def __init__(
        self,
        provider: PluginProvider,
        spec: PluginSpec,
        image: str,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what = f"push login from credential provider {spec.name}"
        self._provider = provider
        self._spec = spec
        self._image = image
        self._clock = clock
        self._current: Credentials | None = None
        self._version = 0
        self._renew_at = 0.0
        self._failures = 0

    def __repr__(self) -> str:
        return f"PluginLogin({self._spec.name}, {self._image}, v{self._version})"

    @property
    def current(self) -> Credentials | None:
        return self._current

    @property
    def version(self) -> int:
        """0 until the first login, then one more at every change."""
        return self._version

    async def renew(self) -> bool:
        """Run the plugin (or take its cached answer) now; True when the login changed."""
        answer = await self._provider.answer(self._spec, self._image)
        found = answer.keyring.lookup(self._image) if answer is not None else []
        now = self._clock()
        if answer is None or not found:
            if answer is not None:
                log_event(
                    logger,
                    logging.WARNING,
                    "credential provider gave no login for the backup registry",
                    provider=self._spec.name,
                    image=self._image,
                )
            self._failures += 1
            self._renew_at = now + RENEW_RETRY.delay(self._failures)
            return False
        self._failures = 0
        self._renew_at = max(answer.expires_at, now + RENEW_FLOOR)
        if found[0] == self._current:
            return False
        self._current = found[0]
        self._version += 1
        return True

    async def keep_renewed(self, on_change: Callable[[PluginLogin], Awaitable[None]]) -> None:
        """Renew whenever the answer runs out, forever; report changes."""
        while True:
            await asyncio.sleep(max(0.0, self._renew_at - self._clock()))
            if await self.renew():
                await on_change(self)
