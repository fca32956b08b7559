"""A rewrite that does not roll out is undone: follow the rollout, restore on failure.

`rollout.failure` is the rule; this module feeds it (the workload's pods, by its selector,
and when we rewrote it, from `managedFields`) and acts on it:

- a workload we rewrote whose rollout is not complete is followed: the reconciler comes
  back every `RECHECK` seconds (the watch also enqueues such workloads while not ready)
  until the rollout completes, fails or times out;
- on failure, one JSON patch guarded like the rewrite (`resourceVersion` and a `test` of
  each backup image being replaced) puts the recorded originals back, removes our
  `original-images` record and our pull Secret's reference from the template, and sets
  `policy.ROLLED_BACK_ANNOTATION` to the reason. The template is then again exactly what
  the user wrote, so a Deployment scales its old ReplicaSet back up instead of starting a
  new one; with the record gone the gate does not take our own restore for someone
  else's revert, and the marker keeps the workload copy-only until a person removes it;
- a Warning Event `RewriteRolledBack` says why (the image and its pull error, or the
  deadline). If the object changed meanwhile, the reconciler reads it again and decides
  again: nothing anyone wrote is overwritten.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from datetime import UTC, datetime

from image_cloner import rollout
from image_cloner.controller.kube import FIELD_MANAGER, JsonObject, KubeCalls
from image_cloner.controller.kube_errors import KubeApiError, NotFound, changed_meanwhile
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.policy import ROLLED_BACK_ANNOTATION
from image_cloner.settings import Settings
from image_cloner.workloads import (
    KINDS,
    InvalidSelector,
    PatchError,
    WorkloadKey,
    build_marker_patch,
    build_revert_patch,
    label_selector,
    original_images,
)

__all__ = ["RECHECK", "REWRITE_ROLLED_BACK", "Followed", "Rollback"]

REWRITE_ROLLED_BACK = "RewriteRolledBack"

RECHECK = 10.0
"""Seconds between looks at a rollout we follow."""

logger = logging.getLogger(CONTROLLER_LOGGER)


class Followed(enum.Enum):
    NOT_OURS = "not ours"
    """Not a rollout onto our backups: nothing to follow."""
    WAITING = "waiting"
    """Our rollout is under way (or its undo was refused, reported): look again in
    `RECHECK` seconds."""
    ROLLED_BACK = "rolled back"
    """It failed and the originals are back."""
    CHANGED = "changed"
    """The object changed under our patch: read it again and decide again."""


class Rollback:
    """Follows rollouts onto our backups and undoes those that fail."""

    def __init__(
        self,
        *,
        kube: KubeCalls,
        settings: Settings,
        pull_secret: str | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._kube = kube
        self._settings = settings
        self._pull_secret = pull_secret
        self._clock = clock

    async def follow(self, key: WorkloadKey, obj: JsonObject) -> Followed:
        """One look at a not-ready workload's rollout."""
        backups = rollout.following(obj, self._settings.backup)
        if not backups:
            return Followed.NOT_OURS
        rewritten, now = rollout.rewritten_at(obj, manager=FIELD_MANAGER), self._clock()
        matter = rollout.pods_matter(obj, rewritten=rewritten, now=now)
        reason = rollout.failure(
            obj,
            await self._pods(key, obj) if matter else [],
            backups=backups,
            rewritten=rewritten,
            now=now,
            timeout=self._settings.rollout_timeout,
        )
        if reason is None:
            return Followed.WAITING
        return await self._roll_back(key, obj, backups, reason)

    async def _pods(self, key: WorkloadKey, obj: JsonObject) -> list[JsonObject]:
        try:
            return await self._kube.list_pods(key.namespace, label_selector(obj))
        except (InvalidSelector, KubeApiError) as e:
            # Without pods only the deadline and the timeout can tell; they still apply.
            log_event(logger, logging.WARNING, "cannot list pods", workload=str(key), error=str(e))
            return []

    async def _roll_back(
        self, key: WorkloadKey, obj: JsonObject, backups: dict[str, str], reason: str
    ) -> Followed:
        originals = original_images(obj)
        restores = {name: originals[name] for name in backups}
        stamp = self._clock().strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            patch = [
                *build_revert_patch(obj, restores, pull_secret=self._pull_secret),
                # Its guard is already the first op above; only the marker op is added.
                *build_marker_patch(obj, ROLLED_BACK_ANNOTATION, f"{reason} at {stamp}")[1:],
            ]
            patched = await self._kube.patch_workload(
                KINDS[key.kind], key.namespace, key.name, patch
            )
        except NotFound:
            return Followed.ROLLED_BACK  # deleted: nothing left to restore
        except KubeApiError as e:
            if changed_meanwhile(e):
                return Followed.CHANGED
            return await self._refused(key, obj, str(e))
        except PatchError as e:
            return await self._refused(key, obj, str(e))
        log_event(
            logger,
            logging.WARNING,
            "rollout failed, rewrite rolled back",
            workload=str(key),
            reason=reason,
        )
        restored = ", ".join(f"{name}: {image}" for name, image in sorted(restores.items()))
        message = (
            f"rollout onto the backup images failed ({reason}): restored {restored};"
            f" remove annotation {ROLLED_BACK_ANNOTATION} to allow rewrites"
        )
        self._post_event(patched, message)
        return Followed.ROLLED_BACK

    async def _refused(self, key: WorkloadKey, obj: JsonObject, error: str) -> Followed:
        log_event(
            logger, logging.WARNING, "cannot roll back the rewrite", workload=str(key), error=error
        )
        self._post_event(obj, f"rollout failed, but the rewrite cannot be undone: {error}")
        return Followed.WAITING

    def _post_event(self, obj: JsonObject, message: str) -> None:
        self._kube.record_event(obj, reason=REWRITE_ROLLED_BACK, message=message, warning=True)
