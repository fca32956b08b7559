"""A kubelet credential provider plugin for tests: speaks the exec protocol, counts its runs.

`write_plugin` writes it as an executable with the venv's Python in its shebang, as a
node's `ecr-credential-provider` would sit in the kubelet's bin dir. It answers every
request with the login in its environment (`PLUGIN_USER`/`PLUGIN_PASSWORD`, keyed by
`PLUGIN_KEY`, else the requested image's registry; or the two lines of `PLUGIN_LOGIN_FILE`,
read at each run, to rotate it), the `cacheDuration` and
`cacheKeyType` it is given, and appends the requested image to `PLUGIN_CALLS` per run.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import yaml

__all__ = ["calls", "write_config", "write_plugin"]

_SCRIPT = """
import json, os, sys
request = json.load(sys.stdin)
assert request["kind"] == "CredentialProviderRequest", request
image = request["image"]
with open(os.environ["PLUGIN_CALLS"], "a") as calls:
    calls.write(image + "\\n")
key = os.environ.get("PLUGIN_KEY") or image.split("/")[0]
if "PLUGIN_LOGIN_FILE" in os.environ:
    with open(os.environ["PLUGIN_LOGIN_FILE"]) as login:
        user, password = login.read().split("\\n")[:2]
else:
    user, password = os.environ["PLUGIN_USER"], os.environ["PLUGIN_PASSWORD"]
if os.environ.get("PLUGIN_FAIL"):
    sys.exit(1)
response = {
    "apiVersion": request["apiVersion"],
    "kind": "CredentialProviderResponse",
    "cacheKeyType": os.environ.get("PLUGIN_CACHE_KEY_TYPE", "Registry"),
    "auth": {key: {"username": user, "password": password}},
}
if "PLUGIN_CACHE_DURATION" in os.environ:
    response["cacheDuration"] = os.environ["PLUGIN_CACHE_DURATION"]
json.dump(response, sys.stdout)
"""


def write_plugin(bin_dir: Path, name: str = "test-credential-provider") -> Path:
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!{sys.executable}\n{_SCRIPT}")
    path.chmod(0o755)
    return path


def write_config(
    path: Path,
    *,
    match_images: list[str],
    env: Mapping[str, str],
    name: str = "test-credential-provider",
    default_cache_duration: str = "10m",
) -> Path:
    """A kubelet CredentialProviderConfig naming the plugin."""
    document = {
        "apiVersion": "kubelet.config.k8s.io/v1",
        "kind": "CredentialProviderConfig",
        "providers": [
            {
                "name": name,
                "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
                "matchImages": match_images,
                "defaultCacheDuration": default_cache_duration,
                "env": [{"name": k, "value": v} for k, v in env.items()],
            }
        ],
    }
    path.write_text(yaml.safe_dump(document))
    return path


def calls(path: Path) -> list[str]:
    """The images the plugin was run for, one per run."""
    return path.read_text().splitlines() if path.exists() else []
