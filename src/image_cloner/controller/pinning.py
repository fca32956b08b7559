"""What runs is what is backed up: per container, the digest to copy and the image to write.

A tag is a pointer that moves. A Ready workload on `app:v1` runs the digest its pods
report (`running.running`), which may no longer be what `app:v1` names upstream; copying
the tag as it is now, and rewriting the workload to it, would roll it onto bits that never
ran there. So, for each container of the pod template whose image is not yet a backup:

- a digest reference (`app@sha256:X`, `app:v1@sha256:X`) is its own evidence: copy X;
- the pods agree on X: if X is what the tag names now, or one platform of the index the
  tag names now (runtimes report either), copy the tag's current index or manifest;
  else copy X from the source by digest if it still has it; else refuse;
- the pods disagree (same tag, different digests on different nodes): refuse, unless
  every digest they report is a platform of the index the tag names now (a cluster of
  several architectures on a runtime that reports platform digests);
- no pod reports a digest (none yet, 0 replicas, a runtime that reports none): copy what
  the tag names now, and say so in the Event.

A refusal leaves the whole workload untouched (a Warning Event naming the digests and
counts, a metric) and is retried with the queue's backoff: pods come and go.

The rewrite then names the copy by digest: `BACKUP/repo:tag@sha256:X` (`pinned`, the
default), or the seed's `BACKUP/repo:tag` (`tag`) when the backup tag holds X; the copy
engine never moves a backup tag that holds other bits (see `oci.copying`), and then the
image is pinned even in `tag` form. The workload's pods are read once per pass, by its
selector, in its namespace: the controller needs `pods: list`, nothing more.

What a tag names is read once per `TAG_DIGEST_FOR` per (tag, login) and shared by every
workload on it: installed on a cluster where 1,000 workloads run 30 images, the first pass
asks each source 30 HEADs, not 1,000. A tag that moves meanwhile costs nothing unsafe:
the digest copied is still the one the pods report, the tag only tells whether that digest
is the tag's index or one of its platforms.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, replace
from typing import NoReturn, Protocol

from image_cloner.controller.access import SourceAccess
from image_cloner.controller.kube import JsonObject, KubeCalls
from image_cloner.controller.kube_errors import KubeApiError
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.metrics import FailureReason, Metrics
from image_cloner.oci.copying import CopyResult, TagOutcome
from image_cloner.oci.errors import NotFoundError, RegistryError
from image_cloner.oci.references import Reference
from image_cloner.running import Agreed, Disagreed, NotReported, running
from image_cloner.settings import RewriteForm
from image_cloner.singleflight import SingleFlight
from image_cloner.source_credentials import SourceLogins
from image_cloner.workloads import POD, ContainerImage, InvalidSelector, kind_of, label_selector

__all__ = ["Pin", "Pinned", "Pinning", "PinningFailed", "SourceReader"]

logger = logging.getLogger(CONTROLLER_LOGGER)

TAG_DIGEST_FOR = 30.0
"""Seconds a tag's digest, once read, answers for every workload on that tag (per login)."""

KNOWN_TAGS = 4096
"""Tags whose digest is remembered at once (least recently used forgotten first)."""


class SourceReader(Protocol):
    """What pinning reads of source registries (`oci.copying.Copier`, or a fake)."""

    async def current_digest(self, ref: Reference) -> str: ...

    async def children(self, ref: Reference) -> tuple[str, ...]: ...

    async def has_manifest(self, ref: Reference) -> bool: ...


class PinningFailed(Exception):
    """No container may be rewritten in this pass; `message` goes into a Warning Event.

    `refused`: the pods' evidence forbids the rewrite (disagreeing digests, a digest the
    source lost); else reading the pods or the source failed.
    """

    def __init__(self, message: str, *, refused: bool) -> None:
        super().__init__(message)
        self.message = message
        self.refused = refused


