"""A small Docker token server (the "realm" of a registry with `auth.token`) for tests.

Bearer-token auth is what Docker Hub, GHCR, Quay and Harbor speak, so the copy engine's challenge
parsing, token exchange, caching and renewal are tested against a real registry that trusts this
issuer (distribution 2.8 checks the JWT's `x5c` chain against its `rootcertbundle`).

It runs as a subprocess (`python -m tests.support.token_issuer ...`) so that it lives outside the
tests' event loops; `TokenIssuer` starts and stops it. Users: testuser/testpass may do anything,
reader/readpass may only pull, anonymous requests get a token that grants nothing. Tokens stop
working at the registry exactly `lifetime` seconds after they are issued (see `_exp_claim`).
Control endpoints: `GET /_stats` (tokens issued so far), `POST /_config` ({"lifetime": N,
"wide_scope": true}: grant more than asked, as Docker Hub and GHCR may, and report it in the
OAuth2 `scope` field) and `POST /_users` ({"user", "password", "actions", "repositories"}:
add or replace a user, for rotation tests; `repositories` globs such as `team-a/*` limit what
it is granted anything on, for per-team grants).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import datetime
import fnmatch
import json
import ssl
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.support.pki import TestPKI
from tests.support.processes import ServiceProcess, free_port
from tests.support.registries import TEST_PASSWORD, TEST_USER, TokenAuthConfig

__all__ = [
    "DEFAULT_LIFETIME",
    "ISSUER",
    "READER_PASSWORD",
    "READER_USER",
    "SERVICE",
    "TokenIssuer",
    "main",
]

ISSUER = "image-cloner-test-issuer"
SERVICE = "image-cloner-test-registry"
READER_USER = "reader"
READER_PASSWORD = "readpass"
DEFAULT_LIFETIME = 300
# distribution accepts a token until 60 s after its `exp` (clock-skew leeway, token.go).
REGISTRY_LEEWAY = 60
ALL_ACTIONS = frozenset({"pull", "push", "delete", "*"})
USERS: dict[str, tuple[str, frozenset[str]]] = {
    TEST_USER: (TEST_PASSWORD, ALL_ACTIONS),
    READER_USER: (READER_PASSWORD, frozenset({"pull"})),
}
REPOSITORIES: dict[str, tuple[str, ...]] = {}
"""User → the repository globs it is granted anything on (`team-a/*`); absent: all of them."""
REPO_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class _State:
    signing_key: Any
    x5c: list[str]
    lifetime: int
    issued: list[dict[str, Any]] = field(default_factory=list)
    wide_scope: bool = False
    """Grant pull and push on each repository asked for, whatever was asked (and say so)."""


STATE = web.AppKey("state", _State)


def build_app(
    *, signing_key: Any, signing_cert: x509.Certificate, lifetime: int
) -> web.Application:
    x5c = [base64.b64encode(signing_cert.public_bytes(serialization.Encoding.DER)).decode()]
    app = web.Application()
    app[STATE] = _State(signing_key=signing_key, x5c=x5c, lifetime=lifetime)
    app.router.add_get("/token", _token)
    app.router.add_get("/_stats", _stats)
    app.router.add_post("/_config", _config)
    app.router.add_post("/_users", _add_user)
    return app


async def _token(request: web.Request) -> web.Response:
    state = request.app[STATE]
    user = _authenticate(request.headers.get("Authorization"))
    if user is None:
        return web.json_response(
            {"errors": [{"code": "UNAUTHORIZED", "message": "invalid username or password"}]},
            status=401,
            headers={"WWW-Authenticate": 'Basic realm="image-cloner-test-issuer"'},
        )
    allowed = USERS[user][1] if user else frozenset()
    asked = request.query.getall("scope", [])
    if state.wide_scope:
        asked = [f"{scope.rpartition(':')[0]}:pull,push" for scope in " ".join(asked).split()]
    access = _grant(asked, allowed, REPOSITORIES.get(user or "", ("*",)))
    now = int(time.time())
    claims = {
        "iss": ISSUER,
        "sub": user,
        "aud": request.query.get("service", SERVICE),
        "iat": now,
        "nbf": now,
        "exp": _exp_claim(now, state.lifetime),
        "jti": uuid.uuid4().hex,
        "access": access,
    }
    token = jwt.encode(claims, state.signing_key, algorithm="ES256", headers={"x5c": state.x5c})
    state.issued.append({"user": user, "access": access, "lifetime": state.lifetime})
    issued_at = datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat()
    document = {
        "token": token,
        "access_token": token,
        "expires_in": state.lifetime,
        "issued_at": issued_at.replace("+00:00", "Z"),
    }
    if state.wide_scope:  # OAuth2's `scope`: what was granted, when it differs from the ask
        document["scope"] = " ".join(
            f"{a['type']}:{a['name']}:{','.join(a['actions'])}" for a in access if a["actions"]
        )
    return web.json_response(document)


def _exp_claim(now: int, lifetime: int) -> int:
    """`exp` such that the registry, which adds its leeway, rejects the token after `lifetime`.

    This makes short lifetimes (a few seconds) usable for renewal tests; `expires_in` in the
    response still says `lifetime`.
    """
    return now + lifetime - REGISTRY_LEEWAY


def _authenticate(header: str | None) -> str | None:
    """The user name, "" for anonymous, or None when credentials were given but are wrong."""
    if header is None:
        return ""
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    known = USERS.get(user)
    return user if known is not None and known[0] == password else None


def _grant(
    scopes: Sequence[str], allowed: frozenset[str], repositories: Sequence[str] = ("*",)
) -> list[dict[str, Any]]:
    """Requested actions the user may do, per resource (`repository:name:pull,push`), on the
    repositories it is granted (globs)."""
    access = []
    for scope in " ".join(scopes).split():
        resource, _, actions = scope.rpartition(":")
        kind, _, name = resource.partition(":")
        mine = any(fnmatch.fnmatchcase(name, glob) for glob in repositories)
        granted = [a for a in actions.split(",") if a in allowed and mine]
        access.append({"type": kind.split("(")[0], "name": name, "actions": granted})
    return access


async def _stats(request: web.Request) -> web.Response:
    state = request.app[STATE]
    return web.json_response({"tokens_issued": len(state.issued), "issued": state.issued})


async def _config(request: web.Request) -> web.Response:
    body = await request.json()
    state = request.app[STATE]
    state.lifetime = int(body.get("lifetime", state.lifetime))
    state.wide_scope = bool(body.get("wide_scope", state.wide_scope))
    return web.json_response({"lifetime": state.lifetime, "wide_scope": state.wide_scope})


async def _add_user(request: web.Request) -> web.Response:
    body = await request.json()
    actions = frozenset(body["actions"]) & ALL_ACTIONS
    USERS[str(body["user"])] = (str(body["password"]), actions)
    if body.get("repositories") is not None:
        REPOSITORIES[str(body["user"])] = tuple(str(r) for r in body["repositories"])
    return web.json_response({"user": body["user"], "actions": sorted(actions)})


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--tls-cert", type=Path, required=True)
    parser.add_argument("--tls-key", type=Path, required=True)
    parser.add_argument("--signing-cert", type=Path, required=True)
    parser.add_argument("--signing-key", type=Path, required=True)
    parser.add_argument("--lifetime", type=int, default=DEFAULT_LIFETIME)
    args = parser.parse_args(argv)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(args.tls_cert, args.tls_key)
    app = build_app(
        signing_key=serialization.load_pem_private_key(args.signing_key.read_bytes(), None),
        signing_cert=x509.load_pem_x509_certificate(args.signing_cert.read_bytes()),
        lifetime=args.lifetime,
    )
    web.run_app(app, host="127.0.0.1", port=args.port, ssl_context=tls, print=None)


class TokenIssuer(ServiceProcess):
    """Runs the token server as a subprocess over TLS from the test PKI, on a free port."""

    def __init__(self, workdir: Path, *, pki: TestPKI, lifetime: int = DEFAULT_LIFETIME) -> None:
        self.workdir = workdir
        self.pki = pki
        self.lifetime = lifetime
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.realm = f"{self.url}/token"
        self.log_file = workdir / "token-issuer.log"
        workdir.mkdir(parents=True, exist_ok=True)

    def auth_config(self) -> TokenAuthConfig:
        """What a registry's `auth.token` needs to trust this issuer."""
        return TokenAuthConfig(
            realm=self.realm, service=SERVICE, issuer=ISSUER, rootcertbundle=self.pki.ca_cert
        )

    def start(self) -> None:
        if self.running:
            return
        command = [
            sys.executable,
            "-m",
            "tests.support.token_issuer",
            f"--port={self.port}",
            f"--tls-cert={self.pki.server_cert}",
            f"--tls-key={self.pki.server_key}",
            f"--signing-cert={self.pki.signing_cert}",
            f"--signing-key={self.pki.signing_key}",
            f"--lifetime={self.lifetime}",
        ]
        self._launch(
            command, ready_url=f"{self.url}/_stats", ca_file=self.pki.ca_cert, cwd=REPO_ROOT
        )

    def stop(self) -> None:
        self._terminate()

    def stats(self) -> dict[str, Any]:
        """{"tokens_issued": N, "issued": [{"user", "access", "lifetime"}, ...]}."""
        return self._control("GET", "/_stats")

    def set_lifetime(self, seconds: int) -> None:
        """Lifetime of tokens issued from now on (the registry enforces it, to the second)."""
        self._control("POST", "/_config", {"lifetime": seconds})

    def add_user(
        self,
        user: str,
        password: str,
        *,
        actions: Sequence[str] = ("pull",),
        repositories: Sequence[str] | None = None,
    ) -> None:
        """Let `user` log in with `password` from now on, granted `actions` (pull only by
        default) on `repositories` (globs such as `team-a/*`; None: all); the users known at
        start stay."""
        body: dict[str, Any] = {"user": user, "password": password, "actions": list(actions)}
        if repositories is not None:
            body["repositories"] = list(repositories)
        self._control("POST", "/_users", body)

    def set_wide_scope(self, wide: bool) -> None:
        """Grant pull and push for every repository asked about (reported in `scope`)."""
        self._control("POST", "/_config", {"wide_scope": wide})

    def _control(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method)
        context = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            result: dict[str, Any] = json.load(response)
            return result


if __name__ == "__main__":
    main()
