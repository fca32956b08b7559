"""The kubelet's keyring rules (pkg/credentialprovider/keyring_test.go's vectors, ported)."""

from __future__ import annotations

import base64
import json

import pytest

from image_cloner.keyring import (
    DockerConfigError,
    Keyring,
    is_default_registry_match,
    parse_docker_config,
    urls_match,
)
from image_cloner.oci.options import Credentials

# TestURLsMatch
URL_VECTORS = [
    # match when there is no path component
    ("*.kubernetes.io", "prefix.kubernetes.io", True),
    ("prefix.*.io", "prefix.kubernetes.io", True),
    ("prefix.kubernetes.*", "prefix.kubernetes.io", True),
    ("*-good.kubernetes.io", "prefix-good.kubernetes.io", True),
    # match with path components
    ("*.kubernetes.io/blah", "prefix.kubernetes.io/blah", True),
    ("prefix.*.io/foo", "prefix.kubernetes.io/foo/bar", True),
    # match with path components and ports
    ("*.kubernetes.io:1111/blah", "prefix.kubernetes.io:1111/blah", True),
    ("prefix.*.io:1111/foo", "prefix.kubernetes.io:1111/foo/bar", True),
    # no match when number of parts mismatch
    ("*.kubernetes.io", "kubernetes.io", False),
    ("*.*.kubernetes.io", "prefix.kubernetes.io", False),
    ("*.*.kubernetes.io", "kubernetes.io", False),
    # no match when some parts mismatch
    ("kubernetes.io", "kubernetes.com", False),
    ("k*.io", "quay.io", False),
    # no match when ports mismatch
    ("*.kubernetes.io:1234/blah", "prefix.kubernetes.io:1111/blah", False),
    ("prefix.*.io/foo", "prefix.kubernetes.io:1111/foo/bar", False),
]


@pytest.mark.parametrize(("glob", "target", "expected"), URL_VECTORS)
def test_urls_match(glob: str, target: str, expected: bool) -> None:
    assert urls_match(glob, target) is expected


def login(name: str) -> Credentials:
    return Credentials(name, name + "-pw")


# TestDockerKeyringForGlob / TestKeyringMiss / TestKeyringMissWithDockerHubCredentials ...
@pytest.mark.parametrize(
    ("key", "image", "hit"),
    [
        ("https://hello.kubernetes.io", "hello.kubernetes.io/foo/bar", True),
        ("https://*.docker.io", "world.docker.io/foo/bar", True),
        ("https://*.docker.io", "hello.docker.io/foo/bar", True),
        ("https://hello.*.io", "hello.docker.io/foo/bar", True),
        ("https://*.docker.*", "hello.docker.io/foo/bar", True),
        ("https://*.*.io", "hello.docker.io/foo/bar", True),
        ("http://hello.*.io", "hello.docker.io/foo/bar", True),
        ("hello.kubernetes.io/v2/", "hello.kubernetes.io/foo/bar", True),
        ("https://hello.kubernetes.io/v1/", "hello.kubernetes.io/foo/bar", True),
        ("quay.io/coreos", "quay.io/coreos/etcd", True),
        ("quay.io/coreos", "quay.io/other/etcd", False),
        ("https://hello.kubernetes.io", "world.mesos.org/foo/bar", False),
        ("https://*.docker.io", "docker.io/foo/bar", False),
        ("localhost:5000", "localhost:5000/team-a/app", True),
        ("localhost:5000", "localhost:5001/team-a/app", False),
        ("localhost", "localhost:5000/team-a/app", False),
    ],
)
def test_lookup_matches_keys_like_the_kubelet(key: str, image: str, hit: bool) -> None:
    found = Keyring.of([(key, login("a"))]).lookup(image)
    assert found == ([login("a")] if hit else [])


def test_longer_paths_come_first_and_every_match_is_tried() -> None:
    keyring = Keyring.of(
        [
            ("quay.io", login("host")),
            ("quay.io/coreos", login("org")),
            ("quay.io/coreos/etcd", login("repo")),
            ("*.quay.io", login("glob")),
        ]
    )
    assert keyring.lookup("quay.io/coreos/etcd") == [login("repo"), login("org"), login("host")]


def test_docker_hub_credentials_serve_hub_images_only() -> None:
    keyring = Keyring.of([("https://index.docker.io/v1/", login("hub"))])
    assert keyring.lookup("docker.io/library/nginx") == [login("hub")]
    assert keyring.lookup("quay.io/library/nginx") == []
    assert is_default_registry_match("foo/bar")
    assert is_default_registry_match("library/ubuntu")
    assert not is_default_registry_match("localhost/foo")
    assert not is_default_registry_match("registry.example:5000/foo")


def test_docker_config_formats() -> None:
    auth = base64.b64encode(b"user:pa:ss").decode()
    config = {"auths": {"ghcr.io": {"auth": auth}, "quay.io": {"username": "u", "password": "p"}}}
    assert parse_docker_config(json.dumps(config).encode(), what="x") == [
        ("ghcr.io", Credentials("user", "pa:ss")),
        ("quay.io", Credentials("u", "p")),
    ]
    legacy = {"https://index.docker.io/v1/": {"auth": auth, "email": "x@y"}}
    assert parse_docker_config(json.dumps(legacy).encode(), what="x") == [
        ("https://index.docker.io/v1/", Credentials("user", "pa:ss"))
    ]


def test_unreadable_docker_config_names_the_file_not_its_content() -> None:
    with pytest.raises(DockerConfigError) as caught:
        parse_docker_config(b"{secret-password", what="the Secret")
    assert "secret-password" not in str(caught.value)
    assert "the Secret" in str(caught.value)
