"""Session-wide fixtures shared by integration tests, e2e tests and benchmarks.

Real processes (docker-registry, the token issuer, proxies) on free loopback ports and temp dirs;
every fixture stops what it started, even when a test fails. Registries start in well under a
second, so they are created lazily: a unit-test run starts none.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest

from tests.support.images import ImageFactory, ImageSeeder
from tests.support.pki import TestPKI, make_pki
from tests.support.proxy import ProxyFactory, RegistryProxy
from tests.support.registries import (
    RegistryEndpoint,
    RegistryFactory,
    RegistryKind,
    RunningRegistry,
)
from tests.support.token_issuer import TokenIssuer


@pytest.fixture(scope="session")
def test_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    """Test CA, server certificate (127.0.0.1, ::1, localhost) and token-signing certificate."""
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def token_issuer(
    tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI
) -> Iterator[TokenIssuer]:
    """The Docker token server `token_registry` trusts (testuser/testpass, reader/readpass)."""
    with TokenIssuer(tmp_path_factory.mktemp("token-issuer"), pki=test_pki) as issuer:
        yield issuer


def _session_registry(
    tmp_path_factory: pytest.TempPathFactory,
    kind: RegistryKind,
    pki: TestPKI,
    issuer: TokenIssuer | None = None,
) -> Iterator[RunningRegistry]:
    registry = RunningRegistry(
        tmp_path_factory.mktemp(f"{kind}-registry"),
        kind=kind,
        pki=pki,
        token=None if issuer is None else issuer.auth_config(),
    )
    try:
        registry.start()
        yield registry
    finally:
        registry.stop()
        shutil.rmtree(registry.data_dir, ignore_errors=True)  # keep the log, drop the blobs


@pytest.fixture(scope="session")
def open_registry(
    tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI
) -> Iterator[RunningRegistry]:
    """Plain HTTP, no auth. Shared by the session: never stop it; use unique repo names."""
    yield from _session_registry(tmp_path_factory, RegistryKind.OPEN, test_pki)


@pytest.fixture(scope="session")
def auth_registry(
    tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI
) -> Iterator[RunningRegistry]:
    """TLS (test CA) + htpasswd testuser/testpass. Shared: never stop it; use unique repos."""
    yield from _session_registry(tmp_path_factory, RegistryKind.HTPASSWD, test_pki)


@pytest.fixture(scope="session")
def token_registry(
    tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI, token_issuer: TokenIssuer
) -> Iterator[RunningRegistry]:
    """TLS (test CA) + Bearer tokens from `token_issuer`. Shared: never stop it."""
    yield from _session_registry(tmp_path_factory, RegistryKind.TOKEN, test_pki, token_issuer)


@pytest.fixture
def registry_factory(
    tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI, token_issuer: TokenIssuer
) -> Iterator[RegistryFactory]:
    """`registry_factory("open" | "htpasswd" | "token")` starts a registry of this test's own.

    Use it for tests that stop and restart a registry; all are stopped after the test.
    """
    factory = RegistryFactory(
        tmp_path_factory.mktemp("registries"), pki=test_pki, token=token_issuer.auth_config()
    )
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture
def proxy_factory(
    tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI
) -> Iterator[ProxyFactory]:
    """`proxy_factory(registry)` starts a counting / corrupting / failing proxy in front of it.

    The proxy has the registry's scheme, credentials and CA; it is stopped after the test.
    """
    proxies: list[RegistryProxy] = []

    def start(upstream: RegistryEndpoint) -> RegistryProxy:
        proxy = RegistryProxy(tmp_path_factory.mktemp("proxy"), upstream, pki=test_pki)
        proxies.append(proxy)
        proxy.start()
        return proxy

    try:
        yield start
    finally:
        for proxy in proxies:
            proxy.stop()


@pytest.fixture(scope="session")
def image_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageFactory]:
    """Builds synthetic images once per session (cached by `ImageSpec`)."""
    root = tmp_path_factory.mktemp("images")
    try:
        yield ImageFactory(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # large layers must not pile up in /tmp


@pytest.fixture(scope="session")
def seed_image(image_factory: ImageFactory) -> ImageSeeder:
    """`seed_image(registry, "repo:tag", "index" | "docker-list" | ImageSpec(...), seed=...)`.

    Pushes a synthetic image with skopeo and returns its `SyntheticImage` (all digests).
    """
    return ImageSeeder(image_factory)
