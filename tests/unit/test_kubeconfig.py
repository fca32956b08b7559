"""Finding the apiserver and our identity: client-go's kubeconfig rules, in-cluster, exec plugins.

The exec plugin is a real executable speaking client.authentication.k8s.io/v1; the client's
requests go to a real aiohttp server on loopback that checks the Authorization header.
"""

from __future__ import annotations

import base64
import json
import sys
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from image_cloner.controller import kubeconfig as kubeconfig_module
from image_cloner.controller.kube import Kube
from image_cloner.controller.kube_errors import KubeApiError, Unreachable
from image_cloner.controller.kubeconfig import (
    Endpoint,
    ExecPlugin,
    Identity,
    StaticIdentity,
    TokenFile,
    load_endpoint,
)
from image_cloner.settings import ConfigError
from image_cloner.workloads import DEPLOYMENT
from tests.support.loopback import serving

PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

PLUGIN = """
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
with open(os.environ["PLUGIN_RUNS"], "a") as runs:
    runs.write(json.dumps({"info": info, "args": sys.argv[1:]}) + "\\n")
if os.environ.get("PLUGIN_FAIL"):
    sys.exit(3)
token = open(os.environ["PLUGIN_TOKEN_FILE"]).read().strip()
status = {"token": token}
if os.environ.get("PLUGIN_EXPIRES"):
    status["expirationTimestamp"] = os.environ["PLUGIN_EXPIRES"]
print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": status}))
"""


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def write(path: Path, document: Mapping[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document))
    return path


def config(
    *, current: str = "", clusters: Any = (), users: Any = (), contexts: Any = ()
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "clusters": [{"name": n, "cluster": c} for n, c in clusters],
        "users": [{"name": n, "user": u} for n, u in users],
        "contexts": [{"name": n, "context": c} for n, c in contexts],
    }


def plugin(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "token-plugin"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!{sys.executable}\n{PLUGIN}")
    path.chmod(0o755)
    return path


def runs(tmp_path: Path) -> list[dict[str, Any]]:
    lines = (tmp_path / "runs").read_text().splitlines() if (tmp_path / "runs").exists() else []
    return [json.loads(line) for line in lines]


def exec_user(tmp_path: Path, *, expires: str = "", **extra: Any) -> dict[str, Any]:
    (tmp_path / "token").write_text("first-token\n")
    env = [
        {"name": "PLUGIN_RUNS", "value": str(tmp_path / "runs")},
        {"name": "PLUGIN_TOKEN_FILE", "value": str(tmp_path / "token")},
        {"name": "PLUGIN_EXPIRES", "value": expires},
    ]
    spec = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "command": "./bin/token-plugin",  # relative to the kubeconfig, as client-go resolves it
        "args": ["get-token", "--cluster", "test"],
        "env": env,
        "interactiveMode": "IfAvailable",
        **extra,
    }
    return {"exec": spec}


def test_kubeconfig_files_merge_first_name_wins_and_paths_are_their_own(tmp_path: Path) -> None:
    first = write(
        tmp_path / "a" / "config",
        config(
            clusters=[
                ("prod", {"server": "https://prod.example:6443", "certificate-authority": "ca.pem"})
            ],
            users=[("admin", {"token": "from-a"})],
            contexts=[("prod", {"cluster": "prod", "user": "admin"})],
        ),
    )
    second = write(
        tmp_path / "b" / "config",
        config(
            current="prod",
            clusters=[("prod", {"server": "https://other.example"})],
            users=[
                ("admin", {"token": "from-b"}),
                ("cert", {"client-certificate": "c.pem", "client-key": "k.pem"}),
            ],
        ),
    )
    endpoint = load_endpoint(
        None, environ={"KUBECONFIG": f"{first}:{tmp_path / 'missing'}:{second}"}
    )
    assert endpoint.server == "https://prod.example:6443"
    assert endpoint.ca_file == str(tmp_path / "a" / "ca.pem")
    assert isinstance(endpoint.source, StaticIdentity)
    assert endpoint.source.value == Identity(token="from-a")


async def test_embedded_data_wins_over_files_and_a_token_file_over_a_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("from-file\n")
    path = write(
        tmp_path / "config",
        config(
            current="c",
            clusters=[
                (
                    "c",
                    {
                        "server": "https://k:6443/",
                        "certificate-authority": "ca.pem",
                        "certificate-authority-data": b64(PEM),
                    },
                )
            ],
            users=[
                (
                    "u",
                    {
                        "token": "inline",
                        "tokenFile": "token",
                        "client-certificate-data": b64(PEM),
                        "client-key-data": b64("KEY"),
                        "client-key": "k.pem",
                    },
                )
            ],
            contexts=[("c", {"cluster": "c", "user": "u"})],
        ),
    )
    endpoint = load_endpoint(str(path))
    assert endpoint.server == "https://k:6443"
    assert (endpoint.ca_file, endpoint.ca_data) == (None, PEM)
    assert (endpoint.key_file, endpoint.key_data, endpoint.cert_data) == (None, "KEY", PEM)
    assert await endpoint.source.identity() == Identity(token="from-file")


