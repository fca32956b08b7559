"""What a reconcile pass does with a workload, decided once for `run` and for `plan`.

`controller.reconcile` acts on this decision; `image-cloner plan` prints it (with what
the copies would be, `controller.plan`). The order is the reconciler's: the gate's
decision (`policy`, through `controller.gate`), then readiness, then each container's
image (`backups`), then how far the workload may be changed. Pure.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from image_cloner.backups import ImagePlan, Verdict, plan_images
from image_cloner.controller.kube import JsonObject
from image_cloner.policy import Action, Decision
from image_cloner.readiness import Readiness
from image_cloner.settings import Settings
from image_cloner.workloads import is_ready, kind_of

__all__ = ["Limit", "Step", "WorkloadStep", "next_step"]


class Step(enum.StrEnum):
    """What the pass does; the words are `plan`'s outcomes."""

    SKIP = "skip"
    """Nothing: an ignored namespace, an opt-out, being deleted."""
    WAIT = "wait"
    """Nothing until the rollout completes (the watch brings the workload back)."""
    FAIL = "fail"
    """An image cannot be backed up (an invalid reference): a Warning Event, retried."""
    NOTHING = "nothing"
    """Every image is a backup or excluded (only the pull Secret is kept current)."""
    BACK_UP = "back-up"
    """Copy the images, leave the workload as it is (`Limit` says why)."""
    REWRITE = "rewrite"
    """Copy the images, then point the workload at them."""


class Limit(enum.StrEnum):
    """Why a BACK_UP does not rewrite."""

    IMMUTABLE = "immutable"
    """The kind's pod template cannot change (Job, bare Pod)."""
    ADMISSION = "admission"
    """Admission mode: Pods get the backups, workloads are never rewritten."""
    POLICY = "policy"
    """`policy` said copy-only (owned by a controller, a reverted or rolled-back rewrite)."""


@dataclass(frozen=True)
class WorkloadStep:
    step: Step
    reason: str = ""
    images: tuple[ImagePlan, ...] = ()
    limit: Limit | None = None
    readiness: Readiness | None = None

    @property
    def copies(self) -> list[ImagePlan]:
        """The images to copy (each has a `target`)."""
        return [image for image in self.images if image.verdict is Verdict.COPY]


def next_step(obj: JsonObject, *, decision: Decision, settings: Settings) -> WorkloadStep:
    """What a pass does with `obj` now that the gate decided `decision`."""
    if obj["metadata"].get("namespace") in settings.ignored_namespaces:
        return WorkloadStep(Step.SKIP, "ignored namespace (IMAGE_CLONER_IGNORE_NAMESPACES)")
    if decision.action is Action.SKIP:
        return WorkloadStep(Step.SKIP, decision.reason)
    readiness = is_ready(obj)
    if not readiness.ready:
        return WorkloadStep(Step.WAIT, readiness.reason, readiness=readiness)
    images = tuple(plan_images(obj, settings))
    invalid = [i for i in images if i.verdict is Verdict.INVALID]
    if invalid:
        why = "; ".join(f"container {i.container.name}: {i.why}" for i in invalid)
        return WorkloadStep(Step.FAIL, why, images)
    if not any(i.verdict is Verdict.COPY for i in images):
        return WorkloadStep(Step.NOTHING, "every image is a backup or excluded", images)
    kind = kind_of(obj)
    if not kind.rewritable:
        why = f"a {kind.kind} is backed up, never rewritten"
        return WorkloadStep(Step.BACK_UP, why, images, Limit.IMMUTABLE)
    if not settings.rewrites_workloads:
        why = "admission mode: workloads are never rewritten"
        return WorkloadStep(Step.BACK_UP, why, images, Limit.ADMISSION)
    if decision.action is Action.COPY_ONLY:
        return WorkloadStep(Step.BACK_UP, decision.reason, images, Limit.POLICY)
    return WorkloadStep(Step.REWRITE, "", images)
