"""`make demo` as a newcomer runs it: `scripts/demo.sh`, judged only by what it prints and leaves.

The demo is the README's first command, so it must tell the seed's story truthfully (the log
lines in their order, the image before and after, digests equal on both sides), finish well
under two minutes, exit 0, and leave nothing behind: no process, no listening port, no files.
`--keep` must leave a working cluster whose printed instructions work, and `--down` must then
remove every trace. Each run here is a real demo: test bed, registries, controller.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.testbed import default_bin_dir, missing_binaries

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "scripts" / "demo.sh"
TIMEOUT = 300.0
"""Generous for a machine busy with other tests; the demo's own duration is asserted apart."""
MAX_SECONDS = 120.0
SOURCE = "nginx:1.21.4-alpine"
SEED_STORY = [
    ("inspecting deployment", {}),
    ("checking deployment container", {"image": SOURCE}),
    ("cloning deployment image", {"image": SOURCE}),
    ("updating deployment image", {"From": SOURCE, "To": "{target}"}),
    ("deployment image reference updated", {"image": "{target}"}),
    ("inspecting deployment", {}),
    ("checking deployment container", {"image": "{target}"}),
    ("image already cloned", {"image": "{target}"}),
]
CONTROLLER_LINE = re.compile(r"controller │ \S+ +[A-Z]+ +(?P<msg>.+?)(?:  (?P<fields>\{.*\}))?$")
DIGEST_LINE = re.compile(
    r"^ +(?P<what>\S+)? +(?P<side>source|backup) +(?P<digest>sha256:[0-9a-f]{64})"
)


@pytest.fixture(autouse=True)
def _built_testbed() -> None:
    missing = missing_binaries(default_bin_dir())
    if missing:
        pytest.fail(f"test bed binaries missing: {', '.join(missing)}; run `make testbed`")


