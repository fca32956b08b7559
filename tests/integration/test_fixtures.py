"""The test infrastructure itself works: registries, images, token issuer, proxy.

Every other integration, e2e and benchmark result rests on these fixtures, so prove that a real
registry accepts each synthetic image byte for byte and that auth really is enforced.
"""

from __future__ import annotations

import base64
import hashlib
import json
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import jwt
import pytest

from tests.support import skopeo
from tests.support.images import (
    MIB,
    OCI_MANIFEST,
    ImageFactory,
    ImageKind,
    ImageSeeder,
    ImageSpec,
    SyntheticImage,
)
from tests.support.proxy import ProxyFactory
from tests.support.registries import (
    RegistryEndpoint,
    RegistryFactory,
    RunningRegistry,
    registry_options,
)
from tests.support.token_issuer import DEFAULT_LIFETIME, SERVICE, TokenIssuer

pytestmark = pytest.mark.integration


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def assert_stored(registry: RegistryEndpoint, repo: str, tag: str, image: SyntheticImage) -> None:
    """skopeo reads the tag and every child manifest back with exactly the expected digests."""
    raw = skopeo.inspect_raw(registry, f"{repo}:{tag}")
    assert sha256(raw) == image.digest
    assert raw == image.raw
    for child in image.child_digests:
        assert sha256(skopeo.inspect_raw(registry, f"{repo}@{child}")) == child


def http_status(registry: RegistryEndpoint, path: str, *, user: str, password: str) -> int:
    request = urllib.request.Request(f"{registry.url}{path}")
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {basic}")
    try:
        with urllib.request.urlopen(request, context=registry.ssl_context(), timeout=10) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.mark.parametrize("kind", list(ImageKind))
@pytest.mark.parametrize("registry_name", ["open_registry", "auth_registry", "token_registry"])
def test_registry_accepts_synthetic_image(
    request: pytest.FixtureRequest, seed_image: ImageSeeder, registry_name: str, kind: ImageKind
) -> None:
    registry: RunningRegistry = request.getfixturevalue(registry_name)
    image = seed_image(registry, f"fixtures/{kind}:v1", kind)
    assert_stored(registry, f"fixtures/{kind}", "v1", image)
    assert len(image.manifests) == (2 if image.is_index else 1)


def test_images_are_deterministic_and_seeded(
    seed_image: ImageSeeder, open_registry: RunningRegistry
) -> None:
    first = seed_image(open_registry, "fixtures/seeded:a", "index", seed="a")
    again = seed_image(open_registry, "fixtures/seeded:a2", "index", seed="a")
    other = seed_image(open_registry, "fixtures/seeded:b", "index", seed="b")
    assert first.digest == again.digest
    assert not set(first.blob_digests) & set(other.blob_digests)


def test_htpasswd_registry_enforces_password(auth_registry: RunningRegistry) -> None:
    assert http_status(auth_registry, "/v2/", user="testuser", password="testpass") == 200
    assert http_status(auth_registry, "/v2/", user="testuser", password="wrong") == 401
    with pytest.raises(skopeo.SkopeoError, match=r"unauthorized|authentication required"):
        skopeo.run(
            "inspect",
            "--raw",
            "--creds=testuser:wrong",
            f"--cert-dir={auth_registry.cert_dir}",
            skopeo.docker_ref(auth_registry, "fixtures/index:v1"),
        )


def test_registry_restart_keeps_port_and_data(
    registry_factory: RegistryFactory, seed_image: ImageSeeder
) -> None:
    registry = registry_factory("htpasswd")
    image = seed_image(registry, "restart/app:1", "single")
    host = registry.host
    registry.stop()
    with pytest.raises(skopeo.SkopeoError):
        skopeo.inspect_raw(registry, "restart/app:1")
    registry.start()
    assert registry.host == host
    assert_stored(registry, "restart/app", "1", image)


def test_token_registry_enforces_password(
    token_registry: RunningRegistry, token_issuer: TokenIssuer, seed_image: ImageSeeder
) -> None:
    image = seed_image(token_registry, "fixtures/token-auth:v1", "single")
    before = token_issuer.stats()["tokens_issued"]
    assert_stored(token_registry, "fixtures/token-auth", "v1", image)
    assert token_issuer.stats()["tokens_issued"] > before
    with pytest.raises(skopeo.SkopeoError, match=r"unauthorized|authentication required|401"):
        skopeo.run(
            "inspect",
            "--raw",
            "--creds=testuser:wrong",
            f"--cert-dir={token_registry.cert_dir}",
            skopeo.docker_ref(token_registry, "fixtures/token-auth:v1"),
        )
    # The registry itself rejects a request without a token and points at the issuer.
    assert http_status(token_registry, "/v2/", user="testuser", password="testpass") == 401


