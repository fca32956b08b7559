"""Signatures travel with the image on the test bed: `cosign verify` passes on the backup the
workload is rewritten to.

The upstream image (an OCI index, docker.io through the mirror setting) is signed with the
real cosign (`--tlog-upload=false`) and given an SBOM attestation; a Deployment runs it, its
pods report the digest as a kubelet would (status subresource), and only then does a
controller of the test's own start, as after an install on an existing cluster. Once the
workload names the backup, cosign must verify the signature and the attestation against
exactly that reference. Two backups: distribution 2.8 (htpasswd + TLS; no referrers API, so
the `sha256-<hex>` tag schema) and go-containerregistry's registry (TLS; the referrers API).
With the controller stopped, the signatures are deleted from the backup and cosign must then
refuse it (so the positive check can fail).

A signature added upstream after the backup (a second key, as after a key rotation) reaches
the backup at the first pass after `IMAGE_CLONER_REFERRERS_RESYNC`: cosign with the new key
then verifies the backup too.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e import test_controller as base
from tests.e2e.test_controller import apply, rollout, unique, wait_for_images, workload
from tests.e2e.test_pinning import Case, report_image_ids
from tests.support.controller import ControllerProcess, wait_until
from tests.support.cosign import Cosign, CosignError
from tests.support.images import ImageSeeder
from tests.support.pki import TestPKI
from tests.support.proxy import RegistryProxy
from tests.support.regctl import Regctl
from tests.support.registries import RegistryEndpoint, RegistryImpl, RegistryKind, RunningRegistry
from tests.support.testbed import Testbed

SBOM = {"spdxVersion": "SPDX-2.3", "SPDXID": "SPDXRef-DOCUMENT", "name": "synthetic"}
BUNDLE = "application/vnd.dev.sigstore.bundle"
"""The artifact type of cosign's signatures and attestations (`…bundle.v0.3+json`)."""
PREDICATE_TYPE = "dev.sigstore.bundle.predicateType"
"""The annotation of cosign's bundle manifests: what the bundle holds."""
SIGNATURE = "https://sigstore.dev/cosign/sign/v1"
"""...for a signature; an attestation carries its predicate's type (SPDX's here)."""
RESYNC = "2"
"""Seconds between re-examinations of a backed-up image in the resync test."""


@dataclass(frozen=True)
class Bed:
    testbed: Testbed
    source: RunningRegistry
    """Where images are seeded and signed (docker.io's mirror, behind `upstream`)."""
    upstream: RegistryProxy
    backups: dict[RegistryImpl, RunningRegistry]
    seed: ImageSeeder
    pki: TestPKI
    sa_kubeconfig: Path
    cosign: Cosign
    regctl: Regctl
    workdir: Path


@pytest.fixture(scope="module")
def ggcr_backup(
    tmp_path_factory: pytest.TempPathFactory, test_pki: TestPKI
) -> Iterator[RunningRegistry]:
    """go-containerregistry's registry with the referrers API, over TLS (it has no auth)."""
    registry = RunningRegistry(
        tmp_path_factory.mktemp("ggcr-backup"),
        kind=RegistryKind.TLS,
        impl=RegistryImpl.GGCR,
        pki=test_pki,
    )
    with registry:
        yield registry


