"""How the demo talks: numbered steps, commands as a user would type them, the controller's log.

The demo is read by someone who has never seen the project, so its output is a story, not a
log: a heading per step, the `kubectl`/`skopeo` commands that show each fact, and the
controller's own lines echoed live (its JSON log rendered back into the seed's readable form).
Colour only on a terminal that wants it (not when piped, not with `NO_COLOR`), and every write
holds one lock, because the controller's lines arrive from a thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from tests.support.controller import LogLine

__all__ = ["ControllerEcho", "DigestRow", "Story"]

_RESET = "\033[0m"
_STYLES = {
    "heading": "\033[1;36m",
    "command": "\033[1m",
    "ok": "\033[32m",
    "warn": "\033[33m",
    "error": "\033[1;31m",
    "dim": "\033[2m",
}
_LEVEL_STYLES = {"warning": "warn", "error": "error", "critical": "error"}
_INDENT = "    "


@dataclass(frozen=True)
class DigestRow:
    """One manifest of the image, as skopeo read it from each registry."""

    what: str
    """`index` or the platform, e.g. `linux/arm64/v8`."""
    source: str
    backup: str


class Story:
    """Writes the demo's output; one instance per run, shared with the controller's echo."""

    def __init__(self, stream: TextIO, *, colour: bool) -> None:
        self._stream = stream
        self._colour = colour
        self._lock = threading.RLock()
        self._held: list[str] | None = None

    @classmethod
    def for_stdout(cls) -> Story:
        colour = (
            sys.stdout.isatty()
            and "NO_COLOR" not in os.environ
            and os.environ.get("TERM", "") != "dumb"
        )
        return cls(sys.stdout, colour=colour)

    def _paint(self, style: str, text: str) -> str:
        return f"{_STYLES[style]}{text}{_RESET}" if self._colour else text

    def _write(self, *lines: str, controller: bool = False) -> None:
        with self._lock:
            if controller and self._held is not None:
                self._held.extend(lines)
                return
            # Indented empty lines would leave trailing blanks.
            self._stream.write("".join(f"{line.rstrip()}\n" for line in lines))
            self._stream.flush()

    @contextlib.contextmanager
    def hold_controller(self) -> Iterator[None]:
        """Keep the controller's lines back until the block ends (a command and its output
        stay together); they are written then, in order."""
        with self._lock:
            self._held = []
        try:
            yield
        finally:
            with self._lock:
                held, self._held = self._held or [], None
                self._write(*held)

    def title(self, text: str) -> None:
        self._write(self._paint("heading", text))

    def heading(self, number: int, total: int, text: str) -> None:
        self._write("", self._paint("heading", f"[{number}/{total}] {text}"))

    def section(self, text: str) -> None:
        self._write("", self._paint("heading", text))

    def say(self, text: str) -> None:
        self._write(*(f"{_INDENT}{line}" for line in text.splitlines()))

    def command(self, text: str) -> None:
        self._write(f"{_INDENT}{self._paint('command', '$ ' + text)}")

    def output(self, text: str) -> None:
        self._write(*(f"{_INDENT}  {line}" for line in text.splitlines()))

    def ok(self, text: str) -> None:
        self._write(f"{_INDENT}{self._paint('ok', '✓')} {text}")

    def warn(self, text: str) -> None:
        self._write(f"{_INDENT}{self._paint('warn', '!')} {text}")

    def failed(self, text: str) -> None:
        """To stderr, after everything written so far: the reason the demo exits non-zero."""
        lines = text.splitlines() or [""]
        with self._lock:
            self._stream.flush()
            colour = self._colour and sys.stderr.isatty()
            first = f"{_STYLES['error']}demo failed:{_RESET}" if colour else "demo failed:"
            sys.stderr.write("\n".join(["", f"{first} {lines[0]}", *lines[1:]]) + "\n")
            sys.stderr.flush()

    def controller(self, line: LogLine) -> None:
        """One controller log line: `controller │ 18:51:25.484 DEBUG msg {fields}`."""
        core = {"time", "level", "logger", "msg", "exception"}
        fields = {k: v for k, v in line.items() if k not in core}
        clock = str(line.get("time", ""))[11:23]
        level = str(line.get("level", "")).upper()
        text = f"{clock} {level:<7} {line.get('msg', '')}"
        if fields:
            text += f"  {json.dumps(fields, ensure_ascii=False)}"
        style = _LEVEL_STYLES.get(str(line.get("level")))
        prefix = self._paint("dim", "controller │")
        extra = str(line.get("exception", "")).splitlines()
        body = [self._paint(style, text) if style else text, *extra]
        self._write(*(f"{_INDENT}{prefix} {part}" for part in body), controller=True)

    def digest_table(self, source_label: str, backup_label: str, rows: Sequence[DigestRow]) -> None:
        """Each manifest's digest in the source and in the backup, one under the other."""
        width = max(len(row.what) for row in rows) + 2
        lines = [f"{'manifest':<{width}}registry  digest"]
        for row in rows:
            same = self._paint("ok", "✓ same") if row.source == row.backup else ""
            if not same:
                same = self._paint("error", "✗ DIFFERENT")
            lines += [
                f"{row.what:<{width}}source    {row.source}",
                f"{'':<{width}}backup    {row.backup}  {same}",
            ]
        lines += ["", f"source: {source_label}", f"backup: {backup_label}"]
        self.output("\n".join(lines))


class ControllerEcho:
    """Echoes the controller's JSON log file through `story` as lines arrive.

    A thread polls the file so that lines show up while the demo waits on kubectl; `drain()`
    prints everything written so far, so a step never ends before the lines that explain it.
    """

    POLL = 0.1

    def __init__(self, log_file: Path, story: Story) -> None:
        self._log_file = log_file
        self._story = story
        self._offset = 0
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="controller-echo", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive():
            self._thread.join()
        self.drain()

    def drain(self) -> None:
        with self._lock:
            try:
                with self._log_file.open("rb") as log:
                    log.seek(self._offset)
                    data = log.read()
            except FileNotFoundError:
                return
            complete = data[: data.rfind(b"\n") + 1]  # a half-written line waits for its end
            self._offset += len(complete)
            for text in complete.decode(errors="replace").splitlines():
                line = _parse(text)
                if _shown(line):
                    self._story.controller(line)

    def _run(self) -> None:
        while not self._stopped.wait(self.POLL):
            self.drain()


def _shown(line: LogLine) -> bool:
    """kopf's own progress lines (start-up activities, login) are not part of the story."""
    routine = line.get("level") in ("debug", "info")
    return not (routine and str(line.get("logger", "")).startswith("kopf"))


def _parse(text: str) -> LogLine:
    if text.startswith("{"):
        try:
            line: LogLine = json.loads(text)
        except ValueError:
            pass
        else:
            return line
    return {"msg": text}  # a traceback or anything else not JSON, shown as it is