def fetch_token(issuer: TokenIssuer, scope: str, *, user: str, password: str) -> str:
    query = urllib.parse.urlencode({"service": SERVICE, "scope": scope})
    request = urllib.request.Request(f"{issuer.realm}?{query}")
    basic = base64.b64encode(f"{user}:{password}".encode()).decode()
    request.add_header("Authorization", f"Basic {basic}")
    context = ssl.create_default_context(cafile=str(issuer.pki.ca_cert))
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        body = json.load(response)
    assert body["token"] == body["access_token"]
    token: str = body["token"]
    return token


def bearer_status(registry: RunningRegistry, method: str, path: str, token: str) -> int:
    request = urllib.request.Request(f"{registry.url}{path}", method=method)
    request.add_header("Authorization", f"Bearer {token}")
    request.add_header("Accept", OCI_MANIFEST)
    try:
        with urllib.request.urlopen(request, context=registry.ssl_context(), timeout=10) as resp:
            status: int = resp.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def test_token_issuer_grants_only_what_the_user_may_do(
    token_registry: RunningRegistry, token_issuer: TokenIssuer, seed_image: ImageSeeder
) -> None:
    seed_image(token_registry, "fixtures/reader:v1", "single")
    scope = "repository:fixtures/reader:pull,push"
    token = fetch_token(token_issuer, scope, user="reader", password="readpass")
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["access"] == [
        {"type": "repository", "name": "fixtures/reader", "actions": ["pull"]}
    ]
    manifest = "/v2/fixtures/reader/manifests/v1"
    assert bearer_status(token_registry, "HEAD", manifest, token) == 200
    assert bearer_status(token_registry, "POST", "/v2/fixtures/reader/blobs/uploads/", token) == 401
    with pytest.raises(urllib.error.HTTPError, match="401"):
        fetch_token(token_issuer, scope, user="reader", password="wrong")


def test_token_lifetime_is_enforced_by_the_registry(
    token_registry: RunningRegistry, token_issuer: TokenIssuer, seed_image: ImageSeeder
) -> None:
    seed_image(token_registry, "fixtures/expiry:v1", "single")
    token_issuer.set_lifetime(2)
    try:
        token = fetch_token(
            token_issuer, "repository:fixtures/expiry:pull", user="testuser", password="testpass"
        )
    finally:
        token_issuer.set_lifetime(DEFAULT_LIFETIME)
    manifest = "/v2/fixtures/expiry/manifests/v1"
    assert bearer_status(token_registry, "HEAD", manifest, token) == 200
    time.sleep(3)
    assert bearer_status(token_registry, "HEAD", manifest, token) == 401


@pytest.mark.parametrize("registry_name", ["open_registry", "auth_registry", "token_registry"])
def test_proxy_forwards_and_counts(
    request: pytest.FixtureRequest,
    proxy_factory: ProxyFactory,
    seed_image: ImageSeeder,
    registry_name: str,
    tmp_path: Path,
) -> None:
    registry: RunningRegistry = request.getfixturevalue(registry_name)
    proxy = proxy_factory(registry)
    # Pushing through the proxy exercises streamed uploads and rewritten upload Locations.
    image = seed_image(proxy, "proxied/app:1", "index", seed="proxied")
    assert proxy.count("PUT", r"/manifests/1$") == 1
    assert_stored(registry, "proxied/app", "1", image)
    proxy.reset()
    skopeo.copy(skopeo.docker_ref(proxy, "proxied/app:1"), f"oci:{tmp_path / 'out'}:1", src=proxy)
    blob_gets = proxy.count("GET", r"/blobs/sha256:")
    assert blob_gets == len(image.blobs)
    assert all(r.status in (200, 401) for r in proxy.requests())


def test_proxy_corrupts_a_blob_and_skopeo_notices(
    open_registry: RunningRegistry,
    proxy_factory: ProxyFactory,
    seed_image: ImageSeeder,
    tmp_path: Path,
) -> None:
    image = seed_image(open_registry, "proxied/liar:1", "single", seed="liar")
    proxy = proxy_factory(open_registry)
    layer = image.manifests[0].layers[0]
    proxy.corrupt_blob(layer.digest)
    with pytest.raises(skopeo.SkopeoError, match=r"(?i)digest did not match"):
        skopeo.copy(
            skopeo.docker_ref(proxy, "proxied/liar:1"), f"oci:{tmp_path / 'out'}:1", src=proxy
        )
    served = [r for r in proxy.requests() if r.path.endswith(layer.digest)]
    assert served
    assert served[0].status == 200


