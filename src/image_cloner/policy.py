"""Whose workload is it? The rules that keep image-cloner from fighting a workload's owner.

A copy tool that rewrites workloads lives next to people, GitOps tools (Argo CD, Flux) and
operators that all think they own the same objects. These rules decide, from the object as
it is now, what we may do with it, in this order (the first that applies wins):

1. being deleted                                          → leave it alone
2. `image-cloner.io/skip` on the workload: "true"         → leave it alone
                                           "false"        → opted in (overrides 3)
3. `image-cloner.io/skip` on its namespace: "true"        → leave it alone
4. `image-cloner.io/rewrite-rolled-back` on the workload  → back up, do not rewrite
5. `image-cloner.io/rewrite-reverted` on the workload     → back up, do not rewrite
6. a controller owns it (`ownerReferences[].controller`)  → back up, do not rewrite,
                                                            unless rewriting owned objects is on
7. otherwise                                              → back up and rewrite

An annotation value that is neither "true" nor "false" is a mistake to report, never a
reason to touch the object: it counts as "true" (leave alone), with a warning. Images
matching `IMAGE_CLONER_EXCLUDE_IMAGES` are neither backed up nor rewritten (`ImagePattern`).

A rewrite someone undid (the images are back to the originals our annotation recorded) is
not redone: `reverted` finds it, the controller marks the workload with
`REVERTED_ANNOTATION` and leaves the images alone until a person removes the marker.
Pure: plain objects in, decisions out.
"""

from __future__ import annotations

import enum
import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from image_cloner.oci.references import InvalidReference, Reference, parse_reference

__all__ = [
    "REVERTED_ANNOTATION",
    "ROLLED_BACK_ANNOTATION",
    "SKIP_ANNOTATION",
    "Action",
    "Decision",
    "ImagePattern",
    "decide",
    "images_manager",
    "opted_out",
    "parse_image_patterns",
    "reverted",
]

SKIP_ANNOTATION = "image-cloner.io/skip"
"""On a workload or a namespace: "true" keeps image-cloner away from it."""

REVERTED_ANNOTATION = "image-cloner.io/rewrite-reverted"
"""Set by us when someone else restored the original images: we do not rewrite again."""

ROLLED_BACK_ANNOTATION = "image-cloner.io/rewrite-rolled-back"
"""Set by us when the rollout after our rewrite failed and we restored the originals."""

Obj = Mapping[str, Any]

_TRUE, _FALSE = "true", "false"
# Stand-ins for glob characters, so a pattern is read by the one reference parser there is.
_GLOBS = {"*": "zzstarzz", "?": "zzqmarkzz"}


class Action(enum.StrEnum):
    SKIP = "skip"
    """Neither back up nor rewrite."""
    COPY_ONLY = "copy-only"
    """Back up the images, leave the workload as it is."""
    REWRITE = "rewrite"
    """Back up the images, then point the workload at the backups."""


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str = ""
    """Why it is not REWRITE, in words for an Event or a `plan` row."""
    warning: str | None = None
    """A mistake in an annotation the user should hear about (the decision stays safe)."""


def decide(
    obj: Obj, *, namespace_annotations: Mapping[str, str] | None, rewrite_owned: bool
) -> Decision:
    """What we may do with `obj`, by the rules of the module docstring."""
    meta: Obj = obj.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return Decision(Action.SKIP, "being deleted")
    annotations: Obj = meta.get("annotations") or {}
    opted, warning = _skip_value(annotations, "the workload")
    if opted is None:
        opted, warning = _skip_value(namespace_annotations or {}, "its namespace")
        where = "its namespace"
    else:
        where = "the workload"
    if opted:
        return Decision(Action.SKIP, f"opted out: {SKIP_ANNOTATION} on {where}", warning)
    for marker in (ROLLED_BACK_ANNOTATION, REVERTED_ANNOTATION):
        if marker in annotations:
            reason = f"{marker}: {annotations[marker]}; remove the annotation to allow rewrites"
            return Decision(Action.COPY_ONLY, reason, warning)
    owner = _controller_owner(meta)
    if owner is not None and not rewrite_owned:
        return Decision(Action.COPY_ONLY, f"managed by {owner}", warning)
    return Decision(Action.REWRITE, warning=warning)