@pytest.fixture(scope="module")
def bed(
    *,
    testbed: Testbed,
    open_registry: RunningRegistry,
    upstream: RegistryProxy,
    backup: RunningRegistry,
    ggcr_backup: RunningRegistry,
    seed_image: ImageSeeder,
    test_pki: TestPKI,
    sa_kubeconfig: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Bed:
    return Bed(
        testbed=testbed,
        source=open_registry,
        upstream=upstream,
        backups={RegistryImpl.DISTRIBUTION_2: backup, RegistryImpl.GGCR: ggcr_backup},
        seed=seed_image,
        pki=test_pki,
        sa_kubeconfig=sa_kubeconfig,
        cosign=Cosign(tmp_path_factory.mktemp("cosign")),
        regctl=Regctl(tmp_path_factory.mktemp("regctl")),
        workdir=tmp_path_factory.mktemp("signatures"),
    )


class NamedAs(RegistryEndpoint):
    """The backup as the rewritten workloads name it (`localhost:PORT`, as base.backup_host):
    the same registry, login and CA under that host."""

    def __init__(self, registry: RunningRegistry) -> None:
        self.host = base.backup_host(registry)
        self.scheme = registry.scheme
        self.username, self.password = registry.username, registry.password
        self.ca_file, self.cert_dir = registry.ca_file, registry.cert_dir


def signed_ready_workload(bed: Bed, namespace: str) -> Case:
    """A fresh index upstream, signed and attested by `bed.cosign`; a Ready Deployment of it
    whose pod reports that digest. No controller watches `namespace` yet."""
    name = unique("signed")
    image = bed.seed(bed.source, f"library/{name}:v1", "index", seed=name)
    pinned = f"library/{name}@{image.digest}"
    bed.cosign.sign(bed.source, pinned)
    predicate = bed.workdir / f"{name}.sbom.json"
    predicate.write_text(json.dumps(SBOM))
    bed.cosign.attest(bed.source, pinned, predicate)
    case = Case(name, namespace, image, (image.digest,), name)
    apply(bed.testbed, workload("Deployment", name, namespace, {"app": case.image}))
    rollout(bed.testbed, namespace, "Deployment", name)
    report_image_ids(bed.testbed, case)
    return case


def controller_for(bed: Bed, impl: RegistryImpl, namespace: str, **extra: str) -> ControllerProcess:
    backup = bed.backups[impl]
    env = {
        "IMAGE_CLONER_REGISTRY": base.backup_host(backup),
        "IMAGE_CLONER_CA_FILE": str(bed.pki.ca_cert),
        "IMAGE_CLONER_REGISTRY_MIRRORS": f"docker.io={bed.upstream.url}",
        "IMAGE_CLONER_POD_NAMESPACE": base.CONTROLLER_NAMESPACE,
        "IMAGE_CLONER_NAMESPACE": namespace,
        **extra,
    }
    if backup.username is not None and backup.password is not None:
        env |= {"IMAGE_CLONER_USER": backup.username, "IMAGE_CLONER_PASS": backup.password}
    process = ControllerProcess(
        bed.workdir / unique("controller"), kubeconfig=bed.sa_kubeconfig, env=env
    )
    process.start()
    return process


def stopped(process: ControllerProcess) -> None:
    code = process.stop()
    assert code == 0, f"controller exited {code}:\n{process.log_text()[-3000:]}"


def resource_version(bed: Bed, namespace: str, name: str) -> str:
    done = bed.testbed.kubectl(
        "get", "deployment", name, "-n", namespace, "-o", "jsonpath={.metadata.resourceVersion}"
    )
    return str(done.stdout)


def rewritten(bed: Bed, impl: RegistryImpl, case: Case) -> str:
    """Wait for the rewrite; the backup reference the workload names now (repo:tag@digest)."""
    host = base.backup_host(bed.backups[impl])
    wanted = f"{host}/{case.image}@{case.ran.digest}"
    wait_for_images(bed.testbed, case.namespace, "Deployment", case.name, {"app": wanted})
    return wanted.removeprefix(f"{host}/")


def bundles(bed: Bed, registry: RunningRegistry, repo: str, digest: str) -> dict[str, str]:
    """cosign's bundles listed as referrers of `digest`: digest → what the bundle holds."""
    body = bed.regctl.run(
        registry, "artifact", "list", registry.ref(f"{repo}@{digest}"), "--format", "body"
    )
    found = {}
    for entry in json.loads(body)["manifests"]:
        manifest = json.loads(bed.regctl.manifest(registry, f"{repo}@{entry['digest']}"))
        if manifest.get("artifactType", "").startswith(BUNDLE):
            found[entry["digest"]] = manifest.get("annotations", {}).get(PREDICATE_TYPE, "")
    return found


@pytest.mark.parametrize("impl", [RegistryImpl.DISTRIBUTION_2, RegistryImpl.GGCR])
def test_cosign_verifies_the_backup_the_workload_names(
    bed: Bed, namespace: str, impl: RegistryImpl
) -> None:
    case = signed_ready_workload(bed, namespace)
    controller = controller_for(bed, impl, namespace)
    try:
        named = rewritten(bed, impl, case)
        backup = NamedAs(bed.backups[impl])
        assert case.ran.digest.encode() in bed.cosign.verify(backup, named)
        assert bed.cosign.verify_attestation(backup, named)
    finally:
        stopped(controller)  # nothing may copy the signature back while it is deleted below

    # cosign's `verify` accepts any of the image's bundles signed by the key (the attestation's
    # too), so a backup that lost its signatures is one without either.
    registry = bed.backups[impl]
    lost = bundles(bed, registry, case.name, case.ran.digest)
    assert sorted(lost.values()) == sorted([SIGNATURE, "https://spdx.dev/Document"]), lost
    for digest in lost:
        bed.regctl.run(registry, "manifest", "delete", registry.ref(f"{case.name}@{digest}"))

    with pytest.raises(CosignError):
        bed.cosign.verify(backup, named)
    with pytest.raises(CosignError):
        bed.cosign.verify_attestation(backup, named)
    assert bed.cosign.verify(bed.source, f"library/{case.name}@{case.ran.digest}")


def test_a_signature_added_upstream_later_reaches_the_backup(bed: Bed, namespace: str) -> None:
    impl = RegistryImpl.DISTRIBUTION_2
    case = signed_ready_workload(bed, namespace)
    controller = controller_for(bed, impl, namespace, IMAGE_CLONER_REFERRERS_RESYNC=RESYNC)
    try:
        named = rewritten(bed, impl, case)
        backup = NamedAs(bed.backups[impl])
        assert bed.cosign.verify(backup, named)

        # The rollout onto the backup is over and the workload quiet: no watch event, no
        # followed rollout brings it back; only the re-examination's own timer does.
        bed.testbed.kubectl(
            "rollout", "status", f"deployment/{case.name}", "-n", namespace, "--timeout=60s"
        )
        quiet = controller.find("inspecting deployment")
        time.sleep(3 * float(RESYNC))
        assert len(controller.find("inspecting deployment")) > len(quiet), (
            "passes queued by the timer"
        )
        version = resource_version(bed, namespace, case.name)
        rotated = Cosign(bed.workdir / unique("rotated-key"))
        rotated.sign(bed.source, f"library/{case.name}@{case.ran.digest}")

        def verified_with_the_new_key() -> bool:
            try:
                rotated.verify(backup, named)
            except CosignError:
                return False
            return True

        wait_until(
            verified_with_the_new_key,
            timeout=base.ROLLOUT,
            what="the new signature in the backup",
            log_file=controller.log_file,
            interval=1.0,
        )
        assert resource_version(bed, namespace, case.name) == version, "nobody touched it"
        synced = controller.find("referrers synced")
        assert any(line.get("pushed", 0) >= 1 for line in synced), synced
        assert controller.metric("image_cloner_referrer_resyncs_total", outcome="copied") >= 1
        assert bed.cosign.verify(backup, named)  # the first key's signature is still there
    finally:
        stopped(controller)