@pytest.mark.parametrize(("status", "retry_after"), [(429, 1), (503, None)])
def test_proxy_injects_failures(
    open_registry: RunningRegistry,
    proxy_factory: ProxyFactory,
    status: int,
    retry_after: int | None,
) -> None:
    proxy = proxy_factory(open_registry)
    proxy.fail_next(2, status=status, retry_after=retry_after, path=r"^/v2/$")
    answers: list[tuple[int, str | None]] = []
    for _ in range(3):
        try:
            with urllib.request.urlopen(f"{proxy.url}/v2/", timeout=10) as response:
                answers.append((response.status, None))
        except urllib.error.HTTPError as error:
            answers.append((error.code, error.headers.get("Retry-After")))
    expected_header = None if retry_after is None else str(retry_after)
    assert answers == [(status, expected_header), (status, expected_header), (200, None)]
    assert [r.status for r in proxy.requests()] == [status, status, 200]


def test_proxy_preserves_head_headers(
    open_registry: RunningRegistry, proxy_factory: ProxyFactory, seed_image: ImageSeeder
) -> None:
    image = seed_image(open_registry, "proxied/head:1", "index")
    proxy = proxy_factory(open_registry)
    seen = []
    for endpoint in (open_registry, proxy):
        request = urllib.request.Request(
            f"{endpoint.url}/v2/proxied/head/manifests/1", method="HEAD"
        )
        request.add_header("Accept", image.media_type)
        with urllib.request.urlopen(request, timeout=10) as response:
            seen.append(
                (
                    response.headers["Content-Length"],
                    response.headers["Content-Type"],
                    response.headers["Docker-Content-Digest"],
                )
            )
    assert seen[0] == seen[1] == (str(len(image.raw)), image.media_type, image.digest)


def test_upload_session_survives_a_restart(registry_factory: RegistryFactory) -> None:
    """The fixed REGISTRY_HTTP_SECRET keeps upload URLs valid across stop()/start()."""
    registry = registry_factory("open")
    start = urllib.request.Request(
        f"{registry.url}/v2/restart/upload/blobs/uploads/", method="POST"
    )
    with urllib.request.urlopen(start, timeout=10) as response:
        assert response.status == 202
        location = urllib.parse.urljoin(registry.url, response.headers["Location"])
    registry.stop()
    registry.start()
    data = b"survives a restart"
    digest = sha256(data)
    separator = "&" if "?" in location else "?"
    finish = urllib.request.Request(
        f"{location}{separator}digest={digest}", data=data, method="PUT"
    )
    finish.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(finish, timeout=10) as response:
        assert response.status == 201
        assert response.headers["Docker-Content-Digest"] == digest


def test_large_layer_is_streamed_and_pushed(
    open_registry: RunningRegistry, image_factory: ImageFactory, seed_image: ImageSeeder
) -> None:
    size = 48 * MIB
    image = seed_image(open_registry, "fixtures/large:1", ImageSpec.large(size, seed="fixtures"))
    (layer,) = image.manifests[0].layers
    assert size < layer.size < size + 64 * 1024
    assert (
        image.layout / "blobs" / "sha256" / layer.digest.removeprefix("sha256:")
    ).stat().st_size == layer.size
    assert_stored(open_registry, "fixtures/large", "1", image)
    assert image_factory.build(ImageSpec.large(size, seed="fixtures")) is image  # cached


def test_large_layer_generation_keeps_memory_flat(tmp_path: Path) -> None:
    """A fresh interpreter builds a 128 MiB layer; its peak RSS stays far below that."""
    script = (
        "import pathlib, sys\n"
        "from tests.support.images import ImageFactory, ImageSpec, MIB\n"
        "ImageFactory(pathlib.Path(sys.argv[1])).build(ImageSpec.large(128 * MIB))\n"
        "status = pathlib.Path('/proc/self/status').read_text()\n"
        "print(next(l.split()[1] for l in status.splitlines() if l.startswith('VmHWM:')))\n"
    )
    # VmHWM, not ru_maxrss: Linux carries the peak RSS of the forked copy of this (large)
    # pytest process over exec into the child's ru_maxrss; VmHWM is the new image's own.
    result = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    peak_mib = int(result.stdout) / 1024
    assert peak_mib < 80


def test_registry_options_carry_credentials_and_ca(
    open_registry: RunningRegistry, auth_registry: RunningRegistry, token_registry: RunningRegistry
) -> None:
    options = registry_options(open_registry, auth_registry, token_registry)
    assert set(options.credentials) == {auth_registry.host, token_registry.host}
    assert options.credentials[auth_registry.host].password == "testpass"
    assert options.ca_file == auth_registry.ca_file
    assert options.ca_file is not None
    assert "BEGIN CERTIFICATE" in options.ca_file.read_text()
