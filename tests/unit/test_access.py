"""Access proofs: a workload's own credentials, the kubelet's order, no confused deputy.

The Kubernetes side is the in-process `FakeKube`; the registry side a probe that accepts
the logins a test says, per repository, as an htpasswd or token registry would.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from image_cloner.controller.access import AccessRefused, SourceAccess
from image_cloner.controller.source_secrets import SecretReader
from image_cloner.oci.errors import AuthenticationError
from image_cloner.oci.options import Credentials
from image_cloner.oci.references import Reference, parse_reference
from image_cloner.source_credentials import AuthFile, SourceCredential, SourceLogins
from tests.support.clock import Clock
from tests.support.fake_kube import FakeKube, deployment

IMAGE = parse_reference("private.example.com/team-a/app:1")
GOOD = Credentials("alice", "right")
LOGINS = SourceLogins({})


class Probe:
    """Accepts `accepted` for every image (and anonymous access when `public`)."""

    def __init__(self, *accepted: Credentials, public: bool = False) -> None:
        self.accepted = set(accepted)
        self.public = public
        self.asked: list[Credentials | None] = []

    async def source_digest(self, reference: Reference) -> str | None:
        login = LOGINS.get(reference.repository.registry.host)
        self.asked.append(login)
        if (login is None and self.public) or login in self.accepted:
            return "sha256:" + "a" * 64
        raise AuthenticationError("401 unauthorized", status=401)


def pull_secret(kube: FakeKube, namespace: str, name: str, login: Credentials) -> None:
    config = {
        "auths": {"private.example.com": {"username": login.username, "password": login.password}}
    }
    kube.users_objects[("secrets", namespace, name)] = {
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(json.dumps(config).encode()).decode()},
    }


def workload(namespace: str, *, secrets: tuple[str, ...] = (), account: str | None = None) -> dict:  # type: ignore[type-arg]
    obj = deployment("app", {"app": str(IMAGE)}, namespace=namespace)
    spec = obj["spec"]["template"]["spec"]
    if secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in secrets]
    if account:
        spec["serviceAccountName"] = account
    return obj


async def test_only_the_namespace_holding_the_secret_is_proven() -> None:
    kube = FakeKube()
    pull_secret(kube, "team-a", "regcred", GOOD)
    access = SourceAccess(probe=Probe(GOOD), secrets=SecretReader(kube))
    assert await access.prove(workload("team-a", secrets=("regcred",)), "team-a", IMAGE) == GOOD
    # Namespace B names a Secret of the same name it does not have: A's is never used.
    with pytest.raises(AccessRefused) as refused:
        await access.prove(workload("team-b", secrets=("regcred",)), "team-b", IMAGE)
    message = str(refused.value)
    assert "namespace team-b" in message
    assert "Secret team-b/regcred (imagePullSecrets): not found" in message
    assert "anonymous access: refused (401)" in message
    assert "right" not in message


async def test_service_account_secrets_and_the_default_account() -> None:
    kube = FakeKube()
    pull_secret(kube, "team-a", "sa-cred", GOOD)
    kube.users_objects[("serviceaccounts", "team-a", "default")] = {
        "imagePullSecrets": [{"name": "sa-cred"}]
    }
    access = SourceAccess(probe=Probe(GOOD), secrets=SecretReader(kube))
    assert await access.prove(workload("team-a"), "team-a", IMAGE) == GOOD
    assert ("serviceaccounts", "team-a", "default") in kube.object_reads


async def test_candidates_are_tried_in_order_until_one_is_accepted() -> None:
    kube = FakeKube()
    pull_secret(kube, "team-a", "old", Credentials("alice", "wrong"))
    pull_secret(kube, "team-a", "new", GOOD)
    probe = Probe(GOOD)
    access = SourceAccess(probe=probe, secrets=SecretReader(kube))
    assert await access.prove(workload("team-a", secrets=("old", "new")), "team-a", IMAGE) == GOOD
    assert probe.asked == [Credentials("alice", "wrong"), GOOD]


async def test_a_proof_is_kept_for_a_while_then_asked_again() -> None:
    clock = Clock(0.0)
    probe = Probe(public=True)
    access = SourceAccess(probe=probe, clock=clock)
    for _ in range(3):
        assert await access.prove(workload("team-a"), "team-a", IMAGE) is None
    assert probe.asked == [None]
    clock.now += 601
    await access.prove(workload("team-a"), "team-a", IMAGE)
    assert probe.asked == [None, None]


async def test_without_the_opt_in_secrets_are_never_read_and_the_event_says_why() -> None:
    kube = FakeKube()
    pull_secret(kube, "team-a", "regcred", GOOD)
    access = SourceAccess(probe=Probe(GOOD))
    with pytest.raises(AccessRefused, match="IMAGE_CLONER_READ_PULL_SECRETS=true"):
        await access.prove(workload("team-a", secrets=("regcred",)), "team-a", IMAGE)
    assert kube.object_reads == []


async def test_a_fixed_secret_is_read_again_after_a_refusal() -> None:
    kube = FakeKube()
    pull_secret(kube, "team-a", "regcred", Credentials("alice", "wrong"))
    access = SourceAccess(probe=Probe(GOOD), secrets=SecretReader(kube))
    obj = workload("team-a", secrets=("regcred",))
    with pytest.raises(AccessRefused):
        await access.prove(obj, "team-a", IMAGE)
    pull_secret(kube, "team-a", "regcred", GOOD)
    assert await access.prove(obj, "team-a", IMAGE) == GOOD


class Foreign:
    """A provider that wrongly hands out another namespace's login."""

    async def for_image(self, reference: Reference, namespace: str) -> list[SourceCredential]:
        return [SourceCredential(GOOD, "Secret team-a/regcred", "team-a")]


async def test_a_login_of_another_namespace_is_never_used() -> None:
    probe = Probe(GOOD)
    access = SourceAccess(probe=probe, controller_wide=[Foreign()])
    with pytest.raises(AccessRefused):
        await access.prove(workload("team-b"), "team-b", IMAGE)
    assert probe.asked == [None]


def test_source_logins_override_one_host_in_a_block() -> None:
    logins = SourceLogins({"private.example.com": Credentials("ctl", "x"), "other": GOOD})
    with SourceLogins.using("private.example.com", None):
        assert logins.get("private.example.com") is None
        assert logins.get("other") == GOOD
    with SourceLogins.using("private.example.com", GOOD):
        assert logins["private.example.com"] == GOOD
    assert logins["private.example.com"] == Credentials("ctl", "x")


async def test_the_auth_file_follows_its_content_and_keeps_the_last_good_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "auth.json"
    entry = {"username": "alice", "password": "one"}
    path.write_text(json.dumps({"auths": {"private.example.com/team-a": entry}}))
    file = AuthFile(path)
    found = await file.for_image(IMAGE, "any")
    assert [f.credentials for f in found] == [Credentials("alice", "one")]
    assert found[0].namespace is None
    assert await file.for_image(parse_reference("private.example.com/team-b/x:1"), "any") == []
    path.write_text(json.dumps({"auths": {"private.example.com": {**entry, "password": "two"}}}))
    assert [f.credentials for f in await file.for_image(IMAGE, "any")] == [
        Credentials("alice", "two")
    ]
    path.write_text("{half-written")
    assert [f.credentials for f in await file.for_image(IMAGE, "any")] == [
        Credentials("alice", "two")
    ]
