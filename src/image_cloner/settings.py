"""Configuration from the environment, checked once, before anything is touched.

A controller that starts with a typo in its settings and half-works is worse than
one that refuses to start: `Settings.from_env` reads every variable, checks it,
and raises `ConfigError` with one line naming the variable and what is wrong
(`image-cloner run` turns that into exit status 2). Passwords never appear in it.
The result is frozen and passed explicitly to whoever needs it.

`registry_options_from_env` is the part `image-cloner copy` needs too: how to reach
registries, without a backup location, with the CLI's flags layered on top.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal, TypeVar
from urllib.parse import urlsplit

from image_cloner.logs import LOG_FORMATS, LOG_LEVELS, LogFormat, LogLevel
from image_cloner.mapping import BackupLocation, parse_backup_location
from image_cloner.oci.options import DEFAULT_MAX_CONCURRENT_TRANSFERS, Credentials, RegistryOptions
from image_cloner.oci.references import InvalidReference, Registry

T = TypeVar("T", bound=str)

RewriteForm = Literal["pinned", "tag"]
REWRITE_FORMS: tuple[RewriteForm, ...] = ("pinned", "tag")

__all__ = [
    "DEFAULT_IGNORED_NAMESPACES",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_PULL_SECRET",
    "REWRITE_FORMS",
    "ConfigError",
    "RewriteForm",
    "Settings",
    "parse_credentials",
    "registry_options_from_env",
]

REGISTRY = "IMAGE_CLONER_REGISTRY"
USER = "IMAGE_CLONER_USER"
PASS = "IMAGE_CLONER_PASS"
CA_FILE = "IMAGE_CLONER_CA_FILE"
INSECURE_REGISTRIES = "IMAGE_CLONER_INSECURE_REGISTRIES"
REGISTRY_MIRRORS = "IMAGE_CLONER_REGISTRY_MIRRORS"
IGNORE_NAMESPACES = "IMAGE_CLONER_IGNORE_NAMESPACES"
POD_NAMESPACE = "IMAGE_CLONER_POD_NAMESPACE"
NAMESPACE = "IMAGE_CLONER_NAMESPACE"
PULL_SECRET = "IMAGE_CLONER_PULL_SECRET"
MANAGE_PULL_SECRET = "IMAGE_CLONER_MANAGE_PULL_SECRET"
METRICS_PORT = "IMAGE_CLONER_METRICS_PORT"
LOG_FORMAT = "IMAGE_CLONER_LOG_FORMAT"
LOG_LEVEL = "IMAGE_CLONER_LOG_LEVEL"
MAX_CONCURRENT_TRANSFERS = "IMAGE_CLONER_MAX_CONCURRENT_TRANSFERS"
REWRITE_FORM = "IMAGE_CLONER_REWRITE_FORM"

DEFAULT_IGNORED_NAMESPACES = frozenset({"kube-system"})
DEFAULT_PULL_SECRET = "image-cloner-pull"
DEFAULT_METRICS_PORT = 8080
MAX_TRANSFERS_LIMIT = 64

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
_DNS_SUBDOMAIN_RE = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.ASCII
)
_USERINFO_RE = re.compile(r"//[^/@]*@")


class ConfigError(ValueError):
    """A setting is missing or wrong; the message is one line and names the variable."""


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Everything `image-cloner run` is configured with."""

    backup: BackupLocation
    """Where images are copied to (`IMAGE_CLONER_REGISTRY`)."""

    registry_options: RegistryOptions
    """How to reach registries: backup credentials keyed by its host, CA file, insecure
    hosts, source mirrors, concurrent transfers."""

    ignored_namespaces: frozenset[str]
    """Namespaces whose workloads are never touched; always includes `pod_namespace`."""

    namespace: str | None = None
    """Watch only this namespace; None watches all of them."""

    pod_namespace: str | None = None
    """The controller's own namespace (downward API); None when run outside a cluster."""

    pull_secret_name: str | None = DEFAULT_PULL_SECRET
    """Name of the docker-registry Secret kept in each rewritten workload's namespace and
    added to its `imagePullSecrets`; None when that is switched off or the backup
    registry has no credentials (there is nothing to put in it)."""

    metrics_port: int = DEFAULT_METRICS_PORT
    """Port of `/metrics`, `/healthz` and `/readyz`."""

    log_format: LogFormat = "text"
    """`text` (like the seed's log lines) or `json` (one object per line)."""

    log_level: LogLevel = "info"
    """`debug` shows every decision (inspecting, checking, already cloned); `info` the
    copies, rewrites and failures; `warning` and `error` only problems."""

    rewrite_form: RewriteForm = "pinned"
    """How a rewritten image names its backup (`IMAGE_CLONER_REWRITE_FORM`): `pinned`
    (`BACKUP/repo:tag@sha256:…`, the digest the pods run, whatever the tag does later) or
    `tag` (the seed's `BACKUP/repo:tag`, only while the backup tag holds that digest;
    else pinned for that image)."""

    @property
    def backup_credentials(self) -> Credentials | None:
        """The backup registry's login, for the pull Secret."""
        return self.registry_options.credentials.get(self.backup.registry.host)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Read and check every variable; raises `ConfigError` on the first problem."""
        backup = _backup_location(env)
        options = registry_options_from_env(env, backup_host=backup.registry.host)
        pod_namespace = _namespace(env, POD_NAMESPACE)
        ignored = _ignored_namespaces(env, pod_namespace)
        namespace = _namespace(env, NAMESPACE)
        if namespace is not None and namespace in ignored:
            raise ConfigError(
                f"{NAMESPACE}: namespace {namespace!r} is also ignored"
                f" ({IGNORE_NAMESPACES} or the controller's own), so nothing would be watched"
            )
        secret_name = _secret_name(env)
        manage = _boolean(env, MANAGE_PULL_SECRET, default=True)
        has_credentials = backup.registry.host in options.credentials
        return cls(
            backup=backup,
            registry_options=options,
            ignored_namespaces=ignored,
            namespace=namespace,
            pod_namespace=pod_namespace,
            pull_secret_name=secret_name if manage and has_credentials else None,
            metrics_port=_integer(env, METRICS_PORT, default=DEFAULT_METRICS_PORT, top=65535),
            log_format=_log_format(env),
            log_level=_choice(env, LOG_LEVEL, LOG_LEVELS, default="info"),
            rewrite_form=_choice(env, REWRITE_FORM, REWRITE_FORMS, default="pinned"),
        )


def registry_options_from_env(
    env: Mapping[str, str],
    *,
    backup_host: str | None,
    extra_credentials: Mapping[str, Credentials] | None = None,
    extra_insecure_hosts: Iterable[str] = (),
    ca_file: Path | None = None,
) -> RegistryOptions:
    """Registry options from the environment, plus what the CLI's flags add.

    `IMAGE_CLONER_USER` / `IMAGE_CLONER_PASS` become the credentials of `backup_host`
    (the computed or given destination); they are an error when `backup_host` is None.
    `extra_credentials` (`--src-creds`, `--dest-creds`, keyed by registry host) win over
    them, `extra_insecure_hosts` add to `IMAGE_CLONER_INSECURE_REGISTRIES`, and `ca_file`
    replaces `IMAGE_CLONER_CA_FILE`.
    """
    credentials: dict[str, Credentials] = {}
    login = _backup_login(env)
    if login is not None:
        if backup_host is None:
            raise ConfigError(f"{USER}: set, but there is no backup registry to use it for")
        credentials[_host(backup_host, what="backup registry")] = login
    for host, extra in (extra_credentials or {}).items():
        credentials[_host(host, what="credentials")] = extra
    insecure = _hosts(env, INSECURE_REGISTRIES) | {
        _host(host, what="insecure registry") for host in extra_insecure_hosts
    }
    if ca_file is not None:
        checked_ca: Path | None = _ca_file(str(ca_file), what="CA file")
    else:
        text = _get(env, CA_FILE)
        checked_ca = _ca_file(text, what=CA_FILE) if text is not None else None
    return RegistryOptions(
        credentials=MappingProxyType(credentials),
        ca_file=checked_ca,
        insecure_hosts=frozenset(insecure),
        mirrors=_mirrors(env),
        max_concurrent_transfers=_integer(
            env,
            MAX_CONCURRENT_TRANSFERS,
            default=DEFAULT_MAX_CONCURRENT_TRANSFERS,
            top=MAX_TRANSFERS_LIMIT,
        ),
    )


def parse_credentials(text: str, *, what: str) -> Credentials:
    """`USERNAME:PASSWORD`, as skopeo's `--src-creds`; the error never repeats `text`."""
    username, colon, password = text.partition(":")
    if not colon or not username or not password:
        raise ConfigError(f"{what}: expected USERNAME:PASSWORD")
    return Credentials(username, password)


