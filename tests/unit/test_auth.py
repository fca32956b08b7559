"""WWW-Authenticate parsing, token scopes, and keeping secrets out of messages."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from image_cloner.oci.auth import Challenge, RegistryAuth, parse_challenges, request_scopes
from image_cloner.oci.errors import (
    AuthenticationError,
    DigestMismatchError,
    InvalidManifestError,
    NotFoundError,
    RegistryError,
    RegistryUnavailableError,
    UnsupportedMediaTypeError,
    describe_url,
    error_for_status,
)
from image_cloner.oci.options import Credentials


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (
            # Docker Hub
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
            'scope="repository:library/nginx:pull"',
            [
                Challenge(
                    "bearer",
                    {
                        "realm": "https://auth.docker.io/token",
                        "service": "registry.docker.io",
                        "scope": "repository:library/nginx:pull",
                    },
                )
            ],
        ),
        (
            # several scopes in one quoted value contain commas
            'Bearer realm="https://r/t", scope="repository:a:pull,push repository:b:pull"',
            [
                Challenge(
                    "bearer",
                    {"realm": "https://r/t", "scope": "repository:a:pull,push repository:b:pull"},
                )
            ],
        ),
        ('Basic realm="Registry Realm"', [Challenge("basic", {"realm": "Registry Realm"})]),
        ("BASIC Realm=plain", [Challenge("basic", {"realm": "plain"})]),
        (r'Basic realm="say \"hi\", \\ok"', [Challenge("basic", {"realm": r'say "hi", \ok'})]),
        (
            'Basic realm="a", Bearer realm="https://t/token",service=s',
            [
                Challenge("basic", {"realm": "a"}),
                Challenge("bearer", {"realm": "https://t/token", "service": "s"}),
            ],
        ),
        (
            "Negotiate abc123==, Basic realm=x",
            [Challenge("negotiate", {}), Challenge("basic", {"realm": "x"})],
        ),
        ("Bearer", [Challenge("bearer", {})]),
        ("", []),
    ],
)
def test_parse_challenges(header: str, expected: list[Challenge]) -> None:
    assert parse_challenges(header) == expected


@pytest.mark.parametrize(
    ("method", "url", "scopes"),
    [
        ("GET", "https://r/v2/library/nginx/manifests/latest", ("repository:library/nginx:pull",)),
        ("HEAD", "https://r/v2/a/b/c/blobs/sha256:ab", ("repository:a/b/c:pull",)),
        ("PUT", "https://r/v2/app/manifests/1", ("repository:app:pull,push",)),
        ("POST", "https://r/v2/app/blobs/uploads/", ("repository:app:pull,push",)),
        ("PATCH", "https://r/v2/app/blobs/uploads/u-1?_state=x", ("repository:app:pull,push",)),
        # a repository may itself be called "blobs" or "manifests"
        ("GET", "https://r/v2/x/blobs/y/blobs/sha256:ab", ("repository:x/blobs/y:pull",)),
        ("GET", "https://r/v2/manifests/manifests/latest", ("repository:manifests:pull",)),
        (
            "POST",
            "https://r/v2/backup/app/blobs/uploads/?mount=sha256:ab&from=src/app",
            ("repository:backup/app:pull,push", "repository:src/app:pull"),
        ),
        ("GET", "https://r/v2/", ()),
        ("GET", "https://r/v2/_catalog", ()),
    ],
)
def test_request_scopes(method: str, url: str, scopes: tuple[str, ...]) -> None:
    assert request_scopes(method, URL(url)) == scopes


def test_docker_hub_credentials_apply_to_its_api_host() -> None:
    auth = RegistryAuth({"docker.io": Credentials("u", "p"), "quay.io": Credentials("q", "r")})
    assert auth.credentials_for("registry-1.docker.io") == Credentials("u", "p")
    assert auth.credentials_for("index.docker.io") == Credentials("u", "p")
    assert auth.credentials_for("quay.io") == Credentials("q", "r")
    assert auth.credentials_for("ghcr.io") is None


def test_reprs_never_show_passwords() -> None:
    secret = "s3cr3t-Pa55"
    auth = RegistryAuth({"quay.io": Credentials("me", secret)})
    assert secret not in repr(auth)
    assert secret not in repr(Credentials("me", secret))


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://user:pass@r.io/v2/x/blobs/uploads/1?_state=abc",
            "https://r.io/v2/x/blobs/uploads/1",
        ),
        ("https://auth.r.io/token?service=r&scope=repository:x:pull#f", "https://auth.r.io/token"),
        ("http://127.0.0.1:5000/v2/x/manifests/1", "http://127.0.0.1:5000/v2/x/manifests/1"),
    ],
)
def test_urls_in_messages_lose_userinfo_and_query(url: str, shown: str) -> None:
    assert describe_url(URL(url)) == shown


@pytest.mark.parametrize(
    ("status", "code", "kind"),
    [
        (401, "UNAUTHORIZED", AuthenticationError),
        (403, "DENIED", AuthenticationError),
        (404, "MANIFEST_UNKNOWN", NotFoundError),
        (404, None, NotFoundError),
        (408, None, RegistryUnavailableError),
        (429, "TOOMANYREQUESTS", RegistryUnavailableError),
        (502, None, RegistryUnavailableError),
        (400, "MANIFEST_INVALID", InvalidManifestError),
        (400, "MANIFEST_BLOB_UNKNOWN", InvalidManifestError),
        (400, "DIGEST_INVALID", DigestMismatchError),
        (415, None, UnsupportedMediaTypeError),
        (400, "SIZE_INVALID", RegistryError),
    ],
)
def test_statuses_map_to_the_error_tree(
    status: int, code: str | None, kind: type[Exception]
) -> None:
    error = error_for_status("PUT https://r/v2/x/manifests/1", status, code=code, message="m")
    assert type(error) is kind
    assert error.status == status
    assert error.code == code
    text = str(error)
    assert text.startswith("PUT https://r/v2/x/manifests/1: ")
    assert str(status) in text
    assert "\n" not in text


def test_every_error_is_a_registry_error() -> None:
    for kind in (
        AuthenticationError,
        NotFoundError,
        DigestMismatchError,
        RegistryUnavailableError,
        InvalidManifestError,
        UnsupportedMediaTypeError,
    ):
        assert issubclass(kind, RegistryError)


class _TokenRegistry:
    """An in-process registry that wants a Bearer token from its own token endpoint."""

    def __init__(self, *, realm: str | None = None) -> None:
        self.token_requests = 0
        self.realm = realm
        self.url = URL()
        self.logins: list[str] = []
        """The Basic credentials each token request came with ("" when anonymous)."""
        self.tokens_seen: list[str] = []
        """The Bearer tokens manifest requests were answered for."""

    async def token(self, request: web.Request) -> web.Response:
        self.token_requests += 1
        login = request.headers.get("Authorization", "").removeprefix("Basic ")
        self.logins.append(login)
        await asyncio.sleep(0.05)  # slow enough that concurrent requests overlap
        return web.json_response({"token": f"t0k3n{login}", "expires_in": 300})

    async def manifest(self, request: web.Request) -> web.Response:
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer t0k3n"):
            self.tokens_seen.append(header.removeprefix("Bearer "))
            return web.Response(text="{}")
        realm = self.realm or str(self.url.with_path("/token"))
        challenge = f'Bearer realm="{realm}",service="test"'
        return web.Response(status=401, headers={"WWW-Authenticate": challenge})


@pytest.fixture
async def token_registry() -> AsyncIterator[_TokenRegistry]:
    registry = _TokenRegistry()
    app = web.Application()
    app.router.add_get("/token", registry.token)
    app.router.add_get("/v2/{name:.+}/manifests/{ref}", registry.manifest)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    registry.url = URL(f"http://127.0.0.1:{port}")
    try:
        yield registry
    finally:
        await runner.cleanup()


async def test_concurrent_requests_share_one_token_request(token_registry: _TokenRegistry) -> None:
    auth = RegistryAuth({})
    url = token_registry.url.with_path("/v2/app/manifests/1")
    async with aiohttp.ClientSession(middlewares=[auth]) as session:

        async def get() -> int:
            async with session.get(url) as response:
                return response.status

        assert await asyncio.gather(*(get() for _ in range(8))) == [200] * 8
    assert token_registry.token_requests == 1


async def test_a_realm_host_that_is_no_reference_host_is_an_authentication_error(
    token_registry: _TokenRegistry,
) -> None:
    # Compose service names such as `auth_server` are fine in URLs but not in image names.
    token_registry.realm = "http://auth_server/token"
    authority = token_registry.url.raw_authority
    auth = RegistryAuth({authority: Credentials("user", "secret")})
    url = token_registry.url.with_path("/v2/app/manifests/1")
    async with aiohttp.ClientSession(middlewares=[auth]) as session:
        with pytest.raises(AuthenticationError, match="plain-HTTP token realm") as caught:
            await session.get(url)
    assert "secret" not in str(caught.value)
    assert token_registry.token_requests == 0


async def test_a_changed_login_gets_its_own_token(token_registry: _TokenRegistry) -> None:
    # A rotated login (the mapping's value changes while the session lives) must not be
    # served the token fetched with the old one: the cache is keyed by the login too.
    authority = token_registry.url.raw_authority
    logins = {authority: Credentials("old", "pass-one")}
    auth = RegistryAuth(logins)
    url = token_registry.url.with_path("/v2/app/manifests/1")
    async with aiohttp.ClientSession(middlewares=[auth]) as session:
        for _ in range(2):
            async with session.get(url) as response:
                assert response.status == 200
        logins[authority] = Credentials("new", "pass-two")
        for _ in range(2):
            async with session.get(url) as response:
                assert response.status == 200
    old, new = (
        base64.b64encode(b"old:pass-one").decode(),
        base64.b64encode(b"new:pass-two").decode(),
    )
    assert token_registry.logins == [old, new]
    assert token_registry.tokens_seen == [f"t0k3n{old}"] * 2 + [f"t0k3n{new}"] * 2