@pytest.mark.parametrize(
    ("cluster", "user", "complaint"),
    [
        ({"server": "https://k", "tls-server-name": "x"}, {}, "tls-server-name is not supported"),
        (
            {"server": "https://k"},
            {"auth-provider": {"name": "oidc"}},
            "auth-provider is not supported",
        ),
        ({"server": "https://k"}, {"as": "someone"}, "as is not supported"),
        ({}, {}, "the cluster has no server"),
        ({"server": "https://k", "certificate-authority-data": "not base64!"}, {}, "not base64"),
        (
            {"server": "https://k"},
            {"exec": {"apiVersion": "client.authentication.k8s.io/v1alpha1", "command": "x"}},
            "exec apiVersion",
        ),
        (
            {"server": "https://k"},
            {
                "exec": {
                    "apiVersion": "client.authentication.k8s.io/v1",
                    "command": "x",
                    "interactiveMode": "Always",
                }
            },
            "wants a terminal",
        ),
    ],
)
def test_what_cannot_be_honoured_is_an_error_naming_it(
    tmp_path: Path, cluster: dict[str, Any], user: dict[str, Any], complaint: str
) -> None:
    path = write(
        tmp_path / "config",
        config(
            current="c",
            clusters=[("c", cluster)],
            users=[("u", user)],
            contexts=[("c", {"cluster": "c", "user": "u"})],
        ),
    )
    with pytest.raises(ConfigError, match=complaint):
        load_endpoint(str(path))


def test_missing_files_and_contexts_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_endpoint(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="no kubeconfig"):
        load_endpoint(None, environ={"HOME": str(tmp_path)})
    path = write(tmp_path / "config", config(current="gone"))
    with pytest.raises(ConfigError, match="no context named 'gone'"):
        load_endpoint(str(path))


async def test_in_cluster_reads_the_service_account_and_rereads_a_rotated_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "token").write_text("first")
    environ = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    endpoint = load_endpoint(None, environ=environ, service_account=tmp_path)
    assert endpoint.server == "https://[fd00::1]:443"
    assert endpoint.ca_file == str(tmp_path / "ca.crt")
    assert await endpoint.source.identity() == Identity(token="first")
    (tmp_path / "token").write_text("second")  # the kubelet rotated the bound token
    assert await endpoint.source.identity() == Identity(token="first"), "re-read once a minute"
    monkeypatch.setattr(kubeconfig_module, "TOKEN_FILE_PERIOD", 0.0)
    assert await endpoint.source.identity() == Identity(token="second")
    (tmp_path / "token").unlink()  # mid-rotation: the last good token is kept
    assert await endpoint.source.identity() == Identity(token="second")
    with pytest.raises(ConfigError, match="token file"):
        await TokenFile(tmp_path / "token").identity()


