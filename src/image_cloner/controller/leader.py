"""Leader election on a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection` does it.

Several replicas watch; one works. The rules are client-go's `tryAcquireOrRenew`:

- a candidate reads the Lease; if there is none, it creates it holding it;
- a Lease held by someone else is taken over only once its record has not changed for its
  `leaseDurationSeconds`, counted on *our* monotonic clock from the moment we first saw that
  record: never by comparing the holder's `renewTime` with our clock (nodes' clocks differ);
- a free Lease (empty holder: released), an expired one or our own is written with a PUT
  carrying the `resourceVersion` just read, so of two candidates only one can win;
- the leader renews every retry period. Each attempt is cut off at the renew deadline,
  counted from the *start* of the last successful renewal, and when it passes the leader
  stops working at once. A follower counts the lease duration from a record it saw no
  earlier than that renewal, so the old leader has stopped `lease - renew` seconds before
  anyone can take over: there are never two writers;
- on a graceful shutdown the leader, after its work has stopped, writes an empty holder and
  `leaseDurationSeconds: 1` (client-go's `ReleaseOnCancel`), so a follower takes over on
  its next retry instead of waiting out the lease.

kubernetes_asyncio ships a `leaderelection` package; docs/decisions.md says why this module
exists instead (no release, a wall-clock renew deadline that does not bound a hung request,
no second term after losing the Lease, local time written as UTC).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Coroutine, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from image_cloner.controller.kube import JsonObject
from image_cloner.controller.kube_errors import AlreadyExists, Conflict, KubeApiError
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.settings import JITTER_FACTOR, LeaderElection

__all__ = ["LeaderElector", "LeaseCalls", "default_identity"]

logger = logging.getLogger(CONTROLLER_LOGGER)


class LeaseCalls(Protocol):
    """The Lease calls of `kube.Kube` (a fake in unit tests)."""

    async def read_lease(self, namespace: str, name: str) -> JsonObject | None: ...

    async def create_lease(self, namespace: str, lease: Mapping[str, Any]) -> JsonObject: ...

    async def replace_lease(
        self, namespace: str, name: str, lease: Mapping[str, Any]
    ) -> JsonObject: ...


def default_identity() -> str:
    """The pod's name (HOSTNAME) plus a random suffix: a restarted pod is a new candidate."""
    host = os.environ.get("HOSTNAME") or socket.gethostname()
    return f"{host}_{uuid.uuid4().hex[:8]}"


