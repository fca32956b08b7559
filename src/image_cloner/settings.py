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
from typing import TYPE_CHECKING, Literal, TypeVar
from urllib.parse import urlsplit

from image_cloner.credentials import CredentialError, Login, Secret
from image_cloner.logs import LOG_FORMATS, LOG_LEVELS, LogFormat, LogLevel
from image_cloner.mapping import BackupLocation, parse_backup_location
from image_cloner.oci.options import (
    DEFAULT_MAX_CONCURRENT_TRANSFERS,
    Credentials,
    ReferrersPolicy,
    RegistryOptions,
)
from image_cloner.oci.references import InvalidReference, Registry
from image_cloner.policy import ImagePattern, parse_image_patterns

if TYPE_CHECKING:
    # Imported where a provider config is read: its YAML parser is no part of `copy`.
    from image_cloner.credential_plugins import PluginSpec

T = TypeVar("T", bound=str)

RewriteForm = Literal["pinned", "tag"]
REWRITE_FORMS: tuple[RewriteForm, ...] = ("pinned", "tag")

__all__ = [
    "DEFAULT_IGNORED_NAMESPACES",
    "DEFAULT_LEASE_NAME",
    "DEFAULT_METRICS_PORT",
    "DEFAULT_PULL_SECRET",
    "DEFAULT_REFERRERS_RESYNC",
    "DEFAULT_ROLLOUT_TIMEOUT",
    "DEFAULT_WEBHOOK_CERT_DIR",
    "DEFAULT_WEBHOOK_PORT",
    "MODES",
    "REWRITE_FORMS",
    "ConfigError",
    "LeaderElection",
    "Mode",
    "RewriteForm",
    "Settings",
    "backup_location_from_env",
    "parse_credentials",
    "pull_secret_name_from_env",
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
REFERRERS = "IMAGE_CLONER_REFERRERS"
"""Signatures, SBOMs, attestations copied with each image: `all` (default), `none`, or
artifact types (comma-separated); add `,optional` to let a backup succeed without them."""
# Never fight a workload's owner (policy.py has the rules and their precedence).
EXCLUDE_IMAGES = "IMAGE_CLONER_EXCLUDE_IMAGES"
REWRITE_OWNED = "IMAGE_CLONER_REWRITE_OWNED"

# Logins from files, and the pull-only login (issue 10): who may pull what we back up.
USER_FILE = "IMAGE_CLONER_USER_FILE"
"""File holding the push login's user name (a key of a mounted Secret); re-read on change."""
PASS_FILE = "IMAGE_CLONER_PASS_FILE"
"""File holding the push login's password; a trailing newline is dropped; re-read on change."""
PULL_USER = "IMAGE_CLONER_PULL_USER"
"""User name written into the pull Secrets: a login that may only pull from the backup."""
PULL_PASS = "IMAGE_CLONER_PULL_PASS"
"""Its password. Without a pull login the push login goes into pull Secrets (with a warning)."""
PULL_USER_FILE = "IMAGE_CLONER_PULL_USER_FILE"
"""File holding the pull login's user name; re-read on change, and pull Secrets follow."""
PULL_PASS_FILE = "IMAGE_CLONER_PULL_PASS_FILE"
"""File holding the pull login's password; re-read on change, and pull Secrets follow."""

# Admission mode (issue 12): a Pod webhook instead of, or next to, rewriting workloads.
MODE = "IMAGE_CLONER_MODE"
"""`workload` (the seed's: rewrite workloads), `admission` (rewrite new Pods only), `both`."""
WEBHOOK_PORT = "IMAGE_CLONER_WEBHOOK_PORT"
"""HTTPS port of the Pod admission webhook."""
WEBHOOK_CERT_DIR = "IMAGE_CLONER_WEBHOOK_CERT_DIR"
"""Directory with the webhook's `tls.crt` and `tls.key` (a mounted kubernetes.io/tls Secret)."""
Mode = Literal["workload", "admission", "both"]
MODES: tuple[Mode, ...] = ("workload", "admission", "both")
DEFAULT_WEBHOOK_PORT = 8443
DEFAULT_WEBHOOK_CERT_DIR = Path("/etc/image-cloner/webhook")

LEADER_ELECTION = "IMAGE_CLONER_LEADER_ELECTION"
LEASE_NAME = "IMAGE_CLONER_LEADER_ELECTION_LEASE"
LEASE_DURATION = "IMAGE_CLONER_LEADER_ELECTION_LEASE_DURATION"
RENEW_DEADLINE = "IMAGE_CLONER_LEADER_ELECTION_RENEW_DEADLINE"
RETRY_PERIOD = "IMAGE_CLONER_LEADER_ELECTION_RETRY_PERIOD"

REWRITE_FORM = "IMAGE_CLONER_REWRITE_FORM"

# Source-registry credentials (issue 11, docs/private-images.md).
READ_PULL_SECRETS = "IMAGE_CLONER_READ_PULL_SECRETS"
"""Read workloads' pull Secrets and their ServiceAccounts' (opt-in; its own RBAC file)."""
SOURCE_AUTH_FILE = "IMAGE_CLONER_SOURCE_AUTH_FILE"
"""A Docker config.json / containers auth.json serving every namespace; re-read on change."""
CREDENTIAL_PROVIDER_CONFIG = "IMAGE_CLONER_CREDENTIAL_PROVIDER_CONFIG"
"""The kubelet's CredentialProviderConfig file: credential provider plugins to run."""
CREDENTIAL_PROVIDER_BIN_DIR = "IMAGE_CLONER_CREDENTIAL_PROVIDER_BIN_DIR"
"""Where the plugins are (the kubelet's --image-credential-provider-bin-dir); default: the
config file's directory."""
BACKUP_CREDENTIAL_PROVIDER = "IMAGE_CLONER_BACKUP_CREDENTIAL_PROVIDER"
"""The `name` of a plugin of that config whose login is the backup registry's push login
(an ECR token renewed before it expires), instead of `IMAGE_CLONER_USER`/`_PASS`."""

ROLLOUT_TIMEOUT = "IMAGE_CLONER_ROLLOUT_TIMEOUT"
DEFAULT_ROLLOUT_TIMEOUT = 600.0
REFERRERS_RESYNC = "IMAGE_CLONER_REFERRERS_RESYNC"
DEFAULT_REFERRERS_RESYNC = 3600.0

DEFAULT_IGNORED_NAMESPACES = frozenset({"kube-system"})
DEFAULT_PULL_SECRET = "image-cloner-pull"
DEFAULT_METRICS_PORT = 8080
MAX_TRANSFERS_LIMIT = 64
DEFAULT_LEASE_NAME = "image-cloner"
JITTER_FACTOR = 1.2
"""client-go's `leaderelection.JitterFactor`: the renew deadline must exceed retry x this."""
MAX_DURATION = 3600.0

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", re.ASCII)
_DNS_SUBDOMAIN_RE = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*", re.ASCII
)
_USERINFO_RE = re.compile(r"//[^/@]*@")
_SECONDS_RE = re.compile(r"[0-9]{1,6}(\.[0-9]{1,3})?s?", re.ASCII)


