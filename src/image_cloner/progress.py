"""A live progress display for `image-cloner copy` on a terminal.

Copies of large images take a while; on a terminal the user sees one bar per blob in
flight and a running total. Nothing here is used when output is piped or `--quiet`:
the CLI then stays silent apart from its result line.
"""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from image_cloner.oci.copying import BlobOutcome
from image_cloner.oci.manifests import Descriptor

__all__ = ["CopyProgress"]

SHORT_DIGEST = 12


def _label(descriptor: Descriptor) -> str:
    return descriptor.digest.split(":", 1)[-1][:SHORT_DIGEST]


class CopyProgress:
    """A `ProgressListener` drawing rich progress bars on `console` (stderr)."""

    def __init__(self, console: Console, title: str) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
        )
        self._total = self._progress.add_task(title, total=None)
        self._blobs: dict[str, TaskID] = {}
        self._outcomes: dict[BlobOutcome, int] = dict.fromkeys(BlobOutcome, 0)
        self._bytes = 0

    def __enter__(self) -> Self:
        self._progress.start()
        return self

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def blob_started(self, descriptor: Descriptor) -> None:
        task = self._blobs.get(descriptor.digest)
        if task is None:
            self._blobs[descriptor.digest] = self._progress.add_task(
                f"  {_label(descriptor)}", total=descriptor.size
            )
        else:  # a retry starts the blob over
            self._progress.reset(task, total=descriptor.size)

    def blob_advanced(self, descriptor: Descriptor, nbytes: int) -> None:
        task = self._blobs.get(descriptor.digest)
        if task is not None:
            self._progress.advance(task, nbytes)
        self._bytes += nbytes
        self._progress.update(self._total, completed=self._bytes)

    def blob_finished(self, descriptor: Descriptor, outcome: BlobOutcome) -> None:
        self._outcomes[outcome] += 1
        task = self._blobs.pop(descriptor.digest, None)
        if task is not None:
            self._progress.remove_task(task)

    def summary(self) -> str:
        """One line: what happened to the blobs."""
        return ", ".join(f"{count} {outcome}" for outcome, count in self._outcomes.items())
