"""The process exit statuses of every `image-cloner` command, defined once, and how a
command that fails says why (`fail`: one line on stderr).

Scripts and the Kubernetes restart policy read them: 2 means "fix your input or
configuration, retrying will not help", 1 "it ran and failed", 130 "interrupted".
"""

from __future__ import annotations

import sys
from typing import TextIO

__all__ = ["EXIT_BAD_INPUT", "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_OK", "fail"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
"""A bad argument, setting or kubeconfig: nothing was attempted."""
EXIT_INTERRUPTED = 130
"""Stopped by Ctrl-C (128 + SIGINT), as shells report it."""


def fail(message: str, stream: TextIO | None = None) -> None:
    """Say why a command failed: one line on stderr (what scripts and logs read)."""
    print(message.replace("\n", " "), file=stream or sys.stderr, flush=True)
