"""`image-cloner copy` across registry implementations, checked by three independent clients.

Registries differ in what they answer (status codes of uploads and mounts, headers, how strictly
they check manifests), so a copy proven against distribution 2.8 alone proves little about
`registry:3` or go-containerregistry's registry. Every pairing of source and target among
distribution 2.8, distribution 3 and ggcr copies a 2-platform OCI index and a Docker manifest list
with the CLI; skopeo, crane and regctl must each read back the source's exact index bytes and
every child by its digest, and `crane validate --remote` must pass on the copy.

Auth is what each implementation supports: htpasswd over TLS for both distributions, token auth
for distribution 3 in two extra cases, plain HTTP (and TLS in one extra case) for ggcr, which
has no auth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from image_cloner import cli
from tests.support import skopeo
from tests.support.crane import Crane
from tests.support.images import ImageKind, ImageSeeder, SyntheticImage
from tests.support.pki import TestPKI
from tests.support.regctl import Regctl
from tests.support.registries import RegistryImpl, RegistryKind, RunningRegistry
from tests.support.token_issuer import TokenIssuer

pytestmark = pytest.mark.integration

Reader = Callable[[RunningRegistry, str], bytes]


@dataclass(frozen=True)
class Setup:
    impl: RegistryImpl
    kind: RegistryKind


@dataclass(frozen=True)
class Case:
    source: str
    target: str
    kind: ImageKind


SETUPS = {
    "d2-htpasswd": Setup(RegistryImpl.DISTRIBUTION_2, RegistryKind.HTPASSWD),
    "d3-htpasswd": Setup(RegistryImpl.DISTRIBUTION_3, RegistryKind.HTPASSWD),
    "d3-token": Setup(RegistryImpl.DISTRIBUTION_3, RegistryKind.TOKEN),
    "ggcr-open": Setup(RegistryImpl.GGCR, RegistryKind.OPEN),
    "ggcr-tls": Setup(RegistryImpl.GGCR, RegistryKind.TLS),
}
MAIN = ("d2-htpasswd", "d3-htpasswd", "ggcr-open")
"""One setup per implementation: each is source and target of both image kinds."""
EXTRA = (("ggcr-open", "d3-token"), ("d3-token", "ggcr-tls"))
"""The other auth kinds, one index copy each way."""
CASES = [
    Case(src, dst, kind)
    for src in MAIN
    for dst in MAIN
    for kind in (ImageKind.INDEX, ImageKind.DOCKER_LIST)
] + [Case(src, dst, ImageKind.INDEX) for src, dst in EXTRA]


def sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


@pytest.fixture(scope="module")
def registries(
    tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI, token_issuer: TokenIssuer
) -> Iterator[dict[str, RunningRegistry]]:
    """One running registry per setup, for this module."""
    # crane refuses a token realm on an IP literal other than the registry's own host:port (an
    # SSRF guard); the same issuer spelled `localhost` is a host name, which it lets through.
    auth = token_issuer.auth_config()
    token = dataclasses.replace(auth, realm=auth.realm.replace("127.0.0.1", "localhost"))
    started: dict[str, RunningRegistry] = {}
    try:
        for name, setup in SETUPS.items():
            registry = RunningRegistry(
                tmp_path_factory.mktemp(name),
                kind=setup.kind,
                impl=setup.impl,
                pki=test_pki,
                token=token if setup.kind is RegistryKind.TOKEN else None,
            )
            registry.start()
            started[name] = registry
        yield started
    finally:
        for registry in started.values():
            registry.stop()


@pytest.fixture(scope="module")
def sources(
    registries: dict[str, RunningRegistry], seed_image: ImageSeeder
) -> Callable[[str, ImageKind], tuple[str, SyntheticImage]]:
    """`sources(setup, kind)`: that image pushed (once) into that registry; (name, image)."""
    seeded: dict[tuple[str, ImageKind], tuple[str, SyntheticImage]] = {}

    def get(setup: str, kind: ImageKind) -> tuple[str, SyntheticImage]:
        if (setup, kind) not in seeded:
            name = f"compat-src/{kind}:1"
            seeded[setup, kind] = (name, seed_image(registries[setup], name, kind))
        return seeded[setup, kind]

    return get


@dataclass(frozen=True)
class Witnesses:
    """skopeo, crane and regctl: three client stacks that must all read back the same bytes."""

    crane: Crane
    regctl: Regctl

    def assert_identical(self, registry: RunningRegistry, name: str, image: SyntheticImage) -> None:
        """Each reads `image`'s exact top-level bytes and every child by its digest at `name`."""
        repo = name.split(":", maxsplit=1)[0]
        readers: dict[str, Reader] = {
            "skopeo": skopeo.inspect_raw,
            "crane": self.crane.manifest,
            "regctl": self.regctl.manifest,
        }
        for witness, read in readers.items():
            assert read(registry, name) == image.raw, witness
            for child in image.child_digests:
                assert sha256(read(registry, f"{repo}@{child}")) == child, witness
        assert self.crane.digest(registry, name) == image.digest
        assert self.regctl.digest(registry, name) == image.digest
        assert self.crane.validate(registry, name).startswith(f"PASS: {registry.ref(name)}")


@pytest.fixture(scope="module")
def witnesses(tmp_path_factory: pytest.TempPathFactory) -> Witnesses:
    return Witnesses(
        Crane(tmp_path_factory.mktemp("crane")), Regctl(tmp_path_factory.mktemp("regctl"))
    )


def copy_args(source: RunningRegistry, src: str, target: RunningRegistry, dst: str) -> list[str]:
    """`image-cloner copy` arguments with each side's credentials and the test CA."""
    args = [source.ref(src), target.ref(dst), "--quiet"]
    for flag, registry in (("--src-creds", source), ("--dest-creds", target)):
        if registry.username is not None:
            args += [flag, f"{registry.username}:{registry.password}"]
    ca = source.ca_file or target.ca_file
    if ca is not None:
        args += ["--ca-file", str(ca)]
    return args


@pytest.mark.parametrize("case", CASES, ids=[f"{c.source}-to-{c.target}-{c.kind}" for c in CASES])
def test_copy_is_byte_identical_for_every_witness(
    registries: dict[str, RunningRegistry],
    sources: Callable[[str, ImageKind], tuple[str, SyntheticImage]],
    witnesses: Witnesses,
    capsys: pytest.CaptureFixture[str],
    case: Case,
) -> None:
    source, target = registries[case.source], registries[case.target]
    src_name, image = sources(case.source, case.kind)
    dst_name = f"compat-{uuid.uuid4().hex[:8]}/{case.kind}:1"

    status = cli.main(["copy", *copy_args(source, src_name, target, dst_name)])

    out, err = capsys.readouterr()
    assert (status, err) == (0, "")
    assert out == f"{target.ref(dst_name)}@{image.digest}\n"
    witnesses.assert_identical(target, dst_name, image)
