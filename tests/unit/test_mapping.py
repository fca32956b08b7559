"""Backup naming: the documented examples, and no two sources ever sharing a target."""

from __future__ import annotations

import itertools
import random

import pytest

from image_cloner.mapping import BackupLocation, is_backup, parse_backup_location, target_for
from image_cloner.oci.references import (
    InvalidReference,
    Reference,
    Registry,
    Repository,
    parse_reference,
)

DIGEST = "sha256:" + "ab" * 32
LOCAL = parse_backup_location("localhost:5000")
PREFIXED = parse_backup_location("registry.example.com/backup")


@pytest.mark.parametrize(
    ("source", "backup", "target"),
    [
        ("nginx:1.21.4-alpine", LOCAL, "localhost:5000/nginx:1.21.4-alpine"),
        ("docker.io/library/nginx:1.21.4-alpine", LOCAL, "localhost:5000/nginx:1.21.4-alpine"),
        ("bitnami/redis:7", LOCAL, "localhost:5000/bitnami/redis:7"),
        ("library/foo/bar:1", LOCAL, "localhost:5000/library/foo/bar:1"),
        ("quay.io/org/app:1", LOCAL, "localhost:5000/quay.io/org/app:1"),
        ("Quay.IO/org/app:1", LOCAL, "localhost:5000/quay.io/org/app:1"),
        ("myreg.local:5001/a/b:2", LOCAL, "localhost:5000/myreg.local_5001/a/b:2"),
        ("registry:5000/app:3", LOCAL, "localhost:5000/registry_5000/app:3"),
        ("localhost/app:1", LOCAL, "localhost:5000/localhost/app:1"),
        ("localhost:5000/app:1", PREFIXED, "registry.example.com/backup/localhost_5000/app:1"),
        ("127.0.0.1:5002/app:1", LOCAL, "localhost:5000/127.0.0.1_5002/app:1"),
        (
            "[::1]:5000/app:1",
            LOCAL,
            "localhost:5000/ipv6_0000-0000-0000-0000-0000-0000-0000-0001_5000/app:1",
        ),
        (
            "[2001:db8::1]/app:1",
            LOCAL,
            "localhost:5000/ipv6_2001-0db8-0000-0000-0000-0000-0000-0001/app:1",
        ),
        ("docker.io/foo.bar/app:1", LOCAL, "localhost:5000/docker.io/foo.bar/app:1"),
        ("foo_bar/app:1", LOCAL, "localhost:5000/docker.io/foo_bar/app:1"),
        ("docker.io/localhost/app:1", LOCAL, "localhost:5000/docker.io/localhost/app:1"),
        ("docker.io/quay.io/org/app:1", LOCAL, "localhost:5000/docker.io/quay.io/org/app:1"),
        ("foo-bar/app:1", LOCAL, "localhost:5000/foo-bar/app:1"),
        ("nginx:1.21.4-alpine", PREFIXED, "registry.example.com/backup/nginx:1.21.4-alpine"),
        ("quay.io/org/app:1", PREFIXED, "registry.example.com/backup/quay.io/org/app:1"),
        ("nginx:1", parse_backup_location("docker.io/myorg"), "myorg/nginx:1"),
        (f"nginx@{DIGEST}", LOCAL, f"localhost:5000/nginx@{DIGEST}"),
        (f"nginx:1.21@{DIGEST}", LOCAL, f"localhost:5000/nginx:1.21@{DIGEST}"),
        ("nginx", LOCAL, "localhost:5000/nginx:latest"),
    ],
)
def test_examples(source: str, backup: BackupLocation, target: str) -> None:
    src = parse_reference(source)
    dst = target_for(src, backup)
    assert str(dst) == target
    assert (dst.tag, dst.digest) == (src.tag, src.digest)
    assert parse_reference(str(dst)) == dst
    assert is_backup(dst, backup)
    assert not is_backup(src, backup)


def test_single_label_uppercase_host_cannot_be_named() -> None:
    # Docker reads "Registry" as a host only because of its case.
    source = parse_reference("Registry/app:1")
    with pytest.raises(InvalidReference, match="cannot name a backup for registry host 'Registry'"):
        target_for(source, LOCAL)


def test_too_long_target_is_refused_with_the_source_named() -> None:
    path = "/".join(["abcdefghi"] * 25)  # 249 characters: fine as a source
    source = parse_reference(f"quay.io/{path}:1")
    with pytest.raises(
        InvalidReference, match=r"cannot name a backup for 'quay\.io/.*more than 255"
    ):
        target_for(source, PREFIXED)
    short = parse_reference(f"quay.io/{path[:199]}:1")
    assert len(target_for(short, LOCAL).repository.path) == len("quay.io/") + 199


# Sources for the no-collision property: tricky hosts and paths crossed with each
# other, then a seeded random sample of longer combinations.
HOSTS = [
    "docker.io",
    "index.docker.io",
    "registry-1.docker.io",
    "docker.io:5000",
    "quay.io",
    "Quay.IO",
    "quay.io:5000",
    "quay.io:05000",
    "localhost",
    "localhost:5000",
    "127.0.0.1",
    "127.0.0.1:5000",
    "[::1]",
    "[::1]:5000",
    "[0:0::1]:5000",
    "[2001:db8::1]",
    "[2001:db8::1]:5000",
    "ipv6:5000",
    "ipv6.example",
    "foo.bar",
    "foo.bar:1",
    "foo:1",
    "a-b.c",
    "xn--n3h.com",
]
COMPONENTS = [
    "nginx",
    "library",
    "foo",
    "bar",
    "foo.bar",
    "foo_bar",
    "foo__bar",
    "foo-bar",
    "localhost",
    "docker.io",
    "quay.io",
    "foo.bar_1",
    "ipv6_5000",
    "ipv6_0000-0000-0000-0000-0000-0000-0000-0001_5000",
    "localhost_5000",
    "127.0.0.1_5000",
]
BACKUPS = [
    LOCAL,
    PREFIXED,
    parse_backup_location("quay.io:5000/mirror/team"),
    parse_backup_location("docker.io/myorg"),
    parse_backup_location("[::1]:5000"),
]


