"""Source credentials against real registries: per-user grants, per-copy logins, no sharing.

The token registry trusts the test issuer, which grants user alice `team-a/*` only (the way a
GHCR token or a Harbor robot account is limited to some repositories); the htpasswd registry
knows one user. Credentials reach the copy engine as the controller gives them: an auth file
(a Docker config.json) read by `AuthFile`, proven by `SourceAccess` with the real `Copier`,
the copy then run inside `SourceLogins.using`.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import uuid
from pathlib import Path

import pytest

from image_cloner.controller.access import AccessRefused, SourceAccess
from image_cloner.oci.copying import Copier
from image_cloner.oci.options import Credentials
from image_cloner.oci.references import parse_reference
from image_cloner.source_credentials import AuthFile, SourceLogins
from tests.support.images import ImageKind, ImageSeeder
from tests.support.registries import RunningRegistry, registry_options
from tests.support.token_issuer import TokenIssuer

ALICE = Credentials("alice", "alice-pass")


def auth_file(path: Path, entries: dict[str, Credentials]) -> Path:
    auths = {
        key: {"auth": base64.b64encode(f"{c.username}:{c.password}".encode()).decode()}
        for key, c in entries.items()
    }
    path.write_text(json.dumps({"auths": auths}))
    return path


def deployment(namespace: str) -> dict[str, object]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app", "namespace": namespace},
        "spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x"}]}}},
    }


async def test_a_per_team_token_grant_proves_its_team_only(
    tmp_path: Path,
    token_registry: RunningRegistry,
    token_issuer: TokenIssuer,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
) -> None:
    token_issuer.add_user(ALICE.username, ALICE.password, repositories=["team-a/*"])
    suffix = uuid.uuid4().hex[:8]
    mine, theirs = f"team-a/app-{suffix}:1", f"team-b/app-{suffix}:1"
    image = seed_image(token_registry, mine, ImageKind.SINGLE)
    seed_image(token_registry, theirs, ImageKind.SINGLE)
    # The controller's own mapping knows the backup only: source logins come from the chain.
    options = dataclasses.replace(
        registry_options(token_registry, open_registry),
        credentials=SourceLogins({}),
    )
    file = AuthFile(auth_file(tmp_path / "config.json", {token_registry.host: ALICE}))
    async with Copier(options) as copier:
        access = SourceAccess(probe=copier, controller_wide=[file])
        source = parse_reference(token_registry.ref(mine))
        login = await access.prove(deployment("team-a"), "team-a", source)
        assert login == ALICE
        target = parse_reference(open_registry.ref(f"backup/{mine}"))
        with SourceLogins.using(source.repository.registry.host, login):
            result = await copier.copy_image(source, target)
        assert result.digest == image.digest
        with pytest.raises(AccessRefused) as refused:
            await access.prove(
                deployment("team-a"), "team-a", parse_reference(token_registry.ref(theirs))
            )
        assert "IMAGE_CLONER_SOURCE_AUTH_FILE" in str(refused.value)
        assert ALICE.password not in str(refused.value)
    issued = [t for t in token_issuer.stats()["issued"] if t["user"] == ALICE.username]
    names = {a["name"] for t in issued for a in t["access"] if a["actions"]}
    assert names == {f"team-a/app-{suffix}"}


async def test_htpasswd_source_wrong_then_right_login(
    tmp_path: Path,
    auth_registry: RunningRegistry,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
) -> None:
    name = f"private/app-{uuid.uuid4().hex[:8]}:1"
    seed_image(auth_registry, name, ImageKind.SINGLE)
    options = dataclasses.replace(
        registry_options(auth_registry, open_registry), credentials=SourceLogins({})
    )
    path = tmp_path / "auth.json"
    right = Credentials(str(auth_registry.username), str(auth_registry.password))
    async with Copier(options) as copier:
        source = parse_reference(auth_registry.ref(name))
        anonymous = SourceAccess(probe=copier)
        with pytest.raises(AccessRefused, match="anonymous access: refused"):
            await anonymous.prove(deployment("ns"), "ns", source)
        auth_file(path, {auth_registry.host: Credentials(right.username, "wrong")})
        access = SourceAccess(probe=copier, controller_wide=[AuthFile(path)])
        with pytest.raises(AccessRefused, match="refused"):
            await access.prove(deployment("ns"), "ns", source)
        auth_file(path, {auth_registry.host: right})  # rotated: read again at the next ask
        assert await access.prove(deployment("ns"), "ns", source) == right
