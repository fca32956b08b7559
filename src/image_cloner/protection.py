"""Is a workload protected? One answer for `image-cloner status` and the workloads gauge.

An SRE alerts on `image_cloner_workloads{state=~"unprotected|failing"}` (the chart's
`ImageClonerWorkloadsUnprotected`), so the states are defined
by what someone should do about them, in this order (the first that applies wins):

- not counted: an object whose owner is one of our kinds (a Deployment's ReplicaSets and
  their Pods, a CronJob's Jobs): the owner speaks for it, as in the controller's watch;
- `excluded`: left as it is on purpose, by configuration or by a person: an ignored
  namespace, an opt-out (`image-cloner.io/skip`), being deleted, every image matching
  `IMAGE_CLONER_EXCLUDE_IMAGES`, a copy-only workload (owned by another controller, or
  someone reverted our rewrite), a kind whose template never changes (Job, bare Pod),
  admission mode (workloads are never rewritten; their Pods are, at admission);
- `protected`: every container and init container names an image under the backup
  location (`IMAGE_CLONER_REGISTRY`) or an excluded one: its pods pull from the backup;
- `failing`: not protected, and the controller's last pass over it failed (a Warning
  Event `CloneFailed` or `RewriteRefused` is its last Event of ours), or its rewrite was
  rolled back (`image-cloner.io/rewrite-rolled-back`): it needs a person;
- `unprotected`: everything else: runs an original image and nothing above excuses it
  (not ready yet, queued, an invalid reference not yet tried). A workload stuck here for
  long is what the alert is for.

Pure: the object, the namespace's annotations and the failure (if any) in, a state out.
The controller's failures come from its own passes (`controller.census`); `status` reads
them from the Events, so both count the same workloads the same way.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from image_cloner import policy
from image_cloner.backups import Verdict, plan_images
from image_cloner.settings import Settings
from image_cloner.workloads import is_ready, kind_of

__all__ = ["Protection", "State", "classify", "with_failure"]


class State(enum.StrEnum):
    PROTECTED = "protected"
    UNPROTECTED = "unprotected"
    FAILING = "failing"
    EXCLUDED = "excluded"


@dataclass(frozen=True)
class Protection:
    state: State
    reason: str
    """Why, in words for a `status` row (never in a metric label)."""


def classify(
    obj: Mapping[str, Any],
    *,
    settings: Settings,
    namespace_annotations: Mapping[str, str] | None,
    failure: str | None = None,
) -> Protection | None:
    """The workload's state by the rules of the module docstring; None: not counted.

    `failure`: why the controller's last pass over it failed, None when it did not.
    """
    base = _base(obj, settings, namespace_annotations)
    return None if base is None else with_failure(base, failure)


def with_failure(base: Protection, failure: str | None) -> Protection:
    """`base` (classified without a failure) once the controller's last pass failed."""
    if failure is None or base.state is not State.UNPROTECTED:
        return base
    return Protection(State.FAILING, failure)


def _base(
    obj: Mapping[str, Any], settings: Settings, namespace_annotations: Mapping[str, str] | None
) -> Protection | None:
    kind = kind_of(obj)
    if kind.owned_by(obj) is not None:
        return None
    meta = obj.get("metadata") or {}
    if meta.get("namespace") in settings.ignored_namespaces:
        return Protection(State.EXCLUDED, "ignored namespace (IMAGE_CLONER_IGNORE_NAMESPACES)")
    decision = policy.decide(
        obj, namespace_annotations=namespace_annotations, rewrite_owned=settings.rewrite_owned
    )
    if decision.action is policy.Action.SKIP:
        return Protection(State.EXCLUDED, decision.reason)
    images = plan_images(obj, settings)
    verdicts = {image.verdict for image in images}
    if verdicts <= {Verdict.EXCLUDED}:
        return Protection(State.EXCLUDED, "every image matches IMAGE_CLONER_EXCLUDE_IMAGES")
    if verdicts <= {Verdict.EXCLUDED, Verdict.BACKUP}:
        return Protection(State.PROTECTED, "every image is a backup")
    annotations = meta.get("annotations") or {}
    if policy.ROLLED_BACK_ANNOTATION in annotations:
        return Protection(State.FAILING, decision.reason)
    if decision.action is policy.Action.COPY_ONLY:
        return Protection(State.EXCLUDED, f"backed up, not rewritten: {decision.reason}")
    if not kind.rewritable:
        return Protection(State.EXCLUDED, f"a {kind.kind} is backed up, never rewritten")
    if not settings.rewrites_workloads:
        return Protection(State.EXCLUDED, "admission mode: Pods are rewritten, not workloads")
    invalid = [i for i in images if i.verdict is Verdict.INVALID]
    if invalid:
        first = invalid[0]
        return Protection(State.UNPROTECTED, f"container {first.container.name}: {first.why}")
    readiness = is_ready(obj)
    if not readiness.ready:
        return Protection(State.UNPROTECTED, f"not ready: {readiness.reason}")
    waiting = sum(1 for i in images if i.verdict is Verdict.COPY)
    return Protection(State.UNPROTECTED, f"{waiting} image(s) not backed up yet")