class ConfigError(ValueError):
    """A setting is missing or wrong; the message is one line and names the variable."""


@dataclass(frozen=True, kw_only=True)
class LeaderElection:
    """How replicas agree on the one that works: client-go's `leaderelection`, on a Lease."""

    namespace: str
    """Where the Lease lives: the controller's own namespace (`IMAGE_CLONER_POD_NAMESPACE`)."""

    lease_name: str = DEFAULT_LEASE_NAME
    """Name of the `coordination.k8s.io/v1` Lease (`IMAGE_CLONER_LEADER_ELECTION_LEASE`)."""

    lease_duration: float = 15.0
    """Seconds a follower waits, after it last saw the Lease change, before taking it over."""

    renew_deadline: float = 10.0
    """Seconds after its last successful renewal at which a leader stops working."""

    retry_period: float = 2.0
    """Seconds between attempts to acquire or renew."""


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
    added to its `imagePullSecrets`; None when that is switched off or there is no login
    to put in it (neither a pull login nor a push login)."""

    metrics_port: int = DEFAULT_METRICS_PORT
    """Port of `/metrics`, `/healthz` and `/readyz`."""

    log_format: LogFormat = "text"
    """`text` (like the seed's log lines) or `json` (one object per line)."""

    log_level: LogLevel = "info"
    """`debug` shows every decision (inspecting, checking, already cloned); `info` the
    copies, rewrites and failures; `warning` and `error` only problems."""

    # --- never fight a workload's owner ---------------------------------------------

    exclude_images: tuple[ImagePattern, ...] = ()
    """Repository globs (`IMAGE_CLONER_EXCLUDE_IMAGES`, e.g. `registry.corp.example/*`):
    containers whose image matches are neither backed up nor rewritten; the workload's
    other containers still are."""

    rewrite_owned: bool = False
    """`IMAGE_CLONER_REWRITE_OWNED`: rewrite workloads whose `ownerReferences` name a
    controller (an operator made them). Off by default: the operator would put its own
    images back, so they are only backed up, and an Event says why."""

    push_login: Login | None = None
    """The backup registry's login (`IMAGE_CLONER_USER`/`_PASS`, or their `_FILE` forms):
    where it comes from, so that a file-backed one can be re-read when it is rotated."""

    pull_login: Login | None = None
    """The login written into pull Secrets (`IMAGE_CLONER_PULL_USER`/`_PASS`, or their
    `_FILE` forms); None hands out `push_login` instead."""

    # --- source-registry credentials ------------------------------------------------

    read_pull_secrets: bool = False
    source_auth_file: Path | None = None
    credential_plugins: tuple[PluginSpec, ...] = ()
    backup_login_plugin: PluginSpec | None = None
    """The plugin whose login pushes to the backup registry; its tokens are never written
    into pull Secrets (nodes pull with their own provider, or a pull login is set)."""

    @property
    def pull_secret_uses_push_login(self) -> bool:
        """Pull Secrets are written, with the push login in them (no pull login is set)."""
        return self.pull_secret_name is not None and self.pull_login is None

    leader_election: LeaderElection | None = None
    """Lease-based leader election between replicas; None: this process always works."""

    rewrite_form: RewriteForm = "pinned"
    """How a rewritten image names its backup (`IMAGE_CLONER_REWRITE_FORM`): `pinned`
    (`BACKUP/repo:tag@sha256:…`, the digest the pods run, whatever the tag does later) or
    `tag` (the seed's `BACKUP/repo:tag`, only while the backup tag holds that digest;
    else pinned for that image)."""

    rollout_timeout: float = DEFAULT_ROLLOUT_TIMEOUT
    """`IMAGE_CLONER_ROLLOUT_TIMEOUT` (seconds, default 600): a rollout after our rewrite
    that is not complete this long after the rewrite is undone (`controller.rollback`)."""

    referrers_resync: float | None = DEFAULT_REFERRERS_RESYNC
    """`IMAGE_CLONER_REFERRERS_RESYNC` (seconds, default 3600; `never`): how often an image
    already backed up is examined again for signatures attached upstream since its copy
    (`controller.referrer_resync`); None never."""

    # --- admission mode ---------------------------------------------------------
    mode: Mode = "workload"
    """`workload` rewrites workloads (the seed); `admission` serves the Pod webhook and
    never patches a workload (it still backs their images up); `both` does both."""
    webhook_port: int = DEFAULT_WEBHOOK_PORT
    """HTTPS port of the Pod admission webhook (`IMAGE_CLONER_WEBHOOK_PORT`)."""
    webhook_cert_dir: Path = DEFAULT_WEBHOOK_CERT_DIR
    """Where the webhook's `tls.crt` and `tls.key` are mounted; re-read when they change."""

    @property
    def rewrites_workloads(self) -> bool:
        return self.mode != "admission"

    @property
    def serves_webhook(self) -> bool:
        return self.mode != "workload"

    @property
    def backup_credentials(self) -> Credentials | None:
        """The backup registry's (push) login as read at start."""
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
        push_login = _login(env, USER, PASS, user_file=USER_FILE, pass_file=PASS_FILE)
        pull_login = _login(
            env, PULL_USER, PULL_PASS, user_file=PULL_USER_FILE, pass_file=PULL_PASS_FILE
        )
        has_credentials = push_login is not None or pull_login is not None
        plugins = _plugins(env)
        mode, webhook_port, webhook_cert_dir = _admission(env)
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
            exclude_images=_image_patterns(env, EXCLUDE_IMAGES),
            rewrite_owned=_boolean(env, REWRITE_OWNED, default=False),
            push_login=push_login,
            pull_login=pull_login,
            leader_election=_leader_election(env, pod_namespace),
            mode=mode,
            webhook_port=webhook_port,
            webhook_cert_dir=webhook_cert_dir,
            rewrite_form=_choice(env, REWRITE_FORM, REWRITE_FORMS, default="pinned"),
            read_pull_secrets=_boolean(env, READ_PULL_SECRETS, default=False),
            source_auth_file=_readable(env, SOURCE_AUTH_FILE),
            credential_plugins=plugins,
            backup_login_plugin=_backup_plugin(env, plugins, backup, push_login),
            rollout_timeout=_seconds(env, ROLLOUT_TIMEOUT, default=DEFAULT_ROLLOUT_TIMEOUT),
            referrers_resync=_resync(env, options),
        )


