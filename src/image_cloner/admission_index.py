"""The verified backups the admission webhook may point Pods at, kept in memory.

The webhook must answer within the apiserver's timeout and must never break a Pod, so
it never asks a registry anything: it rewrites an image only to a backup this process
has copied or verified itself (a successful `copy_image`, in workload mode or from the
webhook's own queue). The index maps the source image as the Pod names it (normalised:
`nginx` and `docker.io/library/nginx:latest` are one entry) to the pinned backup
(`BACKUP/nginx:latest@sha256:…`), so a Pod gets exactly the bytes that were verified.

Who may use a backup is one replaceable function (`MayUse`): the backup of a private
image must not become a way around the source's access control (a confused deputy), so
the default lets a namespace use only backups of images that the source served without
credentials.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from image_cloner.oci.references import InvalidReference, Reference, parse_reference

__all__ = [
    "DEFAULT_INDEX_SIZE",
    "BackupIndex",
    "MayUse",
    "VerifiedBackup",
    "copied_anonymously",
    "public_only",
]

DEFAULT_INDEX_SIZE = 10_000
"""Images remembered; the least recently used go first (a cluster uses far fewer)."""


@dataclass(frozen=True)
class VerifiedBackup:
    """A source image and the pinned backup verified equal to it."""

    source: Reference
    pinned: Reference
    """`BACKUP/repo:tag@sha256:…`: what a rewritten Pod pulls."""
    anonymous: bool
    """The source answered the copy without credentials: a public image."""


MayUse = Callable[[str, VerifiedBackup], bool]
"""`may_use(namespace, backup)`: whether Pods of `namespace` may be pointed at `backup`."""


def public_only(namespace: str, backup: VerifiedBackup) -> bool:
    """The default rule: any namespace may use the backup of a public image, none a private one.

    A private image's backup needs proof that the namespace may pull the source (its own
    pull Secret); until a credential source provides that proof, such Pods keep the source.
    """
    return backup.anonymous


def copied_anonymously(source: Reference, credentials: Mapping[str, object]) -> bool:
    """Whether a copy of `source` went without credentials: the copier had none for its host."""
    return source.repository.registry.host not in credentials


class BackupIndex:
    """Source image → verified pinned backup; bounded, least recently used evicted first."""

    def __init__(self, *, size: int = DEFAULT_INDEX_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[str, VerifiedBackup] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def record(self, source: Reference, pinned: Reference, *, anonymous: bool) -> None:
        """A copy of `source` to `pinned` (a reference with its digest) was verified."""
        if pinned.digest is None:
            raise ValueError(f"backup {pinned} is not pinned to a digest")
        key = source.name
        self._entries[key] = VerifiedBackup(source, pinned, anonymous)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    def lookup(
        self, namespace: str, image: str, *, may_use: MayUse = public_only
    ) -> Reference | None:
        """The pinned backup a Pod of `namespace` naming `image` may run; None if there is none."""
        try:
            key = parse_reference(image).name
        except InvalidReference:
            return None
        backup = self._entries.get(key)
        if backup is None or not may_use(namespace, backup):
            return None
        self._entries.move_to_end(key)
        return backup.pinned