class LeaderElector:
    """Campaigns for the Lease; runs the work only while holding it."""

    def __init__(
        self,
        kube: LeaseCalls,
        config: LeaderElection,
        *,
        identity: str,
        on_change: Callable[[bool], None] = lambda leading: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.identity = identity
        self._kube = kube
        self._config = config
        self._on_change = on_change
        self._clock = clock
        self._observed: Mapping[str, Any] | None = None  # the Lease's spec as last seen
        self._observed_at = 0.0
        self._held: JsonObject | None = None  # the Lease as we last wrote it
        self._renewed_at = 0.0  # start of the last successful acquire or renew
        self._failing = False
        self.leading = False

    @property
    def holder(self) -> str:
        """The holder in the Lease as last seen ("" when free or not read yet)."""
        return str((self._observed or {}).get("holderIdentity") or "")

    async def run(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Forever: acquire the Lease, run `work()` while renewing, cancel it when in doubt."""
        while True:
            await self._acquire()
            await self._lead(work)

    async def release(self) -> None:
        """Give up the Lease if we hold it; call after the work has stopped."""
        held, self._held = self._held, None
        if held is None:
            return
        spec = {**held.get("spec", {}), "holderIdentity": "", "leaseDurationSeconds": 1}
        spec["acquireTime"] = spec["renewTime"] = _now()
        try:
            async with asyncio.timeout(self._config.renew_deadline):
                await self._kube.replace_lease(
                    self._config.namespace, self._config.lease_name, {**held, "spec": spec}
                )
        except (KubeApiError, TimeoutError) as e:  # taken meanwhile, or unreachable: it expires
            log_event(logger, logging.WARNING, "could not release the lease", error=str(e))
            return
        log_event(logger, logging.INFO, "released the lease", lease=self._config.lease_name)

    async def _acquire(self) -> None:
        config = self._config
        while True:
            if await self._attempt(within=config.renew_deadline):
                return
            # client-go's wait.JitterUntil: candidates do not knock in step.
            await asyncio.sleep(config.retry_period * (1 + random.random() * JITTER_FACTOR))

    async def _lead(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._set_leading(True)
        log_event(
            logger,
            logging.INFO,
            "started leading",
            lease=self._config.lease_name,
            identity=self.identity,
        )
        task = asyncio.create_task(work(), name="leading")
        try:
            reason = await self._renew_until_lost()
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            self._set_leading(False)
        self._held = None
        log_event(logger, logging.WARNING, "stopped leading", reason=reason, holder=self.holder)

    async def _renew_until_lost(self) -> str:
        """Renew every retry period; returns why leadership ended."""
        config = self._config
        while True:
            await asyncio.sleep(config.retry_period)
            while (left := self._renewed_at + config.renew_deadline - self._clock()) > 0:
                if await self._attempt(within=left):
                    break
                if self.holder not in ("", self.identity):
                    return "the lease was taken over"
                left = self._renewed_at + config.renew_deadline - self._clock()
                await asyncio.sleep(min(config.retry_period, max(0.0, left)))
            else:
                return f"not renewed within the renew deadline ({config.renew_deadline:g}s)"

    async def _attempt(self, *, within: float) -> bool:
        """One try to acquire or renew (client-go's tryAcquireOrRenew); True when we hold it."""
        started = self._clock()
        try:
            async with asyncio.timeout(within):
                written = await self._try()
        except (KubeApiError, TimeoutError) as e:
            level = logging.DEBUG if self._failing else logging.WARNING
            self._failing = True
            error = str(e) or "no answer in time"
            log_event(logger, level, "cannot read or write the lease", error=error)
            return False
        self._failing = False
        if written is None:
            return False
        self._held = written
        self._renewed_at = started
        self._observe(written.get("spec") or {})
        return True

    async def _try(self) -> JsonObject | None:
        namespace, name = self._config.namespace, self._config.lease_name
        current = await self._kube.read_lease(namespace, name)
        if current is None:
            lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease"}
            body = {**lease, "metadata": {"name": name}, "spec": self._spec({})}
            try:
                return await self._kube.create_lease(namespace, body)
            except AlreadyExists:
                return None
        spec = current.get("spec") or {}
        self._observe(spec)
        if self.holder not in ("", self.identity) and not self._expired(spec):
            return None
        try:
            return await self._kube.replace_lease(
                namespace, name, {**current, "spec": self._spec(spec)}
            )
        except Conflict:  # another candidate wrote first
            return None

    def _spec(self, old: Mapping[str, Any]) -> dict[str, Any]:
        now = _now()
        ours = old.get("holderIdentity") == self.identity
        transitions = int(old.get("leaseTransitions") or 0)
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": int(self._config.lease_duration),
            "acquireTime": old.get("acquireTime", now) if ours else now,
            "renewTime": now,
            "leaseTransitions": transitions if ours or not old else transitions + 1,
        }

    def _observe(self, spec: Mapping[str, Any]) -> None:
        if spec == self._observed:
            return
        before = self.holder
        self._observed = dict(spec)
        self._observed_at = self._clock()
        if self.holder != before and self.holder not in ("", self.identity):
            log_event(logger, logging.INFO, "leader is", holder=self.holder)

    def _expired(self, spec: Mapping[str, Any]) -> bool:
        duration = float(spec.get("leaseDurationSeconds") or self._config.lease_duration)
        return self._clock() >= self._observed_at + duration

    def _set_leading(self, leading: bool) -> None:
        self.leading = leading
        self._on_change(leading)


def _now() -> str:
    """A `MicroTime` as the apiserver writes it."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
