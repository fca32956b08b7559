"""The test infrastructure itself works: registries, images, token issuer, proxy.

Every other integration, e2e and benchmark result rests on these fixtures, so prove that a real
registry accepts each synthetic image byte for byte and that auth really is enforced.
"""

from __future__ import annotations

import base64
import hashlib
import urllib.error
import urllib.request

import pytest

from tests.support import skopeo
from tests.support.images import ImageKind, ImageSeeder, SyntheticImage
from tests.support.registries import RegistryEndpoint, RegistryFactory, RunningRegistry

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
@pytest.mark.parametrize("registry_name", ["open_registry", "auth_registry"])
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