def opted_out(annotations: Mapping[str, str]) -> bool:
    """Whether these annotations (a namespace's) opt out by `SKIP_ANNOTATION` (rule 3)."""
    return _skip_value(annotations, "")[0] is True


def _skip_value(annotations: Obj, where: str) -> tuple[bool | None, str | None]:
    value = annotations.get(SKIP_ANNOTATION)
    if value is None:
        return None, None
    text = str(value).strip().lower()
    if text in (_TRUE, _FALSE):
        return text == _TRUE, None
    return True, (
        f"{SKIP_ANNOTATION} on {where} is {str(value)[:40]!r}, not true or false: treated as true"
    )


def _controller_owner(meta: Obj) -> str | None:
    for owner in meta.get("ownerReferences") or []:
        if isinstance(owner, Mapping) and owner.get("controller") is True:
            return f"{owner.get('kind')}/{owner.get('name')}"
    return None


def reverted(current: Mapping[str, str], originals: Mapping[str, str]) -> list[str]:
    """Containers whose image is back to the original our annotation recorded, sorted.

    `current` maps container name to its image now. After our rewrite a container runs its
    backup; running the recorded original again means someone undid the rewrite.
    """
    return sorted(name for name, image in originals.items() if current.get(name) == image)


def images_manager(obj: Obj, *, ours: str) -> str | None:
    """The field manager that last wrote the pod template's containers, other than `ours`.

    Read from `metadata.managedFields` (server-side field tracking): the newest entry that
    owns a `containers` or `initContainers` field of the template. None when unknown.
    """
    newest: tuple[str, str] | None = None
    for entry in (obj.get("metadata") or {}).get("managedFields") or []:
        if not isinstance(entry, Mapping) or entry.get("manager") in (None, ours):
            continue
        if entry.get("subresource") or not _owns_containers(entry.get("fieldsV1")):
            continue
        stamp = str(entry.get("time") or "")
        if newest is None or stamp >= newest[0]:
            newest = (stamp, str(entry["manager"]))
    return newest[1] if newest else None


def _owns_containers(fields: object) -> bool:
    node: object = fields
    for key in ("f:spec", "f:template", "f:spec"):
        if not isinstance(node, Mapping):
            return False
        node = node.get(key)
    return isinstance(node, Mapping) and ("f:containers" in node or "f:initContainers" in node)


@dataclass(frozen=True)
class ImagePattern:
    """A repository name glob (`registry.corp.example/*`, `nginx`, `bitnami/*`).

    Written as a reference would be and normalised like one (`nginx` is
    `docker.io/library/nginx`); `*` matches any characters, `/` included, `?` one.
    Tags and digests are not part of a pattern: it names repositories.
    """

    text: str
    normalised: str

    def matches(self, ref: Reference) -> bool:
        return fnmatch.fnmatchcase(ref.repository.name, self.normalised)

    def __str__(self) -> str:
        return self.text


def parse_image_patterns(text: str) -> tuple[ImagePattern, ...]:
    """Comma-separated patterns; raises `ValueError` naming the first bad one."""
    return tuple(_pattern(item.strip()) for item in text.split(",") if item.strip())


def _pattern(text: str) -> ImagePattern:
    stand_in = text
    for glob, word in _GLOBS.items():
        stand_in = stand_in.replace(glob, word)
    try:
        ref = parse_reference(stand_in)  # a missing tag reads as `latest`: checked below
    except InvalidReference:
        raise ValueError(f"image pattern {text!r} is not a repository name glob") from None
    if "@" in stand_in or ":" in stand_in.rpartition("/")[2]:
        raise ValueError(
            f"image pattern {text!r} names a tag or digest; patterns name repositories"
        )
    normalised = ref.repository.name
    for glob, word in _GLOBS.items():
        normalised = normalised.replace(word, glob)
    return ImagePattern(text, normalised)
