"""Signatures, SBOMs and attestations travel with the image: `cosign verify` passes on the backup.

The upstream image (an OCI index) is signed and attested with the real cosign (a key pair of
its own, offline: no transparency log), and a regctl artifact is attached with `--subject`.
`image-cloner copy` takes it to the backup; cosign must then verify the signature and the SBOM
attestation against the backup reference, and regctl must list its artifact there. Sources and
targets are distribution 2.8 (no referrers API: cosign and we use the `sha256-<hex>` tag
schema) and go-containerregistry's registry (the referrers API), every pairing.
A backup copied with `--referrers none` has no signature, and `cosign verify` must fail on it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_cloner import cli
from tests.support.cosign import Cosign, CosignError
from tests.support.images import ImageKind, ImageSeeder, SyntheticImage
from tests.support.regctl import Regctl
from tests.support.registries import RegistryImpl, RegistryKind, RunningRegistry

pytestmark = pytest.mark.integration

IMPLS = (RegistryImpl.DISTRIBUTION_2, RegistryImpl.GGCR)
PAIRS = [(src, dst) for src in IMPLS for dst in IMPLS]
SBOM = {"spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT", "name": "synthetic"}
REGCTL_TYPE = "application/vnd.example.scan-report.v1+json"


@pytest.fixture(scope="module")
def signing_registries(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[RegistryImpl, RunningRegistry]]:
    started: dict[RegistryImpl, RunningRegistry] = {}
    try:
        for impl in IMPLS:
            registry = RunningRegistry(
                tmp_path_factory.mktemp(f"sign-{impl}"), kind=RegistryKind.OPEN, impl=impl
            )
            registry.start()
            started[impl] = registry
        yield started
    finally:
        for registry in started.values():
            registry.stop()


@dataclass(frozen=True)
class Tools:
    seed_image: ImageSeeder
    cosign: Cosign
    regctl: Regctl


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory, seed_image: ImageSeeder) -> Tools:
    return Tools(
        seed_image,
        Cosign(tmp_path_factory.mktemp("cosign")),
        Regctl(tmp_path_factory.mktemp("regctl")),
    )


def signed_image(
    registry: RunningRegistry, tools: Tools, workdir: Path
) -> tuple[str, SyntheticImage]:
    """A fresh index in `registry`, signed, attested and with a regctl artifact: (repo, image)."""
    cosign, regctl = tools.cosign, tools.regctl
    repo = f"signed-{uuid.uuid4().hex[:8]}"
    image = tools.seed_image(registry, f"{repo}:1", ImageKind.INDEX, seed=repo)
    pinned = f"{repo}@{image.digest}"
    cosign.sign(registry, pinned)
    predicate = workdir / "sbom.json"
    predicate.write_text(json.dumps(SBOM))
    cosign.attest(registry, pinned, predicate)
    report = workdir / "report.json"
    report.write_text('{"findings": []}')
    regctl.run(
        registry, "artifact", "put", "--subject", registry.ref(pinned),
        "--artifact-type", REGCTL_TYPE, "--file-media-type", REGCTL_TYPE, "--file", str(report),
    )  # fmt: skip
    return repo, image


def copy(source: RunningRegistry, src: str, target: RunningRegistry, dst: str, *extra: str) -> None:
    assert cli.main(["copy", source.ref(src), target.ref(dst), "--quiet", *extra]) == 0


def referrers(regctl: Regctl, registry: RunningRegistry, repo: str, digest: str) -> dict[str, str]:
    """What regctl finds as referrers of `repo@digest` (API or tag schema): digest → the
    manifest's own `artifactType` (ggcr's listing gives the config's media type instead)."""
    body = regctl.run(
        registry, "artifact", "list", registry.ref(f"{repo}@{digest}"), "--format", "body"
    )
    found = {}
    for entry in json.loads(body)["manifests"]:
        manifest = json.loads(regctl.manifest(registry, f"{repo}@{entry['digest']}"))
        found[entry["digest"]] = manifest.get("artifactType", "")
    return found


@pytest.mark.parametrize(("src", "dst"), PAIRS, ids=[f"{s}-to-{d}" for s, d in PAIRS])
def test_cosign_verifies_the_backup(
    signing_registries: dict[RegistryImpl, RunningRegistry],
    tools: Tools,
    tmp_path: Path,
    src: RegistryImpl,
    dst: RegistryImpl,
) -> None:
    source, target = signing_registries[src], signing_registries[dst]
    repo, image = signed_image(source, tools, tmp_path)
    backup = f"backup-{uuid.uuid4().hex[:8]}"

    copy(source, f"{repo}:1", target, f"{backup}:1")

    pinned = f"{backup}@{image.digest}"
    assert image.digest.encode() in tools.cosign.verify(target, pinned)
    assert tools.cosign.verify_attestation(target, pinned)
    upstream = referrers(tools.regctl, source, repo, image.digest)
    assert len(upstream) == 3  # signature, attestation, the regctl artifact
    assert REGCTL_TYPE in upstream.values()
    assert referrers(tools.regctl, target, backup, image.digest) == upstream


def test_a_backup_without_referrers_fails_cosign_verify(
    signing_registries: dict[RegistryImpl, RunningRegistry],
    tools: Tools,
    tmp_path: Path,
) -> None:
    source = target = signing_registries[RegistryImpl.DISTRIBUTION_2]
    repo, image = signed_image(source, tools, tmp_path)
    backup = f"unsigned-{uuid.uuid4().hex[:8]}"

    copy(source, f"{repo}:1", target, f"{backup}:1", "--referrers", "none")

    with pytest.raises(CosignError, match=r"no signatures found|no matching signatures"):
        tools.cosign.verify(target, f"{backup}@{image.digest}")
    assert tools.cosign.verify(source, f"{repo}@{image.digest}")


def test_only_the_listed_artifact_types_are_copied(
    signing_registries: dict[RegistryImpl, RunningRegistry],
    tools: Tools,
    tmp_path: Path,
) -> None:
    source, target = signing_registries[RegistryImpl.GGCR], signing_registries[RegistryImpl.GGCR]
    repo, image = signed_image(source, tools, tmp_path)
    backup = f"filtered-{uuid.uuid4().hex[:8]}"

    copy(source, f"{repo}:1", target, f"{backup}:1", "--referrers", REGCTL_TYPE)

    assert list(referrers(tools.regctl, target, backup, image.digest).values()) == [REGCTL_TYPE]
    with pytest.raises(CosignError):
        tools.cosign.verify(target, f"{backup}@{image.digest}")
