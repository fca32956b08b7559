"""Registry authentication as an aiohttp client middleware: Basic, Bearer tokens, anonymous.

Registries answer 401 with a `WWW-Authenticate` challenge. For `Basic` we send the
configured credentials; for `Bearer` we fetch a token from the challenge's realm (with
the credentials, or anonymously) for the scopes the request needs, and cache it per
(registry, realm, service, login) under the scopes it was granted (the token server's
`scope`, else what we asked), until shortly before it expires: a wider grant serves later
narrower requests, and a token is only ever sent to the registry whose challenge named its
realm. Credentials are looked up at every request, so a rotated login is used from the next
request on; keying the cache by the login means a token obtained with the old one is never
reused after the change. Once a host has challenged us we authenticate its later requests up
front, so a copy pays the 401 round trip once per host.

The scope is read off the request itself (`/v2/<name>/...`, the method, a mount's `from=`),
which keeps callers free of auth concerns. Being a middleware also means each redirect
hop is judged on its own: a blob download redirected to storage on another host (S3 and
the like) gets no Authorization header from us, and aiohttp drops ours on such hops.

Credentials and tokens never appear in an error message, a log line or a repr.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, hdrs
from aiohttp.payload import Payload
from yarl import URL

from image_cloner.oci.errors import (
    AuthenticationError,
    check_response,
    describe_url,
    mapped_errors,
    read_body,
)
from image_cloner.oci.options import Credentials
from image_cloner.oci.references import DOCKER_HUB, DOCKER_HUB_API, InvalidReference, Registry
from image_cloner.singleflight import SingleFlight

__all__ = [
    "Challenge",
    "RegistryAuth",
    "parse_challenges",
    "request_scopes",
]

DEFAULT_TOKEN_LIFETIME = 60.0
"""Seconds a token lives when the token server does not say (distribution's token spec)."""
TOKEN_EXPIRY_MARGIN = 10.0
"""Renew a token this long before it expires, so it does not lapse in flight."""
TOKEN_RESPONSE_LIMIT = 1024 * 1024

_TOKEN_RE = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_PARAM_RE = re.compile(rf'\s*({_TOKEN_RE})\s*=\s*("(?:[^"\\]|\\.)*"|{_TOKEN_RE})\s*(?:,|$)')
_SCHEME_RE = re.compile(rf"\s*({_TOKEN_RE})(?:\s+|$)")
_TOKEN68_RE = re.compile(r"\s*([A-Za-z0-9\-._~+/]+=*)\s*(?:,|$)")
_REPOSITORY_PATH_RE = re.compile(r"^/v2/(?P<name>.+)/(?:manifests|blobs|tags|referrers)/")


@dataclass(frozen=True)
class Challenge:
    """One challenge of a `WWW-Authenticate` header; `scheme` is lower-case."""

    scheme: str
    params: Mapping[str, str] = field(default_factory=dict)


def parse_challenges(header: str) -> list[Challenge]:
    """All challenges in a `WWW-Authenticate` value (RFC 9110 §11.6.1).

    Handles quoted values with commas and escapes, several challenges in one header,
    and parameter names in any case (they are returned lower-case).
    """
    challenges: list[Challenge] = []
    pos = 0
    while pos < len(header):
        if header[pos] in ", \t":
            pos += 1
            continue
        scheme = _SCHEME_RE.match(header, pos)
        if scheme is None:
            break
        pos = scheme.end()
        params: dict[str, str] = {}
        while (param := _PARAM_RE.match(header, pos)) is not None:
            name, value = param.group(1).lower(), param.group(2)
            if value.startswith('"'):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            params[name] = value
            pos = param.end()
        if not params and (token68 := _TOKEN68_RE.match(header, pos)) is not None:
            pos = token68.end()
        challenges.append(Challenge(scheme.group(1).lower(), params))
    return challenges


def request_scopes(method: str, url: URL) -> tuple[str, ...]:
    """The token scopes a registry request needs, read off its method and URL.

    Reads need `pull`; writes need `pull,push` (what Docker asks for: pushing also
    HEADs); a cross-repository mount also needs `pull` on the repository it mounts from.
    """
    match = _REPOSITORY_PATH_RE.match(url.path)
    if match is None:
        return ()
    read_only = method in (hdrs.METH_GET, hdrs.METH_HEAD)
    scopes = [f"repository:{match['name']}:{'pull' if read_only else 'pull,push'}"]
    if (source := url.query.get("from")) and source != match["name"]:
        scopes.append(f"repository:{source}:pull")
    return tuple(scopes)


_TokenKey = tuple[str, str, str, Credentials | None]
"""(registry, realm, service, the login the token was fetched with)."""


@dataclass(frozen=True)
class _Token:
    header: str = field(repr=False)
    expires_at: float
    granted: frozenset[tuple[str, str]] = frozenset()
    """(resource, action) pairs the token was granted for: what it may serve."""

    def covers(self, scopes: tuple[str, ...]) -> bool:
        granted = self.granted
        return all(
            (resource, action) in granted or (resource, "*") in granted
            for resource, action in _pairs(" ".join(scopes))
        )


def _pairs(scopes: str) -> frozenset[tuple[str, str]]:
    """`repository:a:pull,push repository:b:pull` as (resource, action) pairs."""
    pairs: set[tuple[str, str]] = set()
    for scope in scopes.split():
        resource, _, actions = scope.rpartition(":")
        pairs.update((resource, action) for action in actions.split(",") if action)
    return frozenset(pairs)


def _basic(credentials: Credentials) -> str:
    pair = f"{credentials.username}:{credentials.password}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _replayable(request: ClientRequest) -> bool:
    body = request.body
    return not isinstance(body, Payload) or not body.consumed


class RegistryAuth:
    """The auth middleware: pass an instance in `ClientSession(middlewares=[...])`.

    One per session; it holds the challenges seen per host and the token cache.
    """

    def __init__(
        self,
        credentials: Mapping[str, Credentials],
        *,
        insecure_hosts: frozenset[str] = frozenset(),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._credentials = credentials
        self._insecure_hosts = insecure_hosts
        self._clock = clock
        self._challenges: dict[str, Challenge] = {}
        self._tokens: dict[_TokenKey, list[_Token]] = {}
        """Per (registry, realm, service, login): a token serves only the registry that named
        its realm, the login it was fetched with, and any request whose scopes its grant covers."""
        self._fetches: SingleFlight[_Token] = SingleFlight()

    def __repr__(self) -> str:
        return f"RegistryAuth(hosts={sorted(self._credentials)})"

    def credentials_for(self, authority: str) -> Credentials | None:
        """Credentials configured for a host; Docker Hub's API host shares `docker.io`'s."""
        found = self._credentials.get(authority)
        if found is None and authority in (DOCKER_HUB_API, "index.docker.io"):
            found = self._credentials.get(DOCKER_HUB)
        return found

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        if not request.url.path.startswith("/v2/"):
            # Not a registry API call: a redirected blob download, for instance.
            return await handler(request)
        authority = request.url.raw_authority
        scopes = request_scopes(request.method, request.url)
        sent = await self._authorization(request, authority, scopes)
        if sent is not None:
            request.headers[hdrs.AUTHORIZATION] = sent
        response = await handler(request)
        if response.status != 401 or not _replayable(request):
            return response
        challenge = self._pick_challenge(response)
        if challenge is None:
            return response
        self._challenges[authority] = challenge
        retry_with = await self._answer(request, authority, challenge, scopes, sent)
        if retry_with is None or retry_with == sent:
            return response
        response.release()
        request.headers[hdrs.AUTHORIZATION] = retry_with
        return await handler(request)

    @staticmethod
    def _pick_challenge(response: ClientResponse) -> Challenge | None:
        offered = [
            challenge
            for value in response.headers.getall(hdrs.WWW_AUTHENTICATE, [])
            for challenge in parse_challenges(value)
        ]
        for scheme in ("bearer", "basic"):
            for challenge in offered:
                if challenge.scheme == scheme:
                    return challenge
        return None

    async def _authorization(
        self, request: ClientRequest, authority: str, scopes: tuple[str, ...]
    ) -> str | None:
        """The header to send before any challenge: cached token, Basic, or nothing."""
        challenge = self._challenges.get(authority)
        credentials = self.credentials_for(authority)
        if challenge is None or challenge.scheme == "basic":
            # Preemptive Basic saves a 401 round trip; a token registry ignores it.
            return _basic(credentials) if credentials is not None else None
        token = await self._token(request, authority, challenge, scopes)
        return token.header

    async def _answer(
        self,
        request: ClientRequest,
        authority: str,
        challenge: Challenge,
        scopes: tuple[str, ...],
        sent: str | None,
    ) -> str | None:
        """The header to retry a 401 with, or None when we have nothing better to offer."""
        if challenge.scheme == "basic":
            credentials = self.credentials_for(authority)
            return _basic(credentials) if credentials is not None else None
        wanted = tuple(dict.fromkeys((*scopes, *challenge.params.get("scope", "").split())))
        token = await self._token(request, authority, challenge, wanted, rejected=sent)
        return token.header

    async def _token(
        self,
        request: ClientRequest,
        authority: str,
        challenge: Challenge,
        scopes: tuple[str, ...],
        *,
        rejected: str | None = None,
    ) -> _Token:
        realm = challenge.params.get("realm", "")
        credentials = self.credentials_for(authority)
        key = (authority, realm, challenge.params.get("service", ""), credentials)
        now = self._clock()
        # Expired and rejected tokens go; a wider grant serves narrower requests.
        tokens = [
            t for t in self._tokens.get(key, ()) if t.expires_at > now and t.header != rejected
        ]
        self._tokens[key] = tokens
        if (cached := next((t for t in tokens if t.covers(scopes)), None)) is not None:
            return cached
        # One token request per scope set at a time: concurrent blob transfers share it.
        token = await self._fetches.run(
            (*key, scopes),
            lambda: self._fetch_token(request, authority, challenge, scopes, credentials),
        )
        self._tokens[key] = [token, *(t for t in self._tokens[key] if t.expires_at > now)]
        return token

    async def _fetch_token(
        self,
        request: ClientRequest,
        authority: str,
        challenge: Challenge,
        scopes: tuple[str, ...],
        credentials: Credentials | None,
    ) -> _Token:
        realm = URL(challenge.params.get("realm", ""))
        if realm.scheme not in ("http", "https") or not realm.host:
            raise AuthenticationError(f"{authority}: Bearer challenge without a usable realm")
        realm_authority = realm.raw_authority
        if (
            realm.scheme == "http"
            and credentials is not None
            and not self._plain_ok(realm_authority)
        ):
            raise AuthenticationError(
                f"{authority}: refusing to send credentials to plain-HTTP token realm "
                f"{describe_url(realm)}"
            )
        params = [("scope", scope) for scope in scopes]
        if service := challenge.params.get("service"):
            params.insert(0, ("service", service))
        with mapped_errors(hdrs.METH_GET, realm):
            async with request.session.get(
                realm,
                params=params,
                headers={hdrs.AUTHORIZATION: _basic(credentials)} if credentials else None,
                middlewares=(),
                ssl=realm_authority not in self._insecure_hosts,
                allow_redirects=False,
            ) as response:
                if response.status in (401, 403):
                    whose = "anonymous access" if credentials is None else "the credentials"
                    raise AuthenticationError(
                        f"GET {describe_url(realm)}: {response.status}: "
                        f"the token server refused {whose} for {authority}",
                        status=response.status,
                    )
                await check_response(response, 200)
                body = await read_body(response, TOKEN_RESPONSE_LIMIT)
        return self._parse_token(f"GET {describe_url(realm)}", body, scopes)

    def _plain_ok(self, authority: str) -> bool:
        """May credentials go to this realm host over plain HTTP (loopback or insecure)?"""
        if authority in self._insecure_hosts:
            return True
        try:
            return Registry(authority).is_loopback
        except InvalidReference:  # a URL host need not be a valid image-name host (`auth_x`)
            return False

    def _parse_token(self, what: str, body: bytes, scopes: tuple[str, ...]) -> _Token:
        try:
            document: Any = json.loads(body)
            value = document.get("token") or document.get("access_token")
            lifetime = float(document.get("expires_in") or DEFAULT_TOKEN_LIFETIME)
            # OAuth2's `scope` says what was granted when it differs from what was asked.
            granted = _pairs(str(document.get("scope") or " ".join(scopes)))
        except (ValueError, AttributeError, TypeError):
            raise AuthenticationError(f"{what}: malformed token response") from None
        if not isinstance(value, str) or not value:
            raise AuthenticationError(f"{what}: token response without a token")
        margin = min(TOKEN_EXPIRY_MARGIN, lifetime / 2)
        expires_at = self._clock() + lifetime - margin
        return _Token(header=f"Bearer {value}", expires_at=expires_at, granted=granted)
