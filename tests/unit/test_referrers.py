"""Referrers: the policy as written by users, and the tag schema kept without losing entries.

The tag schema is a read-modify-write of one tag; the fake registry interleaves concurrent
requests, so copies that add to the same subject at once would lose entries without the
per-subject lock and the re-read before each write.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from image_cloner.oci.client import RegistryClient
from image_cloner.oci.copying import Copier
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.manifests import OCI_INDEX, OCI_MANIFEST
from image_cloner.oci.options import ReferrersPolicy, RegistryOptions
from image_cloner.oci.references import parse_reference
from image_cloner.oci.referrers import TagSchema, schema_tag
from image_cloner.oci.transport import Transport
from tests.support.fake_registry import FakeRegistry

SUBJECT = "sha256:" + "a" * 64


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", ReferrersPolicy()),
        ("", ReferrersPolicy()),
        ("none", ReferrersPolicy(enabled=False)),
        ("all,optional", ReferrersPolicy(optional=True)),
        (
            "application/spdx+json, application/vnd.dev.sigstore.bundle.v0.3+json",
            ReferrersPolicy(
                artifact_types=frozenset(
                    {"application/spdx+json", "application/vnd.dev.sigstore.bundle.v0.3+json"}
                )
            ),
        ),
        (
            "application/spdx+json,optional",
            ReferrersPolicy(artifact_types=frozenset({"application/spdx+json"}), optional=True),
        ),
    ],
)
def test_policy_is_parsed_from_what_users_write(text: str, expected: ReferrersPolicy) -> None:
    assert ReferrersPolicy.parse(text) == expected


@pytest.mark.parametrize("text", ["some", "all,application/spdx+json", "none,all"])
def test_policy_refuses_what_it_cannot_mean(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected all|do not combine"):
        ReferrersPolicy.parse(text)


def test_a_type_list_wants_only_its_types() -> None:
    policy = ReferrersPolicy.parse("application/spdx+json")
    assert policy.wants("application/spdx+json")
    assert not policy.wants("application/vnd.dev.sigstore.bundle.v0.3+json")
    assert not ReferrersPolicy.parse("none").wants("application/spdx+json")


def test_the_schema_tag_replaces_the_colon() -> None:
    assert schema_tag(SUBJECT) == "sha256-" + "a" * 64


async def test_concurrent_additions_to_one_subject_all_survive() -> None:
    entries = [
        {
            "mediaType": OCI_MANIFEST,
            "digest": f"sha256:{n:064x}",
            "size": 100,
            "artifactType": "x/y",
        }
        for n in range(12)
    ]
    async with FakeRegistry() as fake:
        options = RegistryOptions(insecure_hosts=frozenset({fake.host}))
        async with Transport(options) as transport:
            target = RegistryClient(transport, parse_reference(f"{fake.host}/backup:1").repository)
            schema = TagSchema()
            await asyncio.gather(*(schema.add(target, SUBJECT, entry) for entry in entries))
            await schema.add(target, SUBJECT, entries[0])  # already listed: not added twice
        raw, _ = fake.manifests[("backup", schema_tag(SUBJECT))]
    listed = [entry["digest"] for entry in json.loads(raw)["manifests"]]
    assert sorted(listed) == sorted(str(entry["digest"]) for entry in entries)


async def _copy_with_a_lost_referrer(policy: ReferrersPolicy) -> FakeRegistry:
    """Copy an image whose tag schema lists a referrer the source no longer holds."""
    async with FakeRegistry() as source, FakeRegistry() as target:
        config = source.add_blob("app", b"{}", media_type="application/vnd.oci.empty.v1+json")
        image = source.add_manifest(
            "app", "1", {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config,
                         "layers": []},
        )  # fmt: skip
        lost = {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "b" * 64, "size": 10}
        source.add_manifest(
            "app", schema_tag(image["digest"]),
            {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [lost]},
        )  # fmt: skip
        options = RegistryOptions(referrers=policy)
        async with Copier(options) as copier:
            await copier.copy_image(
                parse_reference(f"{source.host}/app:1"), parse_reference(f"{target.host}/app:1")
            )
        return target


async def test_a_referrer_that_fails_to_copy_fails_the_image() -> None:
    with pytest.raises(RegistryError, match=r"MANIFEST_UNKNOWN|404"):
        await _copy_with_a_lost_referrer(ReferrersPolicy())


async def test_optional_referrers_let_the_image_through() -> None:
    target = await _copy_with_a_lost_referrer(ReferrersPolicy(optional=True))
    assert ("app", "1") in target.manifests