def registry_options_from_env(
    env: Mapping[str, str],
    *,
    backup_host: str | None,
    extra_credentials: Mapping[str, Credentials] | None = None,
    extra_insecure_hosts: Iterable[str] = (),
    ca_file: Path | None = None,
    referrers: str | None = None,
) -> RegistryOptions:
    """Registry options from the environment, plus what the CLI's flags add.

    `IMAGE_CLONER_USER` / `IMAGE_CLONER_PASS` (or their `_FILE` forms, read once here)
    become the credentials of `backup_host` (the computed or given destination); they
    are an error when `backup_host` is None.
    `extra_credentials` (`--src-creds`, `--dest-creds`, keyed by registry host) win over
    them, `extra_insecure_hosts` add to `IMAGE_CLONER_INSECURE_REGISTRIES`, `ca_file`
    replaces `IMAGE_CLONER_CA_FILE` and `referrers` (`copy --referrers`) `IMAGE_CLONER_REFERRERS`.
    """
    credentials: dict[str, Credentials] = {}
    login = _login(env, USER, PASS, user_file=USER_FILE, pass_file=PASS_FILE)
    if login is not None:
        if backup_host is None:
            raise ConfigError(f"{USER}: set, but there is no backup registry to use it for")
        credentials[_host(backup_host, what="backup registry")] = login.first
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
        referrers=_referrers(referrers if referrers is not None else _get(env, REFERRERS)),
    )


