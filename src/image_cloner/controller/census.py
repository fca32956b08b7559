"""The workloads gauge's counts, kept current from what the controller already sees.

Every watch event (and resync listing) classifies the workload it carries with
`protection.classify`; a DELETED event forgets it. No API call is made for it: the two
inputs that are not in the object come from the reconciler's passes, which have them
anyway: whether the last pass failed (and why), and the namespace's annotations (read by
`controller.gate`, cached). As the namespace's opt-out is the one namespace annotation the
rules read, each workload is classified for both cases at its event, and the namespace's
last known opt-out picks one at scrape time; a namespace never reconciled counts as not
opted out, as the controller itself cannot know better before reading it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from image_cloner.policy import SKIP_ANNOTATION, opted_out
from image_cloner.protection import Protection, State, classify, with_failure
from image_cloner.settings import Settings
from image_cloner.workloads import WorkloadKey

__all__ = ["WorkloadCensus"]

_OPTED_OUT = {SKIP_ANNOTATION: "true"}


class WorkloadCensus:
    """Each tracked workload's `protection.State`; `counts()` for the gauge."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._states: dict[WorkloadKey, tuple[Protection, Protection]] = {}
        """(namespace not opted out, namespace opted out)."""
        self._failures: dict[WorkloadKey, str] = {}
        self._namespaces_out: dict[str, bool] = {}

    def seen(self, key: WorkloadKey, obj: Mapping[str, Any]) -> None:
        """A watch event or listing delivered `obj` (of `key`) as it is now."""
        kept_in = classify(obj, settings=self._settings, namespace_annotations={})
        kept_out = classify(obj, settings=self._settings, namespace_annotations=_OPTED_OUT)
        if kept_in is None or kept_out is None:
            self.forget(key)  # its owner counts for it
        else:
            self._states[key] = (kept_in, kept_out)

    def reconciled(
        self, key: WorkloadKey, *, namespace: Mapping[str, str] | None, failure: str | None
    ) -> None:
        """A pass ended: the namespace's annotations it read (None: unknown), and its
        failure (None: it did not fail)."""
        if namespace is not None:
            self._namespaces_out[key.namespace] = opted_out(namespace)
        if failure is None:
            self._failures.pop(key, None)
        else:
            self._failures[key] = failure

    def forget(self, key: WorkloadKey) -> None:
        self._states.pop(key, None)
        self._failures.pop(key, None)

    def state(self, key: WorkloadKey) -> Protection | None:
        """What `status` would say of the workload, as far as the controller knows."""
        found = self._states.get(key)
        if found is None:
            return None
        base = found[1] if self._namespaces_out.get(key.namespace, False) else found[0]
        return with_failure(base, self._failures.get(key))

    def counts(self) -> Mapping[tuple[str, State], int]:
        """(kind, state) → workloads, for the gauge (only the pairs that occur)."""
        found: Counter[tuple[str, State]] = Counter()
        for key in self._states:
            protection = self.state(key)
            if protection is not None:
                found[(key.kind, protection.state)] += 1
        return found
