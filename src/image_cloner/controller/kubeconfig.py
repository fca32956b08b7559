"""Where the apiserver is and who we are to it: a kubeconfig, or the pod's ServiceAccount.

client-go's rules for the parts a controller and its CLI meet:

- in a pod (`KUBERNETES_SERVICE_HOST` set, no `--kubeconfig`) the ServiceAccount's token,
  CA and the service's address; the token file is re-read at most once a minute, as
  client-go's `NewCachedFileTokenSource` does, so a rotated (bound, expiring) token is used;
- otherwise `--kubeconfig`, else every file of `$KUBECONFIG` (missing ones skipped), else
  `~/.kube/config`. Files are merged as client-go merges them: for each cluster, user and
  context name the first file that defines it wins, and the first non-empty
  `current-context`; relative paths are relative to the file that names them;
- a cluster's `server`, `certificate-authority(-data)`, `insecure-skip-tls-verify` and
  `proxy-url`; a user's `token`/`tokenFile`, `client-certificate(-data)`/`client-key(-data)`,
  `username`/`password`, and `exec` credential plugins (client.authentication.k8s.io v1 and
  v1beta1: what `aws eks get-token`, `gke-gcloud-auth-plugin` and `kubelogin` are), run
  without a terminal and again once their `expirationTimestamp` has passed or the apiserver
  refuses the token. What we cannot honour (`auth-provider`, impersonation, `tls-server-name`,
  a plugin answering with a client certificate) is a `ConfigError` naming the field, never
  silently ignored.

Why not kubernetes_asyncio's loader (docs/decisions.md, 24): it lives in a package whose
`__init__` imports every generated API and model, and kopf imports that package whenever it
is installed: 67 MiB of the controller's memory for the dozen REST calls `kube.py` makes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import ssl
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import yaml

from image_cloner.settings import ConfigError

__all__ = [
    "SERVICE_ACCOUNT",
    "Endpoint",
    "ExecPlugin",
    "Identity",
    "StaticIdentity",
    "TokenFile",
    "load_endpoint",
]

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where the kubelet mounts a pod's ServiceAccount token and the cluster's CA."""

TOKEN_FILE_PERIOD = 60.0
"""Seconds a token read from a file is used before the file is read again (client-go's)."""

EXEC_TIMEOUT = 60.0
"""Seconds an exec credential plugin may take (client-go waits for ever; a hung plugin must
not hold every API call of the controller)."""

_EXEC_API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")


@dataclass(frozen=True)
class Identity:
    """What goes into the Authorization header, and until when it is good."""

    token: str | None = None
    username: str | None = None
    password: str | None = None
    expires: datetime | None = None

    def header(self) -> str | None:
        if self.token:
            return f"Bearer {self.token}"
        if self.username is not None and self.password is not None:
            pair = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
            return f"Basic {pair}"
        return None


class IdentitySource(Protocol):
    """Where the current `Identity` comes from. `refused` says the apiserver said 401;
    it returns whether the next `identity` may differ (worth sending the request again)."""

    async def identity(self) -> Identity: ...
    def refused(self) -> bool: ...


@dataclass
class StaticIdentity:
    """A token or basic login written in the kubeconfig itself (or none at all)."""

    value: Identity = field(default_factory=Identity)

    async def identity(self) -> Identity:
        return self.value

    def refused(self) -> bool:
        """Nothing to renew: the next request would send the same and get the same answer."""
        return False


@dataclass
class TokenFile:
    """A token read from a file, again once `TOKEN_FILE_PERIOD` has passed or after a 401."""

    path: Path
    _token: str = ""
    _read_at: float = -TOKEN_FILE_PERIOD

    async def identity(self) -> Identity:
        if time.monotonic() - self._read_at >= TOKEN_FILE_PERIOD or not self._token:
            try:
                self._token = self.path.read_text().strip()
            except OSError as e:
                if not self._token:  # a rotation in progress keeps the last good token
                    raise ConfigError(f"cannot read the token file {self.path}: {e}") from None
            self._read_at = time.monotonic()
        return Identity(token=self._token)

    def refused(self) -> bool:
        self._read_at = -TOKEN_FILE_PERIOD
        return True


