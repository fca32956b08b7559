"""What backing up each container of a workload means: skip it, keep it, or copy it where.

One place answers it for the controller's passes (`controller.reconcile`), for `plan`
(what a pass would do) and for `status` and the workloads gauge (`protection`): an image
matching `IMAGE_CLONER_EXCLUDE_IMAGES` is left as it is; one already under the backup
location is a backup (nothing to copy); any other image goes to `mapping.target_for`;
an image that is no valid reference cannot be backed up at all. Pure.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from image_cloner.mapping import is_backup, target_for
from image_cloner.oci.references import InvalidReference, Reference, parse_reference
from image_cloner.settings import Settings
from image_cloner.workloads import ContainerImage, images_of

__all__ = ["ImagePlan", "Verdict", "plan_images"]


class Verdict(enum.StrEnum):
    EXCLUDED = "excluded"
    """It matches an `IMAGE_CLONER_EXCLUDE_IMAGES` pattern: never backed up nor rewritten."""
    BACKUP = "backup"
    """It already names an image in the backup location."""
    COPY = "copy"
    """To be copied to `target` (and, where the workload is rewritten, pointed at it)."""
    INVALID = "invalid"
    """Not a valid image reference: the workload cannot be backed up."""


@dataclass(frozen=True)
class ImagePlan:
    """One container's image and its `Verdict`."""

    container: ContainerImage
    verdict: Verdict
    source: Reference | None = None
    """The parsed image (None when INVALID)."""
    target: Reference | None = None
    """Where a COPY goes (its tag's place in the backup; pinned later, `controller.pinning`)."""
    why: str = ""
    """The pattern an EXCLUDED image matches, or why an INVALID one is invalid."""

    @property
    def wanted(self) -> tuple[ContainerImage, Reference, Reference]:
        """(container, source, target) of a COPY, as `controller.pinning` takes them."""
        assert self.source is not None, "only a COPY has a target"
        assert self.target is not None, "only a COPY has a target"
        return self.container, self.source, self.target


def plan_images(obj: Mapping[str, Any], settings: Settings) -> list[ImagePlan]:
    """Every container's (init containers first) `ImagePlan`, as the pod template orders them."""
    return [_plan(container, settings) for container in images_of(obj)]


def _plan(container: ContainerImage, settings: Settings) -> ImagePlan:
    try:
        source = parse_reference(container.image)
        pattern = next((p for p in settings.exclude_images if p.matches(source)), None)
        if pattern is not None:
            return ImagePlan(container, Verdict.EXCLUDED, source, why=str(pattern))
        if is_backup(source, settings.backup):
            return ImagePlan(container, Verdict.BACKUP, source)
        return ImagePlan(container, Verdict.COPY, source, target_for(source, settings.backup))
    except InvalidReference as e:
        return ImagePlan(container, Verdict.INVALID, why=str(e))
