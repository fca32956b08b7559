"""A Secret volume written the way the kubelet writes it, for credential rotation tests.

The kubelet's AtomicWriter (pkg/volume/util/atomic_writer.go) puts each version of the keys
into a fresh timestamped directory, points `..data` at it by renaming a new symlink over the
old one, and makes each key a symlink through `..data`. A reader of a key's path sees the
old version or the new one, never a mix: exactly what our credential files must cope with.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MountedSecret"]


class MountedSecret:
    """A Secret volume the way the kubelet writes it: keys are symlinks through `..data`,
    which points at a timestamped directory; an update writes a new directory and swaps
    `..data` in one rename (atomic_writer.go)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        root.mkdir()

    def write(self, **keys: str) -> None:
        self.generation += 1
        fresh = self.root / f"..2024_01_01_00_00_0{self.generation}.0000"
        fresh.mkdir()
        for key, value in keys.items():
            (fresh / key).write_text(value)
            link = self.root / key
            if not link.is_symlink():
                link.symlink_to(Path("..data") / key)
        staging = self.root / "..data_tmp"
        staging.symlink_to(fresh.name)
        os.replace(staging, self.root / "..data")

    def path(self, key: str) -> Path:
        return self.root / key
