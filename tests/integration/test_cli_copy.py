"""`image-cloner copy` as a user runs it: a separate process, real registries, exit codes.

Every run is `python -m image_cloner copy ...` in a fresh process with a controlled
environment; stdout must be exactly the destination with its digest, stderr one line on
failure (and nothing at all when piped and successful).
"""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_cloner.mapping import parse_backup_location, target_for
from image_cloner.oci.references import parse_reference
from tests.support import skopeo
from tests.support.images import ImageKind, ImageSeeder, SyntheticImage
from tests.support.proxy import ProxyFactory
from tests.support.registries import RunningRegistry

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, env: Mapping[str, str] | None = None) -> Run:
    """Run `python -m image_cloner copy ARGS` with only `env` (plus PATH) set."""
    result = subprocess.run(
        [sys.executable, "-m", "image_cloner", "copy", *args],
        cwd=REPO_ROOT,
        env={"PATH": os.environ["PATH"], **(env or {})},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:8]}"


def creds(registry: RunningRegistry, password: str | None = None) -> str:
    return f"{registry.username}:{password or registry.password}"


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    return lines[0]


@pytest.fixture
def source(open_registry: RunningRegistry, seed_image: ImageSeeder) -> tuple[str, SyntheticImage]:
    """A multi-platform image in the open registry: (reference text, image)."""
    name = f"{unique('cli-src')}/app:1.0"
    return open_registry.ref(name), seed_image(open_registry, name, ImageKind.INDEX)


