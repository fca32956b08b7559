"""Fixtures for the e2e tests: one real control plane per session, a fresh namespace per test.

Starting the test bed costs seconds, so the whole session shares it; each test isolates itself in
its own namespace. The binaries are built by `make testbed` (testbed/build.sh) before pytest runs:
building here would hide a 20-minute compile inside a test timeout.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from image_cloner.controller.kube import Kube
from tests.support.controller import controller_kubeconfig
from tests.support.pki import TestPKI
from tests.support.proxy import RegistryProxy
from tests.support.registries import RegistryKind, RunningRegistry
from tests.support.testbed import Testbed, default_bin_dir, missing_binaries


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test under tests/e2e needs the test bed: mark it `e2e` (select with `-m e2e`)."""
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Testbed]:
    """A running control plane (etcd, apiserver, controller-manager, scheduler, 2 KWOK nodes)."""
    bin_dir = default_bin_dir()
    missing = missing_binaries(bin_dir)
    if missing:
        pytest.fail(
            f"test bed binaries missing in {bin_dir}: {', '.join(missing)}. "
            "Build them with `make testbed` (or run the tests with `make e2e`).",
            pytrace=False,
        )
    bed = Testbed(tmp_path_factory.mktemp("testbed"), bin_dir=bin_dir, die_with_parent=True)
    bed.start()
    try:
        yield bed
    finally:
        # Logs stay in pytest's temp folder (the last runs are kept) for post-mortems.
        bed.stop(keep_logs=True)


@pytest.fixture
def namespace(testbed: Testbed) -> Iterator[str]:
    """A new namespace whose `default` ServiceAccount exists; deleted after the test."""
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    testbed.create_namespace(name)
    yield name
    testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="session")
def sa_kubeconfig(testbed: Testbed, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The controller's ServiceAccount, with exactly the rights of examples/rbac*.yml."""
    return controller_kubeconfig(testbed, tmp_path_factory.mktemp("sa") / "kubeconfig")


@pytest.fixture
async def kube(sa_kubeconfig: Path) -> AsyncIterator[Kube]:
    """Our Kubernetes client, acting as that ServiceAccount."""
    client = await Kube.connect(kubeconfig=str(sa_kubeconfig))
    try:
        yield client
    finally:
        await client.close()


# --- what most modules' controllers work with: one each per module -------------------


@pytest.fixture(scope="module")
def module_namespace(testbed: Testbed, request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace for one test module's workloads, named after the module."""
    module = request.module.__name__.rpartition(".")[2].removeprefix("test_")
    name = f"{module.replace('_', '-')[:40]}-{uuid.uuid4().hex[:6]}"
    testbed.create_namespace(name)
    yield name
    testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture(scope="module")
def backup(
    *, tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI
) -> Iterator[RunningRegistry]:
    """The module's backup registry (htpasswd + TLS), its own: a module may stop it."""
    registry = RunningRegistry(
        tmp_path_factory.mktemp("backup"), kind=RegistryKind.HTPASSWD, pki=test_pki
    )
    with registry:
        yield registry


@pytest.fixture(scope="module")
def upstream(
    *, tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI, open_registry: RunningRegistry
) -> Iterator[RegistryProxy]:
    """The module's source registry, behind a proxy that counts requests and fails on demand."""
    proxy = RegistryProxy(tmp_path_factory.mktemp("upstream"), open_registry, pki=test_pki)
    with proxy:
        yield proxy
