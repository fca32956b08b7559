"""Logins that may live in files, and follow those files when they are rotated.

A registry login can be given inline (`IMAGE_CLONER_PASS`) or as the path of a file
(`IMAGE_CLONER_PASS_FILE`), typically a key of a Secret mounted as a volume. The kubelet
rotates a mounted Secret by writing the new keys into a fresh directory and swapping the
`..data` symlink in one rename, so a path read again sees either the old login or the
new one, never half of each. We poll by content (the files are a few bytes; comparing
what they hold also catches an in-place write, which an (inode, mtime) check of the
resolved path could miss within the filesystem's timestamp resolution).

`WatchedLogin` is a login's current value plus a version that counts changes; whoever
uses the login reads `current` each time it needs it (the copy engine, through
`BackupCredentials`, at every request; the pull Secrets at every reconcile). A file that
becomes unreadable or empty keeps the last good login: a half-finished edit must not
log the controller out. Nothing here knows Kubernetes; errors name the variable and the
path, never what the file holds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.oci.options import Credentials

__all__ = [
    "POLL_INTERVAL",
    "BackupCredentials",
    "CredentialError",
    "LiveLogin",
    "Login",
    "Secret",
    "WatchedLogin",
    "watch_logins",
]

POLL_INTERVAL = 5.0
"""Seconds between re-reads of credential files. The kubelet itself takes up to a minute
(its sync period plus its cache) to show a rotated Secret in the volume."""

logger = logging.getLogger(CONTROLLER_LOGGER)


class CredentialError(ValueError):
    """A credential cannot be read; one line naming the variable, never the value."""


@dataclass(frozen=True, kw_only=True)
class Secret:
    """One half of a login: given inline, or the path of a file that holds it."""

    variable: str
    """The variable it was configured with (`IMAGE_CLONER_PASS_FILE`), for messages."""
    value: str | None = field(default=None, repr=False)
    path: Path | None = None
    password: bool = False
    """Passwords keep inner and leading blanks (only a trailing newline is dropped);
    user names are stripped."""

    def read(self) -> str:
        """The value now: the inline one, or the file's content; raises `CredentialError`."""
        if self.path is None:
            return self.value or ""
        try:
            text = self.path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise CredentialError(f"{self.variable}: {self.path} is not UTF-8 text") from None
        except OSError as error:
            reason = error.strerror or type(error).__name__
            raise CredentialError(f"{self.variable}: cannot read {self.path}: {reason}") from None
        value = text.rstrip("\r\n") if self.password else text.strip()
        if not value:
            raise CredentialError(f"{self.variable}: {self.path} is empty")
        return value


@dataclass(frozen=True, kw_only=True)
class Login:
    """Where a login comes from, and what it was when the settings were read."""

    username: Secret
    password: Secret
    first: Credentials
    """The login as read at start (settings are checked before anything runs)."""

    @classmethod
    def load(cls, *, username: Secret, password: Secret) -> Login:
        """Read both halves now; raises `CredentialError`."""
        return cls(
            username=username,
            password=password,
            first=Credentials(username.read(), password.read()),
        )

    @property
    def from_files(self) -> bool:
        """Whether either half can change while we run."""
        return self.username.path is not None or self.password.path is not None

    def read(self) -> Credentials:
        """Both halves as they are now; raises `CredentialError`."""
        return Credentials(self.username.read(), self.password.read())


class LiveLogin(Protocol):
    """A login read at each use, that may change while we run: `WatchedLogin` (files),
    `credential_plugins.PluginLogin` (a credential provider plugin)."""

    @property
    def what(self) -> str:
        """What it is for, in log lines."""
        ...

    @property
    def current(self) -> Credentials | None:
        """The login now; None while there is none yet."""
        ...

    @property
    def version(self) -> int:
        """Counts the changes seen."""
        ...


class WatchedLogin:
    """A login's current value; `refresh()` re-reads its files and counts changes."""

    def __init__(self, login: Login, *, what: str) -> None:
        self.login = login
        self.what = what
        """What it is for, in log lines: `push login`, `pull login`."""
        self._current = login.first
        self._version = 0
        self._problem: str | None = None

    def __repr__(self) -> str:
        return f"WatchedLogin({self.what}, username={self._current.username!r}, v{self._version})"

    @property
    def current(self) -> Credentials:
        return self._current

    @property
    def version(self) -> int:
        """0 at start, one more at every change seen."""
        return self._version

    def refresh(self) -> bool:
        """Read the files again; True when the login changed. Raises `CredentialError`
        (the current login is kept)."""
        if not self.login.from_files:
            return False
        fresh = self.login.read()
        if fresh == self._current:
            return False
        self._current = fresh
        self._version += 1
        return True

    def poll(self) -> bool:
        """`refresh()`, logging a problem once (not at every poll) instead of raising."""
        try:
            changed = self.refresh()
        except CredentialError as error:
            if str(error) != self._problem:
                self._problem = str(error)
                log_event(
                    logger,
                    logging.WARNING,
                    "cannot re-read credentials, keeping the current ones",
                    login=self.what,
                    error=str(error),
                )
            return False
        if self._problem is not None:
            self._problem = None
            log_event(logger, logging.INFO, "credentials readable again", login=self.what)
        return changed


async def watch_logins(
    logins: Sequence[WatchedLogin],
    *,
    on_change: Callable[[WatchedLogin], Awaitable[None]],
    interval: float = POLL_INTERVAL,
) -> None:
    """Poll the file-backed logins every `interval` seconds, forever; report changes."""
    watched = [login for login in logins if login.login.from_files]
    if not watched:
        return
    while True:
        await asyncio.sleep(interval)
        for login in watched:
            if login.poll():
                log_event(
                    logger,
                    logging.INFO,
                    "credentials changed, using the new ones",
                    login=login.what,
                    username=login.current.username,
                    version=login.version,
                )
                await on_change(login)


class BackupCredentials(Mapping[str, Credentials]):
    """Registry host → login for the copy engine, the backup host's login read live.

    The auth middleware looks a host up at every request, so a rotated backup login is
    used from the next request on; its token cache is keyed by the login too.
    """

    def __init__(self, others: Mapping[str, Credentials], *, host: str, login: LiveLogin):
        self._others = dict(others)
        self._host = host
        self._login = login

    def __getitem__(self, host: str) -> Credentials:
        if host == self._host:
            current = self._login.current
            if current is None:  # a provider that has not answered yet: anonymous
                raise KeyError(host)
            return current
        return self._others[host]

    def __iter__(self) -> Iterator[str]:
        if self._login.current is not None:
            yield self._host
        yield from (host for host in self._others if host != self._host)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __repr__(self) -> str:
        return f"BackupCredentials(hosts={sorted(self)})"