def test_copy_prints_the_destination_with_its_digest(
    auth_registry: RunningRegistry, source: tuple[str, SyntheticImage]
) -> None:
    src, image = source
    dst_name = f"{unique('cli')}/app:1.0"
    assert auth_registry.ca_file is not None
    run = cli(
        src,
        auth_registry.ref(dst_name),
        "--dest-creds",
        creds(auth_registry),
        "--ca-file",
        str(auth_registry.ca_file),
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{auth_registry.ref(dst_name)}@{image.digest}\n"
    assert run.stderr == ""  # piped: no progress display
    assert skopeo.inspect_raw(auth_registry, dst_name) == image.raw


def test_destination_defaults_to_the_backup_registry_with_env_credentials(
    token_registry: RunningRegistry, source: tuple[str, SyntheticImage]
) -> None:
    src, image = source
    backup_text = f"{token_registry.host}/{unique('backup')}"
    expected = target_for(parse_reference(src), parse_backup_location(backup_text))
    assert token_registry.ca_file is not None
    env = {
        "IMAGE_CLONER_REGISTRY": backup_text,
        "IMAGE_CLONER_USER": "testuser",
        "IMAGE_CLONER_PASS": "testpass",
        "IMAGE_CLONER_CA_FILE": str(token_registry.ca_file),
    }
    run = cli(src, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{expected.name}@{image.digest}"
    assert skopeo.inspect_raw(token_registry, expected.name.split("/", 1)[1]) == image.raw
    # The same credentials apply when DST is given explicitly for the backup host.
    explicit = f"{token_registry.host}/{unique('explicit')}/app:1"
    run = cli(src, explicit, env=env)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"{explicit}@{image.digest}"


def test_second_copy_is_one_request(
    auth_registry: RunningRegistry,
    source: tuple[str, SyntheticImage],
    proxy_factory: ProxyFactory,
) -> None:
    src, image = source
    target = proxy_factory(auth_registry)
    dst = target.ref(f"{unique('cli')}/app:1.0")
    assert target.ca_file is not None
    args = (src, dst, "--dest-creds", creds(auth_registry), "--ca-file", str(target.ca_file))
    assert cli(*args).returncode == 0
    target.reset()
    run = cli(*args)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"{dst}@{image.digest}\n"
    assert [(r.method, r.status) for r in target.requests()] == [("HEAD", 200)]


def test_a_destination_tag_holding_other_bits_exits_1_and_moves_only_with_force(
    auth_registry: RunningRegistry,
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
    source: tuple[str, SyntheticImage],
) -> None:
    src, image = source
    other_name = f"{unique('cli-other')}/app:1.0"
    other = seed_image(open_registry, other_name, ImageKind.SINGLE, seed="other")
    dst_name = f"{unique('cli')}/app:1.0"
    dst = auth_registry.ref(dst_name)
    assert auth_registry.ca_file is not None
    flags = ("--dest-creds", creds(auth_registry), "--ca-file", str(auth_registry.ca_file))
    assert cli(open_registry.ref(other_name), dst, *flags).returncode == 0

    run = cli(src, dst, *flags)
    assert run.returncode == 1
    assert run.stdout == ""
    line = one_line(run.stderr)
    assert f"{dst} holds {other.digest}, not {image.digest}" in line
    assert "nothing was overwritten" in line
    assert "--force moves the tag" in line
    assert skopeo.inspect_raw(auth_registry, dst_name) == other.raw  # the tag is untouched

    forced = cli(src, dst, *flags, "--force")
    assert forced.returncode == 0, forced.stderr
    assert forced.stdout == f"{dst}@{image.digest}\n"
    assert skopeo.inspect_raw(auth_registry, dst_name) == image.raw


def test_wrong_password_exits_1_with_a_clear_line_and_tags_nothing(
    auth_registry: RunningRegistry, source: tuple[str, SyntheticImage]
) -> None:
    src, _ = source
    dst_name = f"{unique('cli')}/app:1.0"
    secret = "N0t-The-Pa55word"
    assert auth_registry.ca_file is not None
    run = cli(
        src,
        auth_registry.ref(dst_name),
        "--dest-creds",
        f"testuser:{secret}",
        "--ca-file",
        str(auth_registry.ca_file),
    )
    assert run.returncode == 1
    assert run.stdout == ""
    line = one_line(run.stderr)
    assert "401" in line
    assert "credentials" in line
    assert auth_registry.host in line
    assert secret not in run.stderr
    with pytest.raises(skopeo.SkopeoError):
        skopeo.inspect_raw(auth_registry, dst_name)


def test_lying_source_exits_1_and_tags_nothing(
    open_registry: RunningRegistry,
    seed_image: ImageSeeder,
    proxy_factory: ProxyFactory,
) -> None:
    name, dst_name = f"{unique('cli-src')}/app:1", f"{unique('cli')}/app:1"
    image = seed_image(open_registry, name, ImageKind.DOCKER_SINGLE)
    source = proxy_factory(open_registry)
    source.corrupt_blob(image.blobs[-1].digest)
    run = cli(source.ref(name), open_registry.ref(dst_name))
    assert run.returncode == 1
    assert image.blobs[-1].digest in one_line(run.stderr)
    with pytest.raises(skopeo.SkopeoError):
        skopeo.inspect_raw(open_registry, dst_name)


def test_tls_without_trust_fails_and_insecure_skips_verification(
    auth_registry: RunningRegistry, source: tuple[str, SyntheticImage]
) -> None:
    src, image = source
    dst = auth_registry.ref(f"{unique('cli')}/app:1.0")
    untrusted = cli(src, dst, "--dest-creds", creds(auth_registry))
    assert untrusted.returncode == 1
    assert "certificate" in one_line(untrusted.stderr)
    insecure = cli(src, dst, "--dest-creds", creds(auth_registry), "--insecure", auth_registry.host)
    assert insecure.returncode == 0, insecure.stderr
    assert insecure.stdout == f"{dst}@{image.digest}\n"


@pytest.mark.parametrize(
    "args",
    [
        ["Nginx:1.21", "localhost:5000/nginx:1"],
        ["nginx:1.21", "localhost:5000/UPPER:1"],
        ["nginx@sha256:1234", "localhost:5000/nginx:1"],
        ["nginx:tag with space", "localhost:5000/nginx:1"],
        [":latest", "localhost:5000/x"],
        ["nginx", "localhost:5000/nginx:" + "t" * 129],
        ["nginx"],  # no DST and no IMAGE_CLONER_REGISTRY
        [],
        ["nginx", "localhost:5000/nginx", "--src-creds", "only-user-no-tty"],
        ["nginx", "localhost:5000/nginx", "--ca-file", "/nonexistent/ca.pem"],
        ["nginx", "localhost:5000/nginx", "--insecure", "not a host"],
        ["nginx", "localhost:5000/nginx", "--bogus-flag"],
    ],
)
def test_bad_input_exits_2_with_one_line(args: Sequence[str]) -> None:
    run = cli(*args)
    assert run.returncode == 2, run
    assert run.stdout == ""
    assert one_line(run.stderr).startswith("image-cloner")


@pytest.mark.parametrize(
    "env",
    [
        {"IMAGE_CLONER_REGISTRY": "not a registry"},
        {"IMAGE_CLONER_REGISTRY": "localhost:5000", "IMAGE_CLONER_USER": "u"},
        {"IMAGE_CLONER_REGISTRY": "localhost:5000", "IMAGE_CLONER_REGISTRY_MIRRORS": "x"},
        {"IMAGE_CLONER_REGISTRY": "localhost:5000/backup"},  # SRC is already a backup
    ],
)
def test_bad_configuration_exits_2(env: dict[str, str]) -> None:
    run = cli("localhost:5000/backup/nginx:1", env=env)
    assert run.returncode == 2, run
    assert one_line(run.stderr)


def test_progress_is_drawn_on_a_terminal_only(
    auth_registry: RunningRegistry, source: tuple[str, SyntheticImage]
) -> None:
    src, image = source
    dst = auth_registry.ref(f"{unique('cli-tty')}/app:1.0")
    assert auth_registry.ca_file is not None
    flags = ["--dest-creds", creds(auth_registry), "--ca-file", str(auth_registry.ca_file)]
    leader, follower = pty.openpty()
    shown: list[bytes] = []
    reader = threading.Thread(target=_drain, args=(leader, shown))
    reader.start()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "image_cloner", "copy", src, dst, *flags],
            cwd=REPO_ROOT,
            env={"PATH": os.environ["PATH"], "TERM": "xterm", "COLUMNS": "160"},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=follower,
            text=True,
        )
        os.close(follower)
        stdout, _ = proc.communicate(timeout=TIMEOUT)
    finally:
        reader.join(timeout=10)
        os.close(leader)
    assert proc.returncode == 0
    assert stdout == f"{dst}@{image.digest}\n"
    terminal = b"".join(shown).decode(errors="replace")
    assert f"blobs {len(image.blobs)} copied, 0 mounted, 0 skipped" in terminal
    quiet = cli(src, dst, *flags, "--quiet")
    assert quiet.returncode == 0
    assert quiet.stderr == ""


def _drain(fd: int, into: list[bytes]) -> None:
    """Read the terminal until it closes (the process exited), so the child never blocks."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            return
        if not chunk:
            return
        into.append(chunk)