@dataclass(frozen=True)
class Pin:
    """One container's backup: copy `source` to `target` (both pinned to the digest)."""

    container: ContainerImage
    source: Reference
    target: Reference
    form: RewriteForm
    by_tag: bool
    """The workload names the image by tag alone (the digest came from its pods or the tag)."""
    note: str | None = None
    """Said in the ImagesCloned Event (e.g. the digest came from the tag)."""

    def rewritten(self, result: CopyResult) -> Pinned:
        """The image to write once the copy is done, and what the Event says about it."""
        notes = [self.note] if self.note else []
        if result.tag is TagOutcome.KEPT:
            notes.append(
                f"backup tag {self.target.tag} kept at {result.tag_digest}, not moved;"
                " this copy is stored by digest"
            )
        if self.form == "tag" and self.by_tag:
            if result.tag in (TagOutcome.PUSHED, TagOutcome.ALREADY):
                seed_form = str(replace(self.target, digest=None, text=None))
                return Pinned(self, seed_form, tuple(notes))
            notes.append("pinned, as the backup tag does not hold this digest")
        return Pinned(self, str(self.target), tuple(notes))


@dataclass(frozen=True)
class Pinned:
    """A container's rewrite: the image to write, and notes for the Event."""

    pin: Pin
    image: str
    notes: tuple[str, ...]

    def __str__(self) -> str:
        said = f" ({'; '.join(self.notes)})" if self.notes else ""
        return f"{self.pin.container.image} → {self.image}{said}"