def _referrers(text: str | None) -> ReferrersPolicy:
    try:
        return ReferrersPolicy() if text is None else ReferrersPolicy.parse(text)
    except ValueError as error:
        raise ConfigError(f"{REFERRERS}: {error}") from None


def parse_credentials(text: str, *, what: str) -> Credentials:
    """`USERNAME:PASSWORD`, as skopeo's `--src-creds`; the error never repeats `text`."""
    username, colon, password = text.partition(":")
    if not colon or not username or not password:
        raise ConfigError(f"{what}: expected USERNAME:PASSWORD")
    return Credentials(username, password)


def backup_location_from_env(env: Mapping[str, str]) -> BackupLocation:
    """`IMAGE_CLONER_REGISTRY`, checked, for commands that need no other setting."""
    return _backup_location(env)


def pull_secret_name_from_env(env: Mapping[str, str]) -> str:
    """The pull Secret's name (`IMAGE_CLONER_PULL_SECRET`), even where `Settings` has none
    (no credentials here): `revert` removes what a controller configured so once added."""
    return _secret_name(env)


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


def _login(
    env: Mapping[str, str], user: str, password: str, *, user_file: str, pass_file: str
) -> Login | None:
    """A login from a user variable and a password variable, each inline or as a file."""
    username = _secret(env, user, user_file, password=False)
    secret = _secret(env, password, pass_file, password=True)
    if username is None and secret is None:
        return None
    if username is None:
        raise ConfigError(
            f"{secret.variable if secret else password} is set but {user} is not:"
            " set both or neither"
        )
    if secret is None:
        raise ConfigError(f"{username.variable} is set but {password} is not: set both or neither")
    try:
        return Login.load(username=username, password=secret)
    except CredentialError as error:
        raise ConfigError(str(error)) from None