def _get(env: Mapping[str, str], name: str) -> str | None:
    """The value without surrounding blanks; an empty value counts as unset."""
    value = env.get(name, "").strip()
    return value or None


def _backup_location(env: Mapping[str, str]) -> BackupLocation:
    text = _get(env, REGISTRY)
    if text is None:
        raise ConfigError(
            f"{REGISTRY} is not set: give the backup registry,"
            " e.g. localhost:5000 or registry.example.com/backup"
        )
    try:
        return parse_backup_location(text)
    except InvalidReference as error:
        raise ConfigError(f"{REGISTRY}: {error}") from None


def _backup_login(env: Mapping[str, str]) -> Credentials | None:
    username = _get(env, USER)
    # A password read from a file often ends with a newline; blanks may be meant.
    password = env.get(PASS, "").rstrip("\r\n") or None
    if username is None and password is None:
        return None
    if username is None:
        raise ConfigError(f"{PASS} is set but {USER} is not: set both or neither")
    if password is None:
        raise ConfigError(f"{USER} is set but {PASS} is not: set both or neither")
    return Credentials(username, password)


def _host(text: str, *, what: str) -> str:
    try:
        return Registry(text).host
    except InvalidReference as error:
        raise ConfigError(f"{what}: {error}") from None


def _items(env: Mapping[str, str], name: str) -> list[str]:
    text = _get(env, name)
    return [item.strip() for item in text.split(",") if item.strip()] if text else []