class TagDigests:
    """What each tag names at its source, read once per `TAG_DIGEST_FOR` per (tag, login),
    concurrent readers sharing the one HEAD. Failures are not remembered."""

    def __init__(
        self, source: SourceReader, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._source = source
        self._clock = clock
        self._known: OrderedDict[Hashable, tuple[str, float]] = OrderedDict()
        self._reads: SingleFlight[str] = SingleFlight()

    async def current(self, source: Reference, login: Hashable) -> str:
        key = (source.name, login)
        known = self._known.get(key)
        if known is not None and self._clock() - known[1] < TAG_DIGEST_FOR:
            return known[0]
        return await self._reads.run(key, lambda: self._read(key, source))

    async def _read(self, key: Hashable, source: Reference) -> str:
        digest = await self._source.current_digest(source)
        self._known[key] = (digest, self._clock())
        self._known.move_to_end(key)
        if len(self._known) > KNOWN_TAGS:
            self._known.popitem(last=False)
        return digest


class Pinning:
    """Decides each container's `Pin` from the workload's pods and the source registry."""

    def __init__(
        self,
        *,
        kube: KubeCalls,
        source: SourceReader,
        metrics: Metrics,
        form: RewriteForm,
        access: SourceAccess | None = None,
    ) -> None:
        self._kube = kube
        self._source = source
        self._metrics = metrics
        self._form = form
        self._access = access
        """Reads of a source go out with the workload's own proven login (controller.access):
        a private image is never pinned with another namespace's credentials."""
        self._tags = TagDigests(source)

    async def pins(
        self, obj: JsonObject, wanted: Sequence[tuple[ContainerImage, Reference, Reference]]
    ) -> list[Pin]:
        """A `Pin` per (container, source, backup target); raises `PinningFailed`."""
        pods = await self._pods(obj, wanted)
        pins: list[Pin] = []
        problems: list[str] = []
        refused = False
        for container, source, target in wanted:
            try:
                pins.append(await self._pin_as(obj, pods, container, source, target))
            except PinningFailed as failure:
                problems.append(failure.message)
                refused = refused or failure.refused
        if problems:
            raise PinningFailed("; ".join(problems), refused=refused)
        return pins

    async def _pin_as(
        self,
        obj: JsonObject,
        pods: list[JsonObject],
        container: ContainerImage,
        source: Reference,
        target: Reference,
    ) -> Pin:
        """`_pin`, its source reads made as the workload (a digest reference needs none)."""
        if self._access is None or source.digest is not None:
            return await self._pin(pods, container, source, target, login=None)
        try:
            login = await self._access.prove(obj, str(obj["metadata"]["namespace"]), source)
        except RegistryError as e:
            where = f"container {container.name} ({container.image})"
            raise PinningFailed(f"{where}: {e}", refused=False) from None
        with SourceLogins.using(source.repository.registry.host, login):
            return await self._pin(pods, container, source, target, login=login)

    async def _pods(
        self, obj: JsonObject, wanted: Sequence[tuple[ContainerImage, Reference, Reference]]
    ) -> list[JsonObject]:
        if all(source.digest is not None for _, source, _ in wanted):
            return []  # digest references are their own evidence
        if kind_of(obj) is POD:
            return [obj]  # a bare Pod is its own evidence
        meta = obj.get("metadata") or {}
        try:
            selector = label_selector(obj)
            # No selector would list every pod of the namespace: no evidence, then.
            return await self._kube.list_pods(meta["namespace"], selector) if selector else []
        except (InvalidSelector, KubeApiError) as e:
            raise PinningFailed(f"cannot list the workload's pods: {e}", refused=False) from None

    async def _pin(
        self,
        pods: list[JsonObject],
        container: ContainerImage,
        source: Reference,
        target: Reference,
        *,
        login: Hashable,
    ) -> Pin:
        if source.digest is not None:
            return Pin(container, source, target, self._form, by_tag=False)
        verdict = running(
            pods, section=container.section, container=container.name, image=container.image
        )
        where = f"container {container.name} ({container.image})"
        try:
            digest, note = await self._digest(verdict, source, where, login=login)
        except RegistryError as e:
            self._metrics.image_failed(FailureReason.of(e))
            raise PinningFailed(f"{where}: cannot read {source}: {e}", refused=False) from None
        pinned_source, pinned_target = source.with_digest(digest), target.with_digest(digest)
        return Pin(container, pinned_source, pinned_target, self._form, by_tag=True, note=note)

    async def _digest(
        self,
        verdict: Agreed | Disagreed | NotReported,
        source: Reference,
        where: str,
        *,
        login: Hashable,
    ) -> tuple[str, str | None]:
        if isinstance(verdict, NotReported):
            now = await self._tags.current(source, login)
            return now, f"digest from the tag: {verdict.reason}"
        if isinstance(verdict, Disagreed):
            # Nodes of different platforms report different children of one index (CRI-O
            # reports the platform's manifest): that is agreement on the index.
            now = await self._tags.current(source, login)
            if not set(verdict.counts) <= {now, *await self._children(source, now)}:
                self._refuse(FailureReason.DIGESTS_DISAGREE, where, f"pods disagree: {verdict}")
            return now, f"{sum(verdict.counts.values())} pods run platforms of it: {verdict}"
        ran = verdict.digest
        try:
            tagged: str | None = await self._tags.current(source, login)
        except NotFoundError:
            tagged = None  # the tag is gone; the digest may not be
        if tagged == ran:
            return ran, f"the digest {verdict.pods} pod(s) run"
        if tagged is not None and ran in await self._children(source, tagged):
            # A platform's digest means the index the tag names: that is what runs.
            return tagged, f"{verdict.pods} pod(s) run its platform manifest {ran}"
        now_named = f"the tag names {tagged} now" if tagged else "the tag is gone"
        if not await self._source.has_manifest(source.with_digest(ran)):
            self._refuse(
                FailureReason.SOURCE_DIGEST_GONE,
                where,
                f"{verdict.pods} pod(s) run {ran}, which the source no longer has ({now_named})",
            )
        return ran, f"the digest the pods run; {now_named}"

    async def _children(self, source: Reference, digest: str) -> tuple[str, ...]:
        return await self._source.children(source.with_digest(digest))

    def _refuse(self, reason: FailureReason, where: str, why: str) -> NoReturn:
        self._metrics.image_failed(reason)
        log_event(logger, logging.WARNING, "not rewriting what runs", container=where, reason=why)
        raise PinningFailed(f"{where}: {why}; not rewritten", refused=True)