def _secret(env: Mapping[str, str], name: str, file_name: str, *, password: bool) -> Secret | None:
    """One half of a login: the variable's value, or the file its `_FILE` twin names."""
    # A password read from a file often ends with a newline; blanks may be meant.
    value = env.get(name, "").rstrip("\r\n") if password else _get(env, name)
    path = _get(env, file_name)
    if value and path is not None:
        raise ConfigError(f"{name} and {file_name} are both set: use one of them")
    if path is not None:
        return Secret(variable=file_name, path=Path(path), password=password)
    if value:
        return Secret(variable=name, value=value, password=password)
    return None


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


def _image_patterns(env: Mapping[str, str], name: str) -> tuple[ImagePattern, ...]:
    try:
        return parse_image_patterns(_get(env, name) or "")
    except ValueError as error:
        raise ConfigError(f"{name}: {error}") from None


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


def _leader_election(env: Mapping[str, str], pod_namespace: str | None) -> LeaderElection | None:
    if not _boolean(env, LEADER_ELECTION, default=False):
        return None
    if pod_namespace is None:
        raise ConfigError(f"{LEADER_ELECTION}: needs {POD_NAMESPACE}, the namespace of the Lease")
    name = _get(env, LEASE_NAME) or DEFAULT_LEASE_NAME
    if len(name) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(name):
        raise ConfigError(f"{LEASE_NAME}: {name!r} is not a Lease name (a DNS subdomain)")
    defaults = LeaderElection(namespace=pod_namespace)
    lease = _seconds(env, LEASE_DURATION, default=defaults.lease_duration)
    renew = _seconds(env, RENEW_DEADLINE, default=defaults.renew_deadline)
    retry = _seconds(env, RETRY_PERIOD, default=defaults.retry_period)
    # client-go's NewLeaderElector checks, in its order and with its jitter factor.
    if lease <= renew:
        raise ConfigError(
            f"{LEASE_DURATION} ({lease:g}s) must be greater than {RENEW_DEADLINE} ({renew:g}s)"
        )
    if renew <= JITTER_FACTOR * retry:
        raise ConfigError(
            f"{RENEW_DEADLINE} ({renew:g}s) must be greater than"
            f" {RETRY_PERIOD} x {JITTER_FACTOR} ({retry * JITTER_FACTOR:g}s)"
        )
    if not lease.is_integer():
        # The Lease stores whole seconds; rounding either way would change the promise.
        raise ConfigError(f"{LEASE_DURATION}: the Lease holds whole seconds, got {lease:g}")
    return LeaderElection(
        namespace=pod_namespace,
        lease_name=name,
        lease_duration=lease,
        renew_deadline=renew,
        retry_period=retry,
    )