def demo(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """scripts/demo.sh as a user's shell runs it: piped (no TTY), from another directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGE_CLONER_", "KUBE"))}
    if "IMAGE_CLONER_TESTBED_BIN" in os.environ:
        env["IMAGE_CLONER_TESTBED_BIN"] = os.environ["IMAGE_CLONER_TESTBED_BIN"]
    return subprocess.run(
        [str(DEMO), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def one(pattern: str, text: str) -> str:
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"no match for {pattern!r} in the demo's output"
    return match.group(1)


def processes_using(directory: Path) -> list[str]:
    """Command lines of every process (anyone's) that names a path in `directory`."""
    inside = f"{directory}/"
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if inside in cmdline and state != "Z":
            found.append(cmdline.replace("\0", " "))
    return found


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ports_of(out: str) -> dict[str, int]:
    return {
        "apiserver": int(one(r"kube-apiserver at https://127\.0\.0\.1:(\d+)", out)),
        "upstream": int(one(r"upstream http://127\.0\.0\.1:(\d+)", out)),
        "backup": int(one(r"backup registry https://localhost:(\d+)", out)),
    }


def assert_story(out: str) -> str:
    """The seed's story in the output; returns the rewritten image."""
    # Pinned to the digest the source's tag names (KWOK's pods report none).
    target = one(r"image after: +(localhost:\d+/nginx:1\.21\.4-alpine@sha256:[0-9a-f]{64})$", out)
    assert one(r"image before: +(\S+)$", out) == SOURCE

    # The controller's lines, echoed live, tell the seed README's story in its order.
    lines = []
    for text in out.splitlines():
        match = CONTROLLER_LINE.search(text)
        if match:
            lines.append((match["msg"], json.loads(match["fields"] or "{}")))
    position = 0
    for msg, fields in SEED_STORY:
        wanted = {"name": "nginx", "namespace": "demo-system"}
        wanted.update({k: v.format(target=target) for k, v in fields.items()})
        position = next(
            (
                i + 1
                for i, (m, f) in enumerate(lines[position:], start=position)
                if m == msg and all(f.get(k) == v for k, v in wanted.items())
            ),
            -1,
        )
        assert position > 0, f"no controller line {msg!r} {wanted} in the seed's order"

    cloned = rf"Normal +ImagesCloned +deployment/nginx +{SOURCE} → {re.escape(target)} \(digest"
    assert re.search(cloned, out, re.M)
    assert '{"nginx":"nginx:1.21.4-alpine"}' in out  # the annotation keeps the original

    # Index and each platform's manifest: the same digest in the source and in the backup.
    rows: dict[str, dict[str, str]] = {}
    what = ""
    for text in out.splitlines():
        match = DIGEST_LINE.match(text)
        if match:
            what = match["what"] or what
            rows.setdefault(what, {})[match["side"]] = match["digest"]
    assert list(rows) == ["index", "linux/amd64", "linux/arm64/v8"]
    for name, sides in rows.items():
        assert sides["source"] == sides["backup"], name
    assert len({sides["source"] for sides in rows.values()}) == 3
    assert target.endswith("@" + rows["index"]["source"])  # pinned to the source's index
    return target


def test_demo_tells_the_seed_story_and_leaves_nothing_behind(tmp_path: Path) -> None:
    result = demo(cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0, f"{out[-3000:]}\n{result.stderr}"
    assert_story(out)
    assert "\033[" not in out, "colour only on a terminal"
    assert float(one(r"the demo took ([\d.]+) s$", out)) < MAX_SECONDS

    directory = Path(one(r"\(files in (/\S+)\)$", out))
    assert not directory.exists()
    assert processes_using(directory) == []
    for name, port in ports_of(out).items():
        assert not listening(port), f"the {name} still listens on {port}"


@pytest.fixture
def kept(tmp_path: Path) -> Iterator[Path]:
    """A directory for `--keep`; whatever happens, `--down` runs on it afterwards."""
    directory = tmp_path / "demo"
    try:
        yield directory
    finally:
        demo("--down", "--dir", str(directory), cwd=tmp_path)


def test_keep_leaves_a_working_demo_and_down_removes_it(kept: Path, tmp_path: Path) -> None:
    result = demo("--keep", "--dir", str(kept), cwd=tmp_path)
    out = result.stdout
    assert result.returncode == 0, f"{out[-3000:]}\n{result.stderr}"
    target = assert_story(out)
    ports = ports_of(out)

    # The printed instructions work against what is still running.
    kubeconfig = one(r"export KUBECONFIG=(\S+)", out)
    assert Path(kubeconfig).is_relative_to(kept)
    kubectl = [str(default_bin_dir() / "kubectl"), f"--kubeconfig={kubeconfig}"]
    image = subprocess.run(
        [*kubectl, "get", "deploy", "nginx", "-n", "demo-system", "-o", "jsonpath={..image}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert image == target
    backup_inspect = one(r"^ +(skopeo inspect .*docker://localhost:\d+/\S+)$", out)
    pulled = subprocess.run(shlex.split(backup_inspect), capture_output=True, check=True)
    assert len(json.loads(pulled.stdout)["manifests"]) == 2
    log_file = Path(one(r"tail -f (\S+)", out))
    assert "image already cloned" in log_file.read_text()
    metrics_url = one(r"curl -s (http://127\.0\.0\.1:\d+/metrics)", out)
    with urllib.request.urlopen(metrics_url, timeout=5) as response:
        assert "image_cloner_images_copied_total 1.0" in response.read().decode()
    assert f"scripts/demo.sh --down --dir {kept}" in out

    # A second --keep does not start over a running one.
    again = demo("--keep", "--dir", str(kept), cwd=tmp_path)
    assert again.returncode == 1
    assert "scripts/demo.sh --down" in again.stderr

    down = demo("--down", "--dir", str(kept), cwd=tmp_path)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not kept.exists()
    assert processes_using(kept) == []
    for name, port in ports.items():
        assert not listening(port), f"the {name} still listens on {port}"


def test_down_refuses_a_directory_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious").write_text("keep me")
    result = demo("--down", "--dir", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1
    assert "not a demo directory" in result.stderr
    assert (tmp_path / "precious").read_text() == "keep me"