async def test_an_exec_plugin_runs_once_until_its_token_expires(tmp_path: Path) -> None:
    plugin(tmp_path)
    expires = (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    path = write(
        tmp_path / "config",
        config(
            current="c",
            clusters=[("c", {"server": "https://k:6443", "certificate-authority-data": b64(PEM)})],
            users=[("u", exec_user(tmp_path, expires=expires, provideClusterInfo=True))],
            contexts=[("c", {"cluster": "c", "user": "u"})],
        ),
    )
    source = load_endpoint(str(path)).source
    assert isinstance(source, ExecPlugin)
    first = await source.identity()
    assert first.token == "first-token"
    assert first.expires == datetime.fromisoformat(expires.replace("Z", "+00:00"))
    (tmp_path / "token").write_text("second-token")
    assert (await source.identity()).token == "first-token", "cached until it expires"
    [run] = runs(tmp_path)
    assert run["args"] == ["get-token", "--cluster", "test"]
    assert run["info"]["apiVersion"] == "client.authentication.k8s.io/v1"
    assert run["info"]["spec"]["interactive"] is False
    assert run["info"]["spec"]["cluster"]["server"] == "https://k:6443"
    assert run["info"]["spec"]["cluster"]["certificate-authority-data"] == b64(PEM)
    source.refused()  # the apiserver said 401
    assert (await source.identity()).token == "second-token"
    assert len(runs(tmp_path)) == 2


async def test_an_expired_or_failing_plugin(tmp_path: Path) -> None:
    plugin(tmp_path)
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    user = exec_user(tmp_path, expires=past)
    path = write(
        tmp_path / "config",
        config(
            current="c",
            clusters=[("c", {"server": "https://k"})],
            users=[("u", user)],
            contexts=[("c", {"cluster": "c", "user": "u"})],
        ),
    )
    source = load_endpoint(str(path)).source
    await source.identity()
    await source.identity()
    assert len(runs(tmp_path)) == 2, "an expired token is not used again"
    assert isinstance(source, ExecPlugin)
    failing = ExecPlugin(
        command=source.command,
        args=[],
        env={**source.env, "PLUGIN_FAIL": "1"},
        api_version=source.api_version,
    )
    with pytest.raises(ConfigError, match="token-plugin exited 3"):
        await failing.identity()


@pytest.fixture
async def apiserver() -> AsyncIterator[tuple[str, list[web.Request], dict[str, str]]]:
    """A loopback server that accepts only `Bearer <accepted["token"]>`, else answers 401."""
    seen: list[web.Request] = []
    accepted = {"token": "good"}

    async def handle(request: web.Request) -> web.Response:
        seen.append(request)
        if request.headers.get("Authorization") != f"Bearer {accepted['token']}":
            status = {"kind": "Status", "status": "Failure", "reason": "Unauthorized", "code": 401}
            return web.json_response(status, status=401)
        return web.json_response({"kind": "Deployment", "metadata": {"name": "web"}})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    async with serving(app) as url:
        yield url, seen, accepted


async def test_a_refused_token_is_renewed_once_and_the_request_sent_again(
    tmp_path: Path, apiserver: tuple[str, list[web.Request], dict[str, str]]
) -> None:
    server, seen, accepted = apiserver
    plugin(tmp_path)
    path = write(
        tmp_path / "config",
        config(
            current="c",
            clusters=[("c", {"server": server})],
            users=[("u", exec_user(tmp_path))],
            contexts=[("c", {"cluster": "c", "user": "u"})],
        ),
    )
    kube = await Kube.connect(kubeconfig=str(path))  # runs the plugin: "first-token"
    try:
        (tmp_path / "token").write_text("good")
        found = await kube.read_workload(DEPLOYMENT, "demo", "web")
        assert found == {"kind": "Deployment", "metadata": {"name": "web"}}
        assert [r.headers["Authorization"] for r in seen] == ["Bearer first-token", "Bearer good"]
        assert seen[-1].path == "/apis/apps/v1/namespaces/demo/deployments/web"
        assert seen[-1].headers["User-Agent"].startswith("image-cloner/")
        await kube.patch_workload(
            DEPLOYMENT, "demo", "web", [{"op": "test", "path": "/x", "value": 1}]
        )
        assert seen[-1].query.get("fieldManager") == "image-cloner"
        assert seen[-1].headers["Content-Type"] == "application/json-patch+json"
        accepted["token"] = "newer"  # revoked; the plugin still hands out a wrong one
        (tmp_path / "token").write_text("still-wrong")
        with pytest.raises(KubeApiError) as refused:
            await kube.read_workload(DEPLOYMENT, "demo", "web")
        assert (refused.value.status, refused.value.reason) == (401, "Unauthorized")
    finally:
        await kube.close()
    auth = [r.headers["Authorization"] for r in seen]
    assert auth[-2:] == ["Bearer good", "Bearer still-wrong"]
    assert len(runs(tmp_path)) == 3, "each refusal runs the plugin once, never in a loop"


async def test_a_plugin_that_fails_mid_run_is_an_unreachable_apiserver(tmp_path: Path) -> None:
    failing = ExecPlugin(
        command=str(tmp_path / "missing-plugin"),
        args=[],
        env={},
        api_version="client.authentication.k8s.io/v1",
    )
    kube = Kube(Endpoint(server="http://127.0.0.1:9", source=failing))
    try:
        with pytest.raises(Unreachable, match="no credentials for the apiserver"):
            await kube.read_workload(DEPLOYMENT, "demo", "web")
    finally:
        await kube.close()


async def test_kopf_is_given_the_same_endpoint_and_the_current_identity() -> None:
    source = StaticIdentity(Identity(token="t", expires=datetime(2030, 1, 1, tzinfo=UTC)))
    # Plain http: the PEMs here are placeholders no TLS context could load.
    endpoint = Endpoint(
        server="http://k:6443", source=source, ca_data=PEM, cert_data=PEM, key_data="KEY"
    )
    kube = Kube(endpoint)
    info = await kube.connection_info()
    assert (info.server, info.ca_data, info.certificate_data, info.private_key_data) == (
        "http://k:6443",
        PEM,
        PEM,
        "KEY",
    )
    assert (info.scheme, info.token, info.expiration) == ("Bearer", "t", source.value.expires)


async def test_a_refused_token_that_cannot_change_is_not_sent_twice(
    tmp_path: Path, apiserver: tuple[str, list[web.Request], dict[str, str]]
) -> None:
    server, seen, _ = apiserver
    path = write(
        tmp_path / "config",
        config(
            current="c",
            clusters=[("c", {"server": server})],
            users=[("u", {"token": "revoked"})],
            contexts=[("c", {"cluster": "c", "user": "u"})],
        ),
    )
    kube = await Kube.connect(kubeconfig=str(path))
    try:
        with pytest.raises(KubeApiError) as refused:
            await kube.read_workload(DEPLOYMENT, "demo", "web")
        assert refused.value.status == 401
    finally:
        await kube.close()
    assert len(seen) == 1