def _seconds(env: Mapping[str, str], name: str, *, default: float) -> float:
    """A duration in seconds: `15`, `15s`, `0.5` or `0.5s` (Go's `15s` reads the same)."""
    value = _get(env, name)
    if value is None:
        return default
    if not _SECONDS_RE.fullmatch(value) or not 0 < float(value.rstrip("s")) <= MAX_DURATION:
        raise ConfigError(
            f"{name}: expected seconds greater than 0 and at most {MAX_DURATION:g}"
            f" (e.g. 15 or 15s), got {value!r}"
        )
    return float(value.rstrip("s"))


def _resync(env: Mapping[str, str], options: RegistryOptions) -> float | None:
    """`IMAGE_CLONER_REFERRERS_RESYNC`: seconds, or `never` (implied by referrers `none`)."""
    if _get(env, REFERRERS_RESYNC) == "never" or not options.referrers.enabled:
        return None
    return _seconds(env, REFERRERS_RESYNC, default=DEFAULT_REFERRERS_RESYNC)


def _admission(env: Mapping[str, str]) -> tuple[Mode, int, Path]:
    """The admission-mode block: mode, webhook port, serving certificate directory."""
    mode = _choice(env, MODE, MODES, default="workload")
    port = _integer(env, WEBHOOK_PORT, default=DEFAULT_WEBHOOK_PORT, top=65535)
    cert_dir = Path(_get(env, WEBHOOK_CERT_DIR) or DEFAULT_WEBHOOK_CERT_DIR)
    if mode != "workload":
        # Refuse to start rather than serve a webhook the apiserver cannot talk to.
        for name in ("tls.crt", "tls.key"):
            if not (cert_dir / name).is_file():
                raise ConfigError(
                    f"{WEBHOOK_CERT_DIR}: no {name} in {cert_dir} (needed by {MODE}={mode})"
                )
    return mode, port, cert_dir


def _log_format(env: Mapping[str, str]) -> LogFormat:
    return _choice(env, LOG_FORMAT, LOG_FORMATS, default="text")


def _choice(env: Mapping[str, str], name: str, known: tuple[T, ...], *, default: T) -> T:
    value = (_get(env, name) or default).lower()
    for choice in known:
        if value == choice:
            return choice
    raise ConfigError(f"{name}: expected {' or '.join(known)}, got {value!r}")


def _readable(env: Mapping[str, str], name: str) -> Path | None:
    text = _get(env, name)
    if text is None:
        return None
    if not Path(text).is_file():
        raise ConfigError(f"{name}: {text} is not a file")
    return Path(text)


def _plugins(env: Mapping[str, str]) -> tuple[PluginSpec, ...]:
    config = _readable(env, CREDENTIAL_PROVIDER_CONFIG)
    if config is None:
        return ()
    from image_cloner.credential_plugins import CredentialPluginError, load_provider_config

    bin_dir = Path(_get(env, CREDENTIAL_PROVIDER_BIN_DIR) or config.parent)
    try:
        return load_provider_config(config, bin_dir=bin_dir)
    except CredentialPluginError as error:
        raise ConfigError(f"{CREDENTIAL_PROVIDER_CONFIG}: {error}") from None


def _backup_plugin(
    env: Mapping[str, str],
    plugins: tuple[PluginSpec, ...],
    backup: BackupLocation,
    push_login: Login | None,
) -> PluginSpec | None:
    name = _get(env, BACKUP_CREDENTIAL_PROVIDER)
    if name is None:
        return None
    if push_login is not None:
        raise ConfigError(f"{BACKUP_CREDENTIAL_PROVIDER} and {USER}/{PASS} are both set: use one")
    for spec in plugins:
        if spec.name == name:
            if not spec.matches(str(backup)):
                raise ConfigError(
                    f"{BACKUP_CREDENTIAL_PROVIDER}: provider {name!r} does not match the"
                    f" backup registry {backup} (its matchImages: {', '.join(spec.match_images)})"
                )
            return spec
    known = ", ".join(spec.name for spec in plugins) or f"none: {CREDENTIAL_PROVIDER_CONFIG} unset"
    raise ConfigError(f"{BACKUP_CREDENTIAL_PROVIDER}: no provider {name!r} (configured: {known})")