@dataclass
class ExecPlugin:
    """A client.authentication.k8s.io credential plugin: run, cached until it expires."""

    command: str
    args: Sequence[str]
    env: Mapping[str, str]
    api_version: str
    cluster: Mapping[str, Any] | None = None
    _current: Identity | None = None
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def identity(self) -> Identity:
        async with self._lock:  # concurrent requests wait for one run, not one run each
            current = self._current
            if current is None or (current.expires and datetime.now(UTC) >= current.expires):
                current = self._current = await self._run()
            return current

    def refused(self) -> bool:
        self._current = None
        return True

    async def _run(self) -> Identity:
        spec: dict[str, Any] = {"interactive": False}
        if self.cluster is not None:
            spec["cluster"] = self.cluster
        info = {"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec}
        env = {**os.environ, **self.env, "KUBERNETES_EXEC_INFO": json.dumps(info)}
        name = Path(self.command).name
        try:
            process = await asyncio.create_subprocess_exec(
                self.command,
                *self.args,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                # Its advice ("run aws sso login") goes to the user's terminal, as kubectl does.
                stderr=None,
            )
        except OSError as e:
            raise ConfigError(f"exec credential plugin {name}: {e.strerror}") from None
        try:
            out, _ = await asyncio.wait_for(process.communicate(), EXEC_TIMEOUT)
        except TimeoutError:
            process.kill()
            await process.wait()
            message = f"exec credential plugin {name}: no answer in {EXEC_TIMEOUT:g}s"
            raise ConfigError(message) from None
        if process.returncode != 0:
            raise ConfigError(f"exec credential plugin {name} exited {process.returncode}")
        return _exec_identity(name, out)


def _exec_identity(name: str, out: bytes) -> Identity:
    try:
        answer = json.loads(out)
        status = answer["status"]
    except (ValueError, KeyError, TypeError):
        raise ConfigError(f"exec credential plugin {name}: no ExecCredential status") from None
    if status.get("clientCertificateData"):
        raise ConfigError(f"exec credential plugin {name}: client certificates not supported")
    token = status.get("token")
    if not token:
        raise ConfigError(f"exec credential plugin {name}: no token in its answer")
    expires = None
    if stamp := status.get("expirationTimestamp"):
        try:
            expires = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
        except ValueError:
            raise ConfigError(f"exec credential plugin {name}: bad expirationTimestamp") from None
        if expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
    return Identity(token=str(token), expires=expires)


@dataclass(frozen=True)
class Endpoint:
    """One apiserver, how to trust it, and who we are to it."""

    server: str
    source: IdentitySource
    ca_file: str | None = None
    ca_data: str | None = None
    insecure: bool = False
    cert_file: str | None = None
    key_file: str | None = None
    cert_data: str | None = None
    key_data: str | None = None
    proxy_url: str | None = None

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS settings for an https server (None for plain http, as tests use)."""
        if not self.server.startswith("https:"):
            return None
        # A kubeconfig's CA replaces the system store, as in client-go.
        context = ssl.create_default_context(cafile=self.ca_file, cadata=self.ca_data)
        if self.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        if self.cert_file and self.key_file:
            context.load_cert_chain(self.cert_file, self.key_file)
        elif self.cert_data and self.key_data:
            # Python's ssl loads a key from files only: written 0600 for the moment it takes.
            with tempfile.TemporaryDirectory() as folder:
                cert, key = Path(folder, "cert.pem"), Path(folder, "key.pem")
                for path, data in ((cert, self.cert_data), (key, self.key_data)):
                    path.touch(mode=0o600)
                    path.write_text(data)
                context.load_cert_chain(cert, key)
        return context


def load_endpoint(
    kubeconfig: str | None,
    *,
    environ: Mapping[str, str] = os.environ,
    service_account: Path = SERVICE_ACCOUNT,
) -> Endpoint:
    """The endpoint for `--kubeconfig` (None: in-cluster, else $KUBECONFIG, ~/.kube/config)."""
    if kubeconfig is None and environ.get("KUBERNETES_SERVICE_HOST"):
        return _in_cluster(environ, service_account)
    if kubeconfig is not None:
        paths = [Path(kubeconfig)]
        if not paths[0].is_file():
            raise ConfigError(f"--kubeconfig: no such file: {kubeconfig}")
    elif environ.get("KUBECONFIG"):
        paths = [Path(p) for p in environ["KUBECONFIG"].split(os.pathsep) if p]
        paths = [p for p in paths if p.is_file()]
    else:
        paths = [p for p in [Path(environ.get("HOME", "~"), ".kube", "config")] if p.is_file()]
    if not paths:
        raise ConfigError("no kubeconfig: set KUBECONFIG or --kubeconfig, or run in a pod")
    return _from_files(paths)


def _in_cluster(environ: Mapping[str, str], folder: Path) -> Endpoint:
    host, port = environ["KUBERNETES_SERVICE_HOST"], environ.get("KUBERNETES_SERVICE_PORT")
    if not port:
        raise ConfigError("in a pod, but KUBERNETES_SERVICE_PORT is not set")
    host = f"[{host}]" if ":" in host else host  # an IPv6 service address
    return Endpoint(
        server=f"https://{host}:{port}",
        source=TokenFile(folder / "token"),
        ca_file=str(folder / "ca.crt"),
    )


@dataclass(frozen=True)
class _Entry:
    """A named cluster, user or context, and the folder its relative paths start from."""

    value: Mapping[str, Any]
    folder: Path

    def path(self, key: str) -> str | None:
        given = self.value.get(key)
        return str(self.folder / given) if given else None

    def data(self, key: str) -> str | None:
        given = self.value.get(key)
        if not given:
            return None
        try:
            return base64.b64decode(str(given), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ConfigError(f"kubeconfig: {key} is not base64-encoded PEM") from None


def _from_files(paths: Sequence[Path]) -> Endpoint:
    named: dict[str, dict[str, _Entry]] = {"clusters": {}, "users": {}, "contexts": {}}
    current = ""
    for path in paths:
        try:
            document = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"kubeconfig {path}: cannot be read: {e}") from None
        if not isinstance(document, Mapping):
            raise ConfigError(f"kubeconfig {path}: not a kubeconfig")
        folder = path.resolve().parent
        for section, singular in (
            ("clusters", "cluster"),
            ("users", "user"),
            ("contexts", "context"),
        ):
            for item in document.get(section) or []:
                if isinstance(item, Mapping) and item.get("name"):
                    value = item.get(singular) or {}
                    named[section].setdefault(str(item["name"]), _Entry(value, folder))
        current = current or str(document.get("current-context") or "")
    if not current:
        raise ConfigError("kubeconfig: no current-context")
    context = _named(named, "contexts", current)
    cluster = _named(named, "clusters", str(context.value.get("cluster") or ""))
    user = named["users"].get(str(context.value.get("user") or ""), _Entry({}, Path()))
    return _endpoint(cluster, user)


def _named(named: Mapping[str, Mapping[str, _Entry]], section: str, name: str) -> _Entry:
    if name not in named[section]:
        raise ConfigError(f"kubeconfig: no {section[:-1]} named {name!r}")
    return named[section][name]


def _endpoint(cluster: _Entry, user: _Entry) -> Endpoint:
    for key, fields in ((cluster, ("tls-server-name",)), (user, ("auth-provider", "as"))):
        for name in fields:
            if key.value.get(name):
                raise ConfigError(f"kubeconfig: {name} is not supported")
    server = str(cluster.value.get("server") or "").rstrip("/")
    if not server:
        raise ConfigError("kubeconfig: the cluster has no server")
    ca_data = cluster.data("certificate-authority-data")
    cert_data = user.data("client-certificate-data")
    key_data = user.data("client-key-data")
    return Endpoint(
        server=server,
        source=_source(user, cluster, server=server, ca_data=ca_data),
        # client-go: embedded data wins over a file named next to it.
        ca_file=None if ca_data else cluster.path("certificate-authority"),
        ca_data=ca_data,
        insecure=bool(cluster.value.get("insecure-skip-tls-verify")),
        cert_file=None if cert_data else user.path("client-certificate"),
        key_file=None if key_data else user.path("client-key"),
        cert_data=cert_data,
        key_data=key_data,
        proxy_url=cluster.value.get("proxy-url") or None,
    )


def _source(user: _Entry, cluster: _Entry, *, server: str, ca_data: str | None) -> IdentitySource:
    if token_file := user.path("tokenFile"):
        return TokenFile(Path(token_file))  # client-go: a token file wins over a token
    if token := user.value.get("token"):
        return StaticIdentity(Identity(token=str(token)))
    if spec := user.value.get("exec"):
        return _exec_plugin(spec, user.folder, server=server, ca_data=ca_data, cluster=cluster)
    if user.value.get("username") is not None and user.value.get("password") is not None:
        login = Identity(username=str(user.value["username"]), password=str(user.value["password"]))
        return StaticIdentity(login)
    return StaticIdentity()


def _exec_plugin(
    spec: Mapping[str, Any], folder: Path, *, server: str, ca_data: str | None, cluster: _Entry
) -> ExecPlugin:
    api_version = str(spec.get("apiVersion") or "")
    if api_version not in _EXEC_API_VERSIONS:
        raise ConfigError(f"kubeconfig: exec apiVersion {api_version!r} is not supported")
    if spec.get("interactiveMode") == "Always":
        raise ConfigError("kubeconfig: exec plugin wants a terminal (interactiveMode: Always)")
    command = str(spec.get("command") or "")
    if not command:
        raise ConfigError("kubeconfig: exec has no command")
    if os.sep in command and not os.path.isabs(command):
        command = str(folder / command)  # client-go: relative to the kubeconfig
    env = {str(e["name"]): str(e.get("value", "")) for e in spec.get("env") or [] if e.get("name")}
    info = None
    if spec.get("provideClusterInfo"):
        info = {
            "server": server,
            "insecure-skip-tls-verify": bool(cluster.value.get("insecure-skip-tls-verify")),
        }
        if ca_data:
            info["certificate-authority-data"] = base64.b64encode(ca_data.encode()).decode()
    return ExecPlugin(
        command=command,
        args=[str(a) for a in spec.get("args") or []],
        env=env,
        api_version=api_version,
        cluster=info,
    )
