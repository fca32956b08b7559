"""Manifest parsing, media types and digest checks: what the copy engine trusts and why."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from image_cloner.oci.errors import (
    DigestMismatchError,
    InvalidManifestError,
    UnsupportedMediaTypeError,
)
from image_cloner.oci.manifests import (
    ACCEPT,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_ARTIFACT_MANIFEST,
    OCI_EMPTY,
    OCI_INDEX,
    OCI_MANIFEST,
    Descriptor,
    Digester,
    ImageIndex,
    ImageManifest,
    accept_for,
    check_digest,
    digest_of,
    parse_manifest,
    resolve_media_type,
)

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def _descriptor(
    digest: str, media_type: str = "application/octet-stream", **extra: Any
) -> dict[str, Any]:
    return {"mediaType": media_type, "digest": digest, "size": 10, **extra}


def _raw(document: dict[str, Any]) -> bytes:
    # Indented on purpose: the bytes are never re-serialised, so formatting must not matter.
    return json.dumps(document, indent=3).encode()


OCI_IMAGE = {
    "schemaVersion": 2,
    "mediaType": OCI_MANIFEST,
    "config": _descriptor(D1, "application/vnd.oci.image.config.v1+json"),
    "layers": [_descriptor(D2), _descriptor(D3)],
}
DOCKER_LIST = {
    "schemaVersion": 2,
    "mediaType": DOCKER_MANIFEST_LIST,
    "manifests": [
        _descriptor(D1, DOCKER_MANIFEST, platform={"os": "linux", "architecture": "amd64"}),
        _descriptor(
            D2,
            DOCKER_MANIFEST,
            platform={"os": "linux", "architecture": "arm64", "variant": "v8"},
        ),
    ],
}


def test_accept_names_all_four_manifest_kinds() -> None:
    for media_type in (OCI_INDEX, OCI_MANIFEST, DOCKER_MANIFEST_LIST, DOCKER_MANIFEST):
        assert media_type in ACCEPT.split(", ")


@pytest.mark.parametrize(
    ("content_type", "document", "expected"),
    [
        (OCI_MANIFEST, OCI_IMAGE, OCI_MANIFEST),
        (f"{OCI_MANIFEST}; charset=utf-8", OCI_IMAGE, OCI_MANIFEST),
        ("application/json", OCI_IMAGE, OCI_MANIFEST),
        (None, DOCKER_LIST, DOCKER_MANIFEST_LIST),
        ("text/plain", {"schemaVersion": 2, "manifests": []}, OCI_INDEX),
        ("", {"schemaVersion": 2, "config": {}, "layers": []}, OCI_MANIFEST),
        (OCI_INDEX, {"schemaVersion": 2, "manifests": []}, OCI_INDEX),
    ],
)
def test_media_type_from_header_then_document_then_shape(
    content_type: str | None, document: dict[str, Any], expected: str
) -> None:
    assert resolve_media_type(content_type, _raw(document)) == expected


def test_header_and_declared_media_type_must_agree() -> None:
    with pytest.raises(InvalidManifestError, match="declares mediaType"):
        resolve_media_type(OCI_INDEX, _raw(OCI_IMAGE))


@pytest.mark.parametrize(
    ("content_type", "document"),
    [
        ("application/vnd.docker.distribution.manifest.v1+prettyjws", {"schemaVersion": 1}),
        ("application/json", {"schemaVersion": 1, "fsLayers": []}),
    ],
)
def test_docker_schema1_is_refused_with_a_clear_reason(
    content_type: str, document: dict[str, Any]
) -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="schema 1"):
        resolve_media_type(content_type, _raw(document))


@pytest.mark.parametrize("raw", [b"not json", b"[1, 2]", b'"text"'])
def test_non_object_manifests_are_invalid(raw: bytes) -> None:
    with pytest.raises(InvalidManifestError):
        resolve_media_type(OCI_MANIFEST, raw)


def test_unknown_shape_without_media_type_is_unsupported() -> None:
    with pytest.raises(UnsupportedMediaTypeError):
        resolve_media_type("application/json", _raw({"schemaVersion": 2, "files": []}))


def test_blobs_without_media_type_is_the_oci_artifact_manifest() -> None:
    document = {"schemaVersion": 2, "blobs": []}
    assert resolve_media_type("application/json", _raw(document)) == OCI_ARTIFACT_MANIFEST


def test_image_manifest_yields_config_and_layers_in_order() -> None:
    parsed = parse_manifest(_raw(OCI_IMAGE), OCI_MANIFEST)
    assert isinstance(parsed, ImageManifest)
    assert parsed.config is not None
    assert parsed.config.digest == D1
    assert [layer.digest for layer in parsed.layers] == [D2, D3]
    assert [blob.digest for blob in parsed.blobs] == [D1, D2, D3]


def test_index_yields_its_children() -> None:
    parsed = parse_manifest(_raw(DOCKER_LIST), DOCKER_MANIFEST_LIST)
    assert isinstance(parsed, ImageIndex)
    assert [(c.digest, c.media_type) for c in parsed.manifests] == [
        (D1, DOCKER_MANIFEST),
        (D2, DOCKER_MANIFEST),
    ]


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"digest": "sha256:../../../v2/other/blobs"}, "invalid config digest"),
        ({"digest": "md5:" + "0" * 32}, "invalid config digest"),
        ({"digest": "sha256:" + "A" * 64}, "invalid config digest"),
        ({"size": -1}, "invalid size"),
        ({"size": True}, "invalid size"),
        ({"size": "10"}, "invalid size"),
        ({"mediaType": None}, "no mediaType"),
        ({"urls": "http://x"}, "invalid urls"),
    ],
)
def test_descriptor_fields_are_validated(bad: dict[str, Any], message: str) -> None:
    document = {**OCI_IMAGE, "config": {**_descriptor(D1), **bad}}
    with pytest.raises(InvalidManifestError, match=message):
        parse_manifest(_raw(document), OCI_MANIFEST)


def test_manifest_without_layers_list_is_invalid() -> None:
    with pytest.raises(InvalidManifestError, match="no layers"):
        parse_manifest(_raw({"schemaVersion": 2, "config": _descriptor(D1)}), OCI_MANIFEST)


def test_index_without_manifests_list_is_invalid() -> None:
    with pytest.raises(InvalidManifestError, match="no manifests"):
        parse_manifest(_raw({"schemaVersion": 2}), OCI_INDEX)


UNKNOWN = "application/vnd.example.future.manifest.v9+json"


def test_an_oci_artifact_is_an_image_manifest_with_its_subject() -> None:
    artifact = {
        **OCI_IMAGE,
        "artifactType": "application/spdx+json",
        "config": _descriptor(D1, OCI_EMPTY),
        "layers": [_descriptor(D2, "application/spdx+json")],
        "subject": _descriptor(D3, OCI_MANIFEST),
    }
    parsed = parse_manifest(_raw(artifact), OCI_MANIFEST)
    assert isinstance(parsed, ImageManifest)
    assert [blob.digest for blob in parsed.blobs] == [D1, D2]
    assert parsed.subject is not None
    assert parsed.subject.digest == D3


@pytest.mark.parametrize(
    ("document", "blobs"),
    [
        ({"config": _descriptor(D1), "layers": [_descriptor(D2)]}, [D1, D2]),
        ({"config": _descriptor(D1)}, [D1]),
        ({"layers": [_descriptor(D2)]}, [D2]),
        ({"blobs": [_descriptor(D2), _descriptor(D3)], "subject": _descriptor(D1)}, [D2, D3]),
    ],
)
def test_unknown_media_types_are_read_by_their_shape(
    document: dict[str, Any], blobs: list[str]
) -> None:
    for media_type in (UNKNOWN, OCI_ARTIFACT_MANIFEST):
        parsed = parse_manifest(_raw(document), media_type)
        assert isinstance(parsed, ImageManifest)
        assert [blob.digest for blob in parsed.blobs] == blobs


def test_an_unknown_media_type_listing_manifests_is_an_index() -> None:
    document = {"manifests": [_descriptor(D1, OCI_INDEX)], "subject": _descriptor(D2)}
    parsed = parse_manifest(_raw(document), UNKNOWN)
    assert isinstance(parsed, ImageIndex)
    assert [(c.digest, c.media_type) for c in parsed.manifests] == [(D1, OCI_INDEX)]
    assert parsed.subject is not None
    assert parsed.subject.digest == D2


def test_an_unknown_media_type_of_unknown_shape_is_refused() -> None:
    with pytest.raises(UnsupportedMediaTypeError, match="cannot be copied completely"):
        parse_manifest(_raw({"schemaVersion": 2, "files": []}), UNKNOWN)


def test_accept_adds_a_child_type_we_do_not_list() -> None:
    assert accept_for(None) == ACCEPT
    assert accept_for(OCI_MANIFEST) == ACCEPT
    assert accept_for(UNKNOWN) == f"{ACCEPT}, {UNKNOWN}"
    assert accept_for("a/b, c/d") == ACCEPT
    assert accept_for("a/b\r\nX-Injected: 1") == ACCEPT


@pytest.mark.parametrize(
    ("media_type", "urls", "foreign"),
    [
        ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", ("https://x/l",), True),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", ("https://x/l",), True),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip", (), False),
        ("application/vnd.oci.image.layer.v1.tar+gzip", ("https://x/l",), False),
    ],
)
def test_only_nondistributable_layers_with_urls_are_foreign(
    media_type: str, urls: tuple[str, ...], foreign: bool
) -> None:
    assert Descriptor(media_type, D1, 1, urls=urls).is_foreign is foreign


def test_digest_of_matches_hashlib() -> None:
    data = b"hello"
    assert digest_of(data) == "sha256:" + hashlib.sha256(data).hexdigest()
    assert digest_of(data, algorithm="sha512") == "sha512:" + hashlib.sha512(data).hexdigest()


@pytest.mark.parametrize(
    "digest",
    ["sha256:" + "a" * 64, "sha384:" + "b" * 96, "sha512:" + "c" * 128],
)
def test_check_digest_accepts_well_formed_digests(digest: str) -> None:
    assert check_digest(digest) == digest


@pytest.mark.parametrize(
    "digest",
    [None, 42, "", "sha256:" + "a" * 63, "sha256:" + "a" * 64 + "/x", "SHA256:" + "a" * 64],
)
def test_check_digest_refuses_anything_else(digest: object) -> None:
    with pytest.raises(InvalidManifestError):
        check_digest(digest)


def _digester_for(data: bytes, *, size: int | None = None) -> Digester:
    return Digester("sha256:" + hashlib.sha256(data).hexdigest(), size=size)


def test_digester_verifies_a_stream_fed_in_chunks() -> None:
    data = bytes(range(256)) * 1000
    digester = _digester_for(data, size=len(data))
    for start in range(0, len(data), 4096):
        digester.update(data[start : start + 4096])
    digester.verify("blob")
    assert digester.size == len(data)


def test_digester_reports_flipped_bytes() -> None:
    digester = _digester_for(b"original")
    digester.update(b"Original")
    with pytest.raises(DigestMismatchError, match="expected sha256:"):
        digester.verify("blob x")


def test_digester_reports_a_short_stream_by_size() -> None:
    digester = _digester_for(b"original", size=8)
    digester.update(b"orig")
    with pytest.raises(DigestMismatchError, match="expected 8 bytes, received 4"):
        digester.verify("blob x")
