"""Kubeconfig files for the test bed: cluster-admin by client certificate, ServiceAccounts by token.

Everything is embedded (`*-data`), so a kubeconfig stays valid wherever it is copied to, and it is
written 0600 because it holds a private key or a token. JSON is valid YAML, and kubectl, kopf and
our `controller/kubeconfig.py` all read it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from pathlib import Path

__all__ = ["certificate_user", "token_user", "write_kubeconfig"]

CLUSTER = "testbed"


def certificate_user(cert_file: Path, key_file: Path) -> dict[str, str]:
    """A kubeconfig user that authenticates with this client certificate and key."""
    return {
        "client-certificate-data": _b64(cert_file.read_bytes()),
        "client-key-data": _b64(key_file.read_bytes()),
    }


def token_user(token: str) -> dict[str, str]:
    """A kubeconfig user that authenticates with this bearer token."""
    return {"token": token}


def write_kubeconfig(
    path: Path, *, server: str, ca_file: Path, user_name: str, user: Mapping[str, str]
) -> Path:
    """Write a one-cluster, one-user kubeconfig for `server` trusting `ca_file`; returns `path`."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": CLUSTER,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(ca_file.read_bytes()),
                },
            }
        ],
        "users": [{"name": user_name, "user": dict(user)}],
        "contexts": [{"name": CLUSTER, "context": {"cluster": CLUSTER, "user": user_name}}],
        "current-context": CLUSTER,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(json.dumps(config, indent=2) + "\n")
    return path


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
