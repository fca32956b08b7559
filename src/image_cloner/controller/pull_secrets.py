"""The pull Secrets: which login goes into them, and keeping every one we use current.

A rewritten workload pulls from the backup registry with a docker-registry Secret we keep
in its namespace. Anyone who can read Secrets there can read that login, so it should be
one that may only pull (`IMAGE_CLONER_PULL_USER`/`_PASS`): with the push login in it,
they could overwrite the images every protected workload runs. Without a pull login the
push login is handed out, as the seed did, but never quietly: a WARNING at start and the
`image_cloner_pull_secret_uses_push_credentials` gauge say so.

Keeping them current is level-triggered, like the rest: "a namespace where a workload
references the pull Secret holds the current login". The controller may not list Secrets
(least privilege), so it re-ensures the Secret when it reconciles a workload that uses
it. Confirmations are remembered per (namespace, login version) for `CONFIRMED_FOR`
seconds, so a quiet cluster does not read a Secret at every reconcile; a rotated login
is a new version, and `namespaces` tells the caller which workloads to look at again.
Before a rewrite the Secret is asked for again unless it was confirmed less than
`ENSURED_FOR` seconds ago, and the rewrites of one namespace share that one check: a
thousand rewrites in ten namespaces read ten Secrets, not a thousand (bench/scale_bench.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from image_cloner.controller.kube import KubeCalls
from image_cloner.credentials import LiveLogin, WatchedLogin
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.metrics import Metrics
from image_cloner.settings import PULL_PASS, PULL_USER, Settings
from image_cloner.singleflight import SingleFlight
from image_cloner.workloads import kind_of

__all__ = [
    "CONFIRMED_FOR",
    "ENSURED_FOR",
    "PUSH_LOGIN_WARNING",
    "PullSecrets",
    "watched_logins",
]

CONFIRMED_FOR = 600.0
"""Seconds a namespace's Secret counts as current without reading it again: bounds how
long a Secret deleted by hand, or a namespace deleted and made again, goes unrepaired."""

ENSURED_FOR = 10.0
"""Seconds a Secret found or written before a rewrite also answers for the next rewrites in
its namespace (a Secret deleted in that window makes pulls fail, and the rollout follower
undoes that rewrite)."""

PUSH_LOGIN_WARNING = "pull secrets get the push credentials"

logger = logging.getLogger(CONTROLLER_LOGGER)

_MESSAGES = {
    "created": "pull secret created",
    "updated": "pull secret updated",
    "not-managed": "pull secret exists and is not managed by image-cloner: used as it is",
}


def watched_logins(settings: Settings) -> tuple[WatchedLogin | None, WatchedLogin | None]:
    """(push login, pull login) as configured, each followed if it comes from files."""
    push = settings.push_login
    pull = settings.pull_login
    return (
        WatchedLogin(push, what="push login") if push is not None else None,
        WatchedLogin(pull, what="pull login") if pull is not None else None,
    )


class PullSecrets:
    """Writes the pull Secret into a namespace, with the current login, when needed."""

    def __init__(
        self,
        *,
        kube: KubeCalls,
        name: str | None,
        registry_host: str,
        login: WatchedLogin | None,
        uses_push_login: bool,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._kube = kube
        self._name = name if login is not None else None
        self._host = registry_host
        self._login = login
        self._uses_push_login = uses_push_login
        self._clock = clock
        self._confirmed: dict[str, tuple[int, float]] = {}
        """Namespace → (login version, when) its Secret was last written or found current."""
        self._checks: SingleFlight[None] = SingleFlight()

    @classmethod
    def for_settings(
        cls,
        kube: KubeCalls,
        settings: Settings,
        *,
        push: WatchedLogin | None,
        pull: WatchedLogin | None,
    ) -> PullSecrets:
        """The pull login when one is set, else the push login (see the module docstring)."""
        return cls(
            kube=kube,
            name=settings.pull_secret_name,
            registry_host=settings.backup.registry.host,
            login=pull or push,
            uses_push_login=settings.pull_secret_uses_push_login,
        )

    @property
    def name(self) -> str | None:
        """The Secret's name; None when pull Secrets are not managed."""
        return self._name

    @property
    def namespaces(self) -> frozenset[str]:
        """Namespaces whose Secret we wrote or confirmed: where a rotation must reach."""
        return frozenset(self._confirmed)

    def follows(self, login: LiveLogin) -> bool:
        """Whether a change of `login` changes what the pull Secrets should hold."""
        return self._name is not None and login is self._login

    def report_login(self, metrics: Metrics) -> None:
        """At start: say (WARNING and gauge) when the push login is being handed out."""
        metrics.pull_secret_uses_push_login(self._uses_push_login)
        if self._uses_push_login:
            log_event(
                logger,
                logging.WARNING,
                PUSH_LOGIN_WARNING,
                pull_secret=self._name,
                risk="anyone who can read Secrets in a rewritten namespace can overwrite"
                " the backed-up images",
                fix=f"set a pull-only login: {PULL_USER}/{PULL_PASS} (or their _FILE forms)",
            )

    async def ensure(self, namespace: str) -> str | None:
        """Write or check the namespace's Secret now; its name, or None when not managed.

        Raises `KubeApiError`. Used before a rewrite, which must never point a workload
        at a Secret that is not there: it asks the apiserver unless the Secret was
        confirmed with this login less than `ENSURED_FOR` seconds ago.
        """
        if self._name is None or self._login is None:
            return None
        if not self._confirmed_within(namespace, ENSURED_FOR):
            version = self._login.version
            await self._checks.run((namespace, version), lambda: self._write(namespace))
        return self._name

    async def _write(self, namespace: str) -> None:
        assert self._name is not None
        assert self._login is not None
        version, credentials = self._login.version, self._login.current
        outcome = await self._kube.ensure_pull_secret(
            namespace, self._name, registry_host=self._host, credentials=credentials
        )
        self._confirmed[namespace] = (version, self._clock())
        message = _MESSAGES.get(outcome)
        if message is not None:
            log_event(logger, logging.INFO, message, pull_secret=self._name, namespace=namespace)

    def _confirmed_within(self, namespace: str, seconds: float) -> bool:
        confirmed = self._confirmed.get(namespace)
        if confirmed is None or self._login is None:
            return False
        version, when = confirmed
        return version == self._login.version and self._clock() - when < seconds

    async def keep_current(self, namespace: str, obj: Mapping[str, Any]) -> None:
        """For a workload already pointing at the backup: if it uses our Secret, make sure
        the namespace's copy holds the current login (cached; raises `KubeApiError`)."""
        if self._name is None or self._login is None or not self._used_by(obj):
            return
        if not self._confirmed_within(namespace, CONFIRMED_FOR):
            await self._checks.run((namespace, self._login.version), lambda: self._write(namespace))

    def _used_by(self, obj: Mapping[str, Any]) -> bool:
        spec = kind_of(obj).pod_spec(obj)
        entries = spec.get("imagePullSecrets") if isinstance(spec, Mapping) else None
        return any(
            isinstance(entry, Mapping) and entry.get("name") == self._name
            for entry in entries or ()
        )