def _sources() -> set[Repository]:
    paths = [*COMPONENTS, *("/".join(p) for p in itertools.product(COMPONENTS, repeat=2))]
    rng = random.Random(20240501)
    paths += ["/".join(rng.choices(COMPONENTS, k=rng.randint(3, 5))) for _ in range(500)]
    sources = set()
    for host, path in itertools.product(HOSTS, paths):
        try:
            sources.add(parse_reference(f"{host}/{path}").repository)
        except InvalidReference:
            continue  # e.g. a host component the grammar refuses: not a source
    for path in paths:  # Docker Hub repositories with any path, also dotted first components
        sources.add(Repository(Registry("docker.io"), path))
    return sources


SOURCES = _sources()


@pytest.mark.parametrize("backup", BACKUPS, ids=str)
def test_distinct_sources_never_share_a_target(backup: BackupLocation) -> None:
    assert len(SOURCES) > 5000
    seen: dict[Repository, Repository] = {}
    for source in SOURCES:
        target = target_for(Reference(source, "1"), backup)
        assert seen.setdefault(target.repository, source) == source, (source, target)
        # The target is a valid name that reads back as itself, inside the backup.
        assert parse_reference(target.name) == target
        assert is_backup(target, backup)
        assert target.repository.path.startswith(backup.prefix)


@pytest.mark.parametrize(
    ("ref", "backup", "expected"),
    [
        ("localhost:5000/nginx:1", LOCAL, True),
        ("localhost:5000/a/b/c:1", LOCAL, True),
        ("LOCALHOST:5000/nginx:1", LOCAL, True),
        ("localhost:5001/nginx:1", LOCAL, False),
        ("127.0.0.1:5000/nginx:1", LOCAL, False),  # same machine maybe, but another name
        ("nginx:1", LOCAL, False),
        ("registry.example.com/backup/nginx:1", PREFIXED, True),
        ("registry.example.com/backup/quay.io/org/app@" + DIGEST, PREFIXED, True),
        ("registry.example.com/backup:1", PREFIXED, False),
        ("registry.example.com/backups/nginx:1", PREFIXED, False),
        ("registry.example.com/nginx:1", PREFIXED, False),
        ("myorg/nginx:1", parse_backup_location("docker.io/myorg"), True),
        ("nginx:1", parse_backup_location("docker.io/myorg"), False),
    ],
)
def test_is_backup(ref: str, backup: BackupLocation, expected: bool) -> None:
    assert is_backup(parse_reference(ref), backup) is expected


@pytest.mark.parametrize(
    ("text", "host", "prefix"),
    [
        ("localhost:5000", "localhost:5000", ""),
        ("localhost", "localhost", ""),
        ("localhost:5000/", "localhost:5000", ""),
        ("registry.example.com/backup", "registry.example.com", "backup"),
        ("Registry.Example.com/backup/team-a", "registry.example.com", "backup/team-a"),
        ("127.0.0.1:5000", "127.0.0.1:5000", ""),
        ("[::1]:5000/b", "[::1]:5000", "b"),
        ("docker.io/myorg", "docker.io", "myorg"),
        ("index.docker.io/myorg", "docker.io", "myorg"),
        ("registry:5000", "registry:5000", ""),
    ],
)
def test_parse_backup_location(text: str, host: str, prefix: str) -> None:
    location = parse_backup_location(text)
    assert location == BackupLocation(Registry(host), prefix)
    assert str(location) == (f"{host}/{prefix}" if prefix else host)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "it is empty"),
        ("registry", "would be read as a Docker Hub namespace"),
        ("registry/backup", "would be read as a Docker Hub namespace"),
        ("Registry/backup", "would be read as a Docker Hub namespace"),
        ("docker.io", "Docker Hub needs a namespace"),
        ("https://registry.example.com", "not a URL"),
        ("registry.example.com/Backup", "path prefix: repository name must be lowercase"),
        ("registry.example.com/a//b", "path prefix: repository path has an empty component"),
        ("registry.example.com/backup:1", "takes no tag"),
        ("registry.example.com/backup@" + DIGEST, "takes no digest"),
        ("bad_host.com:5000", "invalid registry host 'bad_host.com:5000'"),
        ("registry.example.com:99999", "port 99999 is outside 1-65535"),
        ("registry.example.com/" + "a" * 256, "must not be more than 255 characters"),
    ],
)
def test_parse_backup_location_errors(text: str, reason: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_backup_location(text)
    assert str(caught.value).startswith(f"invalid backup location {text!r}: ")
    assert reason in str(caught.value)


def test_backup_location_built_in_code_is_validated() -> None:
    with pytest.raises(InvalidReference, match="Docker Hub needs a namespace"):
        BackupLocation(Registry("docker.io"))
    with pytest.raises(InvalidReference, match="read as a Docker Hub namespace"):
        BackupLocation(Registry("Registry"), "x")
