"""Image references: distribution's own test vectors, Docker Hub defaults, errors that say why.

Vectors marked "reference_test.go" / "normalize_test.go" / "regexp_test.go" are ported
from github.com/distribution/reference (the package Docker, containerd and the kubelet
use). reference_test.go exercises `Parse` (no normalisation); we parse like
`ParseNormalizedNamed`, so the expected names there carry Docker Hub's defaults.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

from image_cloner.oci.references import (
    DEFAULT_TAG,
    DOCKER_HUB,
    DOCKER_HUB_API,
    InvalidReference,
    Reference,
    Registry,
    Repository,
    parse_digest,
    parse_reference,
)

SHA256_F = "sha256:" + "f" * 64
SHA512_F = "sha512:" + "f" * 128
REDIS_DIGEST = "sha256:dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"

# (input, repository name, tag, digest) — tag None means "no tag"; the default
# tag `latest` is filled in only when there is neither tag nor digest.
VALID = [
    # reference_test.go TestReferenceParse
    ("test_com", "docker.io/library/test_com", DEFAULT_TAG, None),
    ("test.com:tag", "docker.io/library/test.com", "tag", None),
    ("test.com:5000", "docker.io/library/test.com", "5000", None),
    ("test.com/repo:tag", "test.com/repo", "tag", None),
    ("test:5000/repo", "test:5000/repo", DEFAULT_TAG, None),
    ("test:5000/repo:tag", "test:5000/repo", "tag", None),
    (f"test:5000/repo@{SHA256_F}", "test:5000/repo", None, SHA256_F),
    (f"test:5000/repo:tag@{SHA256_F}", "test:5000/repo", "tag", SHA256_F),
    ("lowercase:Uppercase", "docker.io/library/lowercase", "Uppercase", None),
    (
        "a/" * 127 + "a:tag-puts-this-over-max",
        "docker.io/" + "a/" * 127 + "a",
        "tag-puts-this-over-max",
        None,
    ),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com/bar/baz/quux", DEFAULT_TAG, None),
    (
        "sub-dom1.foo.com/bar/baz/quux:some-long-tag",
        "sub-dom1.foo.com/bar/baz/quux",
        "some-long-tag",
        None,
    ),
    (
        "b.gcr.io/test.example.com/my-app:test.example.com",
        "b.gcr.io/test.example.com/my-app",
        "test.example.com",
        None,
    ),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com/myimage", "xn--n3h.com", None),
    (
        f"xn--7o8h.com/myimage:xn--7o8h.com@{SHA512_F}",
        "xn--7o8h.com/myimage",
        "xn--7o8h.com",
        SHA512_F,
    ),
    ("foo_bar.com:8080", "docker.io/library/foo_bar.com", "8080", None),
    ("foo/foo_bar.com:8080", "docker.io/foo/foo_bar.com", "8080", None),
    ("192.168.1.1", "docker.io/library/192.168.1.1", DEFAULT_TAG, None),
    ("192.168.1.1:tag", "docker.io/library/192.168.1.1", "tag", None),
    ("192.168.1.1:5000", "docker.io/library/192.168.1.1", "5000", None),
    ("192.168.1.1/repo", "192.168.1.1/repo", DEFAULT_TAG, None),
    ("192.168.1.1:5000/repo", "192.168.1.1:5000/repo", DEFAULT_TAG, None),
    ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000/repo", "5050", None),
    ("[2001:db8::1]/repo", "[2001:db8::1]/repo", DEFAULT_TAG, None),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]/repo", "tag", None),
    ("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000/repo", DEFAULT_TAG, None),
    ("[2001:db8::1]:5000/repo:tag", "[2001:db8::1]:5000/repo", "tag", None),
    (f"[2001:db8::1]:5000/repo@{SHA256_F}", "[2001:db8::1]:5000/repo", None, SHA256_F),
    (f"[2001:db8::1]:5000/repo:tag@{SHA256_F}", "[2001:db8::1]:5000/repo", "tag", SHA256_F),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000/repo", DEFAULT_TAG, None),
    ("[::1]:5000/repo", "[::1]:5000/repo", DEFAULT_TAG, None),
    # reference_test.go TestSerialization
    ("example.com:8000/named:tagged", "example.com:8000/named", "tagged", None),
    (
        "other.com/named@sha256:1234567890098765432112345667890098765432112345667890098765432112",
        "other.com/named",
        None,
        "sha256:1234567890098765432112345667890098765432112345667890098765432112",
    ),
    # regexp_test.go TestReferenceRegexp (normalised)
    (
        "registry.com:8080/myapp:tag2@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
        "registry.com:8080/myapp",
        "tag2",
        "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
    ),
    (
        "localhost:8080@sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
        "docker.io/library/localhost",
        "8080",
        "sha256:be178c0543eb17f5f3043021c9e5fcf30285e557a4fc309cce97ff9ca6182912",
    ),
    (
        "registry.io/foo/project--id.module--name.ver---sion--name",
        "registry.io/foo/project--id.module--name.ver---sion--name",
        DEFAULT_TAG,
        None,
    ),
    (
        "example.com/some_separator__underscore/myimage",
        "example.com/some_separator__underscore/myimage",
        DEFAULT_TAG,
        None,
    ),
    # normalize_test.go TestParseAnyReference (the non-ID cases)
    ("redis", "docker.io/library/redis", DEFAULT_TAG, None),
    ("redis:latest", "docker.io/library/redis", "latest", None),
    ("docker.io/library/redis:latest", "docker.io/library/redis", "latest", None),
    (f"redis@{REDIS_DIGEST}", "docker.io/library/redis", None, REDIS_DIGEST),
    (f"docker.io/library/redis@{REDIS_DIGEST}", "docker.io/library/redis", None, REDIS_DIGEST),
    ("dmcgowan/myapp", "docker.io/dmcgowan/myapp", DEFAULT_TAG, None),
    (f"dmcgowan/myapp@{REDIS_DIGEST}", "docker.io/dmcgowan/myapp", None, REDIS_DIGEST),
    (HEX64[:-1], "docker.io/library/" + HEX64[:-1], DEFAULT_TAG, None),
    ("dbcc1", "docker.io/library/dbcc1", DEFAULT_TAG, None),
    # normalize_test.go TestParseReferenceWithTagAndDigest
    (
        "busybox:latest@sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
        "docker.io/library/busybox",
        "latest",
        "sha256:86e0e091d0da6bde2456dbb48306f3956bbeb2eae1b5b9a43045843f69fe4aaa",
    ),
    # ours: the seed's image, Docker Hub aliases, loopback registries
    ("nginx:1.21.4-alpine", "docker.io/library/nginx", "1.21.4-alpine", None),
    ("bitnami/redis:7", "docker.io/bitnami/redis", "7", None),
    ("index.docker.io/nginx", "docker.io/library/nginx", DEFAULT_TAG, None),
    ("localhost/app", "localhost/app", DEFAULT_TAG, None),
    ("localhost:5000/nginx:1.21.4-alpine", "localhost:5000/nginx", "1.21.4-alpine", None),
    ("Quay.IO/org/app:1", "quay.io/org/app", "1", None),
    (
        "docker.io/1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a",
        "docker.io/library/" + HEX64,
        DEFAULT_TAG,
        None,
    ),
    ("n:" + "t" * 128, "docker.io/library/n", "t" * 128, None),
]


@pytest.mark.parametrize(("text", "name", "tag", "digest"), VALID, ids=[v[0][:60] for v in VALID])
def test_valid_references(text: str, name: str, tag: str | None, digest: str | None) -> None:
    ref = parse_reference(text)
    assert ref.repository.name == name
    assert (ref.tag, ref.digest) == (tag, digest)
    assert str(ref) == text
    assert ref.identifier == (digest or tag)
    # The fully qualified name means the same thing when read again.
    assert parse_reference(ref.name) == ref


# normalize_test.go TestValidateReferenceName / TestValidateRemoteName (valid halves).
@pytest.mark.parametrize(
    "text",
    [
        "docker/docker",
        "library/debian",
        "debian",
        "docker.io/docker/docker",
        "docker.io/library/debian",
        "docker.io/debian",
        "index.docker.io/docker/docker",
        "index.docker.io/library/debian",
        "index.docker.io/debian",
        "127.0.0.1:5000/docker/docker",
        "127.0.0.1:5000/library/debian",
        "127.0.0.1:5000/debian",
        "192.168.0.1",
        "192.168.0.1:80",
        "192.168.0.1:8/debian",
        "192.168.0.2:25000/debian",
        "thisisthesongthatneverendsitgoesonandonandonthisisthesongthatnev",
        "[fc00::1]:5000/docker",
        "[fc00::1]:5000/docker/docker",
        "[fc00:1:2:3:4:5:6:7]:5000/library/debian",
        "docker.io/" + HEX64,
        "Docker/docker",
        "DOCKER/docker",
        "docker-rules/docker",
        "docker---rules/docker",
        "doc/docker",
        "d/docker",
        "jess/t",
        "dock__er/docker",
    ],
)
def test_valid_names(text: str) -> None:
    ref = parse_reference(text)
    assert parse_reference(ref.name) == ref


# (input, what the error must say)
INVALID = [
    # reference_test.go TestReferenceParse
    ("", "reference is empty"),
    (":justtag", "empty component"),
    (f"@{SHA256_F}", "empty component"),
    ("repo@sha256:" + "f" * 34, "a sha256 digest has 64 hex characters, not 34"),
    ("validname@invaliddigest:" + "f" * 64, "unsupported digest algorithm 'invaliddigest'"),
    ("Uppercase:tag", "repository name must be lowercase"),
    ("test:5000/Uppercase/lowercase:tag", "repository name must be lowercase"),
    ("a/" * 128 + "a:tag", "must not be more than 255 characters"),
    ("aa/asdf$$^/aa", "invalid path component 'asdf$$^'"),
    ("[2001:db8::1]", "invalid path component"),
    ("[2001:db8::1]:5000", "invalid path component"),
    ("[2001:db8::1]:tag", "invalid path component"),
    ("[fe80::1%eth0]:5000/repo", "invalid registry host '[fe80::1%eth0]:5000'"),
    ("[fe80::1%@invalidzone]:5000/repo", "invalid registry host"),
    # normalize_test.go TestValidateReferenceName / TestValidateRemoteName
    ("https://github.com/docker/docker", "invalid registry host 'https:'"),
    ("docker/Docker", "repository name must be lowercase"),
    ("-docker", "invalid path component '-docker'"),
    ("-docker/docker", "invalid path component '-docker'"),
    ("-docker.io/docker/docker", "invalid registry host '-docker.io'"),
    ("docker///docker", "empty component"),
    ("docker.io/docker/Docker", "repository name must be lowercase"),
    ("docker.io/docker///docker", "empty component"),
    ("[fc00::1]", "invalid path component"),
    ("[fc00::1]:5000", "invalid path component"),
    ("fc00::1:5000/debian", "invalid registry host 'fc00::1:5000'"),
    ("[fe80::1%eth0]:5000/debian", "invalid registry host"),
    ("[2001:db8:3:4::192.0.2.33]:5000/debian", "invalid registry host"),
    (HEX64, "image ID"),
    ("docker-/docker", "invalid path component 'docker-'"),
    ("-docker-/docker", "invalid path component"),
    ("____/____", "invalid path component '____'"),
    ("_docker/_docker", "invalid path component '_docker'"),
    # A first component with a dot is read as a host (Docker's rule), so that is what fails.
    ("dock..er/docker", "invalid registry host 'dock..er'"),
    ("dock_.er/docker", "invalid registry host 'dock_.er'"),
    ("dock-.er/docker", "invalid registry host 'dock-.er'"),
    ("dock/..er", "invalid path component '..er'"),
    ("docker/", "empty component"),
    ("this_is_not_a_valid_namespace_because_its_lenth_is_greater_than_255" * 4 + "/docker", "255"),
    # regexp_test.go (TestFullNameRegexp / TestReferenceRegexp / TestDomainRegexp)
    ("registry.com:8080/myapp@sha256:badbadbadbad", "a sha256 digest has 64 hex characters"),
    ("registry.com:8080/myapp:invalid~tag", "invalid tag 'invalid~tag'"),
    ("bad_hostname.com:8080/myapp:tag", "invalid registry host 'bad_hostname.com:8080'"),
    ("localhost:http/name@" + SHA256_F, "invalid registry host 'localhost:http'"),
    ("registry.com:8080/myapp@bad", "expected '<algorithm>:<hex>'"),
    ("registry.com:8080/myapp@2bad", "expected '<algorithm>:<hex>'"),
    ("foo.com:http/bar", "invalid registry host"),
    ("foo.com/a-/a/a", "invalid path component 'a-'"),
    ("example.com/__underscore/myimage", "invalid path component"),
    ("example.com/..dots/myimage", "invalid path component"),
    ("docker./docker", "invalid registry host 'docker.'"),
    (".docker/docker", "invalid registry host '.docker'"),
    ("do__cker:8080/docker", "invalid registry host"),
    ("Foo/FarB", "repository name must be lowercase"),
    ("ab-.com/x", "invalid registry host"),
    # ours
    ("Nginx", "repository name must be lowercase"),
    ("nginx:", "tag is empty"),
    ("nginx:-x", "invalid tag '-x'"),
    ("nginx:" + "t" * 129, "tag must not be more than 128 characters"),
    ("nginx@", "expected '<algorithm>:<hex>'"),
    ("nginx@sha256:" + "F" * 64, "digest hex must be lowercase"),
    ("nginx@sha256:" + "g" * 64, "must be hexadecimal"),
    ("nginx@sha512:" + "f" * 64, "a sha512 digest has 128 hex characters, not 64"),
    ("nginx:1@sha256:" + "f" * 64 + "@x", "must be hexadecimal"),
    ("nginx:1:2", "invalid tag '1:2'"),
    ("localhost:0/x", "port 0 is outside 1-65535"),
    ("192.168.1.1:750050/x", "port 750050 is outside 1-65535"),
    ("[fd00123123123]:5000/x", "[fd00123123123] is not an IPv6 address"),
    ("a" * 250, "must not be more than 255 characters"),
    (" nginx", "invalid path component"),
    ("nginx\n", "invalid path component"),
    ("\uff4eginx", "invalid path component"),  # fullwidth n: Python's \w would take it
    ("nginx:t\u00e0g", "invalid tag"),
]


@pytest.mark.parametrize(("text", "reason"), INVALID, ids=[v[0][:60] for v in INVALID])
def test_invalid_references(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_reference(text)
    message = str(caught.value)
    # Long input is cut short: messages end up in Events, which have a size limit.
    shown = text if len(text) <= 120 else text[:100] + "…"
    assert message.startswith(f"invalid reference {shown!r}: ")
    assert reason in message
    assert "\n" not in message
    assert len(message) < 500


# normalize_test.go TestParseRepositoryInfo: every spelling gives the same familiar
# name, full name, registry and path.
@pytest.mark.parametrize(
    ("spellings", "familiar", "full", "host", "path"),
    [
        (
            ["fooo/bar", "docker.io/fooo/bar", "index.docker.io/fooo/bar"],
            "fooo/bar",
            "docker.io/fooo/bar",
            DOCKER_HUB,
            "fooo/bar",
        ),
        (
            ["ubuntu", "docker.io/library/ubuntu", "library/ubuntu"],
            "ubuntu",
            "docker.io/library/ubuntu",
            DOCKER_HUB,
            "library/ubuntu",
        ),
        (
            ["nonlibrary/ubuntu", "docker.io/nonlibrary/ubuntu"],
            "nonlibrary/ubuntu",
            "docker.io/nonlibrary/ubuntu",
            DOCKER_HUB,
            "nonlibrary/ubuntu",
        ),
        (
            ["other/library", "docker.io/other/library"],
            "other/library",
            "docker.io/other/library",
            DOCKER_HUB,
            "other/library",
        ),
        (
            ["127.0.0.1:8000/private/moonbase"],
            "127.0.0.1:8000/private/moonbase",
            "127.0.0.1:8000/private/moonbase",
            "127.0.0.1:8000",
            "private/moonbase",
        ),
        (
            ["127.0.0.1:8000/privatebase"],
            "127.0.0.1:8000/privatebase",
            "127.0.0.1:8000/privatebase",
            "127.0.0.1:8000",
            "privatebase",
        ),
        (
            ["example.com/private/moonbase"],
            "example.com/private/moonbase",
            "example.com/private/moonbase",
            "example.com",
            "private/moonbase",
        ),
        (
            ["example.com:8000/privatebasee"],
            "example.com:8000/privatebasee",
            "example.com:8000/privatebasee",
            "example.com:8000",
            "privatebasee",
        ),
        (
            [
                "ubuntu-12.04-base",
                "docker.io/library/ubuntu-12.04-base",
                "index.docker.io/library/ubuntu-12.04-base",
            ],
            "ubuntu-12.04-base",
            "docker.io/library/ubuntu-12.04-base",
            DOCKER_HUB,
            "library/ubuntu-12.04-base",
        ),
        (
            ["foo", "docker.io/library/foo", "docker.io/foo"],
            "foo",
            "docker.io/library/foo",
            DOCKER_HUB,
            "library/foo",
        ),
        (
            ["library/foo/bar", "docker.io/library/foo/bar"],
            "library/foo/bar",
            "docker.io/library/foo/bar",
            DOCKER_HUB,
            "library/foo/bar",
        ),
        (
            ["store/foo/bar", "docker.io/store/foo/bar"],
            "store/foo/bar",
            "docker.io/store/foo/bar",
            DOCKER_HUB,
            "store/foo/bar",
        ),
        (["Foo/bar"], "Foo/bar", "Foo/bar", "Foo", "bar"),
        (["FOO/bar"], "FOO/bar", "FOO/bar", "FOO", "bar"),
        # normalize_test.go TestNormalizedSplitHostname
        (["test_com/foo"], "test_com/foo", "docker.io/test_com/foo", DOCKER_HUB, "test_com/foo"),
        (
            ["docker/migrator"],
            "docker/migrator",
            "docker.io/docker/migrator",
            DOCKER_HUB,
            "docker/migrator",
        ),
        (["test-com:8080/foo"], "test-com:8080/foo", "test-com:8080/foo", "test-com:8080", "foo"),
        (
            ["xn--n3h.com:18080/foo"],
            "xn--n3h.com:18080/foo",
            "xn--n3h.com:18080/foo",
            "xn--n3h.com:18080",
            "foo",
        ),
    ],
)
def test_repository_info(
    spellings: list[str], familiar: str, full: str, host: str, path: str
) -> None:
    for text in spellings:
        repository = parse_reference(text).repository
        assert (repository.familiar, repository.name) == (familiar, full), text
        assert (repository.registry.host, repository.path) == (host, path), text


# regexp_test.go TestDomainRegexp; "will fail in validation" cases fail here.
@pytest.mark.parametrize(
    ("host", "valid"),
    [
        ("test.com", True),
        ("test.com:10304", True),
        ("test.com:http", False),
        ("localhost", True),
        ("localhost:8080", True),
        ("a", True),
        ("a.b", True),
        ("ab.cd.com", True),
        ("a-b.com", True),
        ("-ab.com", False),
        ("ab-.com", False),
        ("ab.c-om", True),
        ("ab.-com", False),
        ("ab.com-", False),
        ("0101.com", True),
        ("001a.com", True),
        ("b.gbc.io:443", True),
        ("xn--n3h.com", True),
        ("Asdf.com", True),
        ("192.168.1.1:75050", False),
        ("[fd00:1:2::3]:7505", True),
        ("[fd00:1:2::3]75050", False),
        ("[fd00:1:2::3]::75050", False),
        ("[fd00:1:2::3%eth0]:75050", False),
        ("[fd00123123123]:7505", False),
        ("[2001:0db8:85a3:0000:0000:8a2e:0370:7334]:7505", True),
        ("fd00:1:2::3:75050", False),
        ("", False),
        ("host/path", False),
    ],
)
def test_registry_hosts(host: str, valid: bool) -> None:
    if valid:
        registry = Registry(host)
        assert Registry(registry.host) == registry  # normalising twice changes nothing
    else:
        with pytest.raises(InvalidReference, match="invalid registry host"):
            Registry(host)


@pytest.mark.parametrize(
    ("host", "normalised", "api_host", "loopback"),
    [
        ("docker.io", "docker.io", DOCKER_HUB_API, False),
        ("index.docker.io", "docker.io", DOCKER_HUB_API, False),
        ("Index.Docker.IO", "docker.io", DOCKER_HUB_API, False),
        ("registry-1.docker.io", "registry-1.docker.io", "registry-1.docker.io", False),
        ("localhost", "localhost", "localhost", True),
        ("LOCALHOST:5000", "localhost:5000", "localhost:5000", True),
        ("127.0.0.1:5000", "127.0.0.1:5000", "127.0.0.1:5000", True),
        ("127.9.8.7", "127.9.8.7", "127.9.8.7", True),
        ("[::1]:5000", "[::1]:5000", "[::1]:5000", True),
        ("[::1]", "[::1]", "[::1]", True),
        ("[FD00::1]:5000", "[fd00::1]:5000", "[fd00::1]:5000", False),
        ("[0:0:0:0:0:0:0:1]:5000", "[::1]:5000", "[::1]:5000", True),
        ("[2001:0db8:0000::0001]", "[2001:db8::1]", "[2001:db8::1]", False),
        ("128.0.0.1", "128.0.0.1", "128.0.0.1", False),
        ("127.0.0.1.nip.io", "127.0.0.1.nip.io", "127.0.0.1.nip.io", False),
        ("localhost.example.com", "localhost.example.com", "localhost.example.com", False),
        ("Quay.IO", "quay.io", "quay.io", False),
        ("Registry", "Registry", "Registry", False),  # a host only through its case: kept
    ],
)
def test_registry_normalisation(host: str, normalised: str, api_host: str, loopback: bool) -> None:
    registry = Registry(host)
    assert (registry.host, str(registry)) == (normalised, normalised)
    assert registry.api_host == api_host
    assert registry.is_loopback is loopback


def test_registry_hostname_and_port() -> None:
    assert (Registry("[::1]:5000").hostname, Registry("[::1]:5000").port) == ("[::1]", 5000)
    assert (Registry("localhost").hostname, Registry("localhost").port) == ("localhost", None)
    assert (Registry("quay.io:443").hostname, Registry("quay.io:443").port) == ("quay.io", 443)


def test_repository_built_in_code_is_normalised_and_validated() -> None:
    hub = Registry("docker.io")
    assert Repository(hub, "nginx") == Repository(hub, "library/nginx")
    assert Repository(hub, "nginx").familiar == "nginx"
    assert str(Repository(Registry("localhost:5000"), "nginx")) == "localhost:5000/nginx"
    with pytest.raises(InvalidReference, match="repository name must be lowercase"):
        Repository(hub, "Nginx")
    with pytest.raises(InvalidReference, match="repository path is missing"):
        Repository(Registry("localhost:5000"), "")


def test_reference_built_in_code() -> None:
    repository = Repository(Registry("localhost:5000"), "nginx")
    ref = Reference(repository)
    assert (ref.tag, ref.digest, ref.identifier) == (DEFAULT_TAG, None, DEFAULT_TAG)
    assert str(ref) == "localhost:5000/nginx:latest"
    pinned = Reference(repository, digest=SHA256_F)
    assert (pinned.tag, str(pinned)) == (None, f"localhost:5000/nginx@{SHA256_F}")
    with pytest.raises(InvalidReference, match="invalid tag"):
        Reference(repository, tag="-bad")
    with pytest.raises(InvalidReference, match="unsupported digest algorithm 'md5'"):
        Reference(repository, digest="md5:" + "f" * 32)


def test_digest_wins_but_tag_is_kept() -> None:
    ref = parse_reference(f"nginx:1.21.4-alpine@{SHA256_F}")
    assert ref.identifier == SHA256_F
    assert ref.tag == "1.21.4-alpine"
    assert ref.familiar == f"nginx:1.21.4-alpine@{SHA256_F}"
    assert ref.name == f"docker.io/library/nginx:1.21.4-alpine@{SHA256_F}"


def test_str_gives_the_input_back_and_equality_ignores_spelling() -> None:
    spellings = ["nginx", "nginx:latest", "docker.io/nginx", "index.docker.io/library/nginx:latest"]
    refs = [parse_reference(text) for text in spellings]
    assert [str(ref) for ref in refs] == spellings
    assert len(set(refs)) == 1
    assert {ref.familiar for ref in refs} == {"nginx:latest"}
    assert repr(refs[0]) == "Reference('docker.io/library/nginx:latest')"


def test_with_digest_and_with_tag() -> None:
    ref = parse_reference("quay.io/org/app:1")
    pinned = ref.with_digest(SHA256_F)
    assert (pinned.tag, pinned.digest, pinned.identifier) == ("1", SHA256_F, SHA256_F)
    assert str(pinned) == f"quay.io/org/app:1@{SHA256_F}"
    retagged = pinned.with_tag("2")
    assert (retagged.tag, retagged.digest) == ("2", SHA256_F)
    assert ref.with_tag("2") == parse_reference("quay.io/org/app:2")
    with pytest.raises(InvalidReference, match="sha256 digest has 64 hex characters"):
        ref.with_digest("sha256:abc")
    with pytest.raises(InvalidReference, match="invalid tag"):
        ref.with_tag("a b")


def test_references_are_immutable() -> None:
    ref = parse_reference("nginx")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ref.tag = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        (SHA256_F, None),
        (SHA512_F, None),
        ("sha384:" + "0" * 96, None),
        ("sha256:" + "f" * 63, "a sha256 digest has 64 hex characters, not 63"),
        ("sha256:" + "A" * 64, "lowercase"),
        ("sha256" + "f" * 64, "expected '<algorithm>:<hex>'"),
        ("blake3:" + "f" * 64, "unsupported digest algorithm 'blake3'"),
        ("sha256+b64:" + "f" * 64, "unsupported digest algorithm 'sha256+b64'"),
        (":" + "f" * 64, "expected '<algorithm>:<hex>'"),
        ("", "expected '<algorithm>:<hex>'"),
    ],
)
def test_parse_digest(text: str, reason: str | None) -> None:
    if reason is None:
        assert parse_digest(text) == text
    else:
        with pytest.raises(InvalidReference, match=re.escape(reason)):
            parse_digest(text)
