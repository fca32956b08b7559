"""A test needing a test bed binary that is not built fails saying which one and how to build it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.binaries import REGISTRY_TOOLS, MissingBinaryError, missing_binaries, tool


def test_a_missing_tool_is_named_with_the_command_that_builds_it(tmp_path: Path) -> None:
    with pytest.raises(MissingBinaryError) as raised:
        tool("regctl", bin_dir=tmp_path)
    assert str(raised.value).startswith(f"regctl is not built in {tmp_path}: run `make testbed`")


def test_a_built_tool_is_found(tmp_path: Path) -> None:
    (tmp_path / "crane").write_bytes(b"")
    assert tool("crane", bin_dir=tmp_path) == tmp_path / "crane"
    assert missing_binaries(tmp_path, names=REGISTRY_TOOLS) == [
        "registry-v3",
        "ggcr-registry",
        "regctl",
        "cosign",
    ]


def test_only_listed_tools_are_looked_up(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'docker' is not one of"):
        tool("docker", bin_dir=tmp_path)