def _hosts(env: Mapping[str, str], name: str) -> frozenset[str]:
    return frozenset(_host(item, what=name) for item in _items(env, name))


def _mirrors(env: Mapping[str, str]) -> Mapping[str, tuple[str, ...]]:
    mirrors: dict[str, list[str]] = {}
    for item in _items(env, REGISTRY_MIRRORS):
        host, equals, url = (part.strip() for part in item.partition("="))
        if not equals or not host or not url:
            shown = _USERINFO_RE.sub("//***@", item)
            raise ConfigError(f"{REGISTRY_MIRRORS}: expected host=URL, got {shown!r}")
        urls = mirrors.setdefault(_host(host, what=REGISTRY_MIRRORS), [])
        checked = _mirror_url(url)
        if checked not in urls:
            urls.append(checked)
    return MappingProxyType({host: tuple(urls) for host, urls in mirrors.items()})


def _mirror_url(url: str) -> str:
    def invalid(reason: str) -> ConfigError:
        return ConfigError(
            f"{REGISTRY_MIRRORS}: mirror {_USERINFO_RE.sub('//***@', url)!r} {reason}"
        )

    parts = urlsplit(url)
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        raise invalid("is not an http:// or https:// URL")
    if "@" in parts.netloc:
        raise invalid("carries credentials; they are not supported in mirror URLs")
    if parts.query or parts.fragment:
        raise invalid("must not have a query or fragment")
    try:
        authority = Registry(parts.netloc).host
    except InvalidReference as error:
        raise invalid(f"has an invalid host: {error}") from None
    return f"{parts.scheme.lower()}://{authority}{parts.path.rstrip('/')}"


def _ca_file(text: str, *, what: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"{what}: no such file: {text}")
    try:
        ssl.create_default_context(cafile=str(path))
    except ssl.SSLError:
        raise ConfigError(f"{what}: {text} holds no PEM certificates") from None
    except OSError as error:
        raise ConfigError(f"{what}: cannot read {text}: {error.strerror}") from None
    return path


def _namespace(env: Mapping[str, str], name: str) -> str | None:
    value = _get(env, name)
    if value is not None and not _DNS_LABEL_RE.fullmatch(value):
        raise ConfigError(f"{name}: {value!r} is not a namespace name (a DNS label)")
    return value


def _ignored_namespaces(env: Mapping[str, str], pod_namespace: str | None) -> frozenset[str]:
    names = _items(env, IGNORE_NAMESPACES)
    for name in names:
        if not _DNS_LABEL_RE.fullmatch(name):
            raise ConfigError(f"{IGNORE_NAMESPACES}: {name!r} is not a namespace name")
    ignored = frozenset(names) if names else DEFAULT_IGNORED_NAMESPACES
    # The controller never rewrites itself: its own restarts must not depend on the backup.
    return ignored | {pod_namespace} if pod_namespace else ignored


def _secret_name(env: Mapping[str, str]) -> str:
    name = _get(env, PULL_SECRET) or DEFAULT_PULL_SECRET
    if len(name) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(name):
        raise ConfigError(f"{PULL_SECRET}: {name!r} is not a Secret name (a DNS subdomain)")
    return name


def _boolean(env: Mapping[str, str], name: str, *, default: bool) -> bool:
    value = _get(env, name)
    if value is None:
        return default
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true or false, got {value!r}")


def _integer(env: Mapping[str, str], name: str, *, default: int, top: int) -> int:
    value = _get(env, name)
    if value is None:
        return default
    digits = value.isascii() and value.isdigit() and len(value.lstrip("0")) <= 6
    if not digits or not 1 <= int(value) <= top:
        raise ConfigError(f"{name}: expected a whole number from 1 to {top}, got {value!r}")
    return int(value)


def _log_format(env: Mapping[str, str]) -> LogFormat:
    return _choice(env, LOG_FORMAT, LOG_FORMATS, default="text")


def _choice(env: Mapping[str, str], name: str, known: tuple[T, ...], *, default: T) -> T:
    value = (_get(env, name) or default).lower()
    for choice in known:
        if value == choice:
            return choice
    raise ConfigError(f"{name}: expected {' or '.join(known)}, got {value!r}")
