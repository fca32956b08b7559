"""Copy an image, every platform, byte for byte, from one repository to another.

The order is what makes a copy safe to interrupt and cheap to repeat:

1. Decide the digest to back up: the target's digest, else the source's, else what the
   source tag names now. HEAD the target tag (or digest): if it already holds that digest,
   that one request is the copy.
2. GET the source manifest by that digest (exact bytes, digest verified).
3. For an index, each child manifest concurrently: skip it if the target has it; else copy
   its config and layers concurrently, then PUT the child by digest.
4. For each blob: HEAD the target → mount from another repository of the same registry →
   streamed GET into an upload (its strategy per host: `oci.uploads`), its digest verified
   before the last byte is sent.
5. For every manifest copied, its referrers (signatures, SBOMs, attestations: `oci.referrers`)
   the same way, before any tag.
6. PUT the top manifest last, so a tag never points at something incomplete: by tag only
   if the target tag is absent (checked again just before) or already holds the digest;
   a tag that holds other bits is never moved unless asked (`move_tag`): the copy is then
   kept under its digest and `CopyResult.tag` says the tag was KEPT, and at what
   (the rule lives in `oci.tags`).

An image already in the target can have its referrers brought up to date on their own
(`sync_referrers`: what was attached upstream since the copy; the controller's
`controller.referrer_resync` decides when).

Blob transfers, child manifests and whole images are single-flight within the process:
concurrent copies that need the same thing await one shared task.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections import OrderedDict
from collections.abc import AsyncIterator, Coroutine, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from types import TracebackType
from typing import Any, Literal, Protocol, Self

from image_cloner.oci import tags
from image_cloner.oci.auth import RegistryAuth
from image_cloner.oci.client import BlobStream, RegistryClient, UploadSession
from image_cloner.oci.errors import DigestMismatchError, InvalidManifestError, RegistryError
from image_cloner.oci.manifests import Descriptor, ImageIndex, Manifest, read_descriptor
from image_cloner.oci.options import RegistryOptions
from image_cloner.oci.references import Reference, Repository
from image_cloner.oci.referrers import TagSchema, artifact_type, cosign_tags, find_referrers
from image_cloner.oci.retries import RetryPolicy, shared_budget
from image_cloner.oci.slots import TransferSlots
from image_cloner.oci.summary import ImageSummary, summarize
from image_cloner.oci.tags import TagOutcome
from image_cloner.oci.transport import Transport
from image_cloner.oci.uploads import REFUSED_MOUNT_STATUSES, UploadHabits, upload
from image_cloner.singleflight import SingleFlight

__all__ = ["BlobOutcome", "Copier", "CopyResult", "ProgressListener", "TagOutcome"]

logger = logging.getLogger(__name__)

KNOWN_BLOB_HOMES = 50_000
"""How many (registry, digest) → repository facts we remember as mount sources."""
MAX_NESTING = 8
"""How deep indexes may nest (an index of indexes is legal; real ones are 1-2 deep)."""

KNOWN_INDEXES = 4096
"""How many manifest digests → child digests we remember (content-addressed: never stale)."""


class BlobOutcome(enum.StrEnum):
    COPIED = "copied"
    """Streamed from the source into the target."""
    MOUNTED = "mounted"
    """Mounted from another repository of the target registry; no bytes moved."""
    SKIPPED = "skipped"
    """Already in the target repository, or a non-distributable layer we do not copy."""


class ProgressListener(Protocol):
    """What a progress display hears about; calls are cheap and never block."""

    def blob_started(self, descriptor: Descriptor) -> None: ...

    def blob_advanced(self, descriptor: Descriptor, nbytes: int) -> None: ...

    def blob_finished(self, descriptor: Descriptor, outcome: BlobOutcome) -> None: ...


@dataclass(frozen=True)
class CopyResult:
    """What one `copy_image` did."""

    source: Reference
    target: Reference
    digest: str
    """Digest of the top manifest (index or image), equal in source and target."""
    already_present: bool
    """The target already held `digest`: no manifest or blob was pushed for it."""
    tag: TagOutcome = TagOutcome.NONE
    tag_digest: str | None = None
    """What the target's tag names after the copy (`digest`, or the other bits it KEPT)."""
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    manifests_pushed: int = 0

    @property
    def pinned(self) -> Reference:
        """The target with its digest: what to pull to get exactly this copy."""
        return self.target.with_digest(self.digest)


@dataclass
class _Tally:
    blobs_copied: int = 0
    blobs_mounted: int = 0
    blobs_skipped: int = 0
    bytes_copied: int = 0
    manifests_pushed: int = 0

    def count(self, outcome: BlobOutcome, size: int) -> None:
        if outcome is BlobOutcome.COPIED:
            self.blobs_copied += 1
            self.bytes_copied += size
        elif outcome is BlobOutcome.MOUNTED:
            self.blobs_mounted += 1
        else:
            self.blobs_skipped += 1


@dataclass(frozen=True)
class _Ask:
    """How a copy was asked for."""

    force: bool
    move_tag: bool
    progress: ProgressListener | None


@dataclass(frozen=True)
class _Referrers:
    """What the source has that refers to one manifest."""

    listed: tuple[dict[str, Any], ...]
    """Its referrers (API or tag schema), as descriptors."""
    tagged: tuple[tuple[str, Manifest], ...]
    """Its cosign tags that exist, with their manifests."""


@dataclass(frozen=True)
class _Job:
    """One image copy in progress: both ends, its tally, who listens."""

    source: RegistryClient
    target: RegistryClient
    tally: _Tally
    progress: ProgressListener | None


@asynccontextmanager
async def _together() -> AsyncIterator[asyncio.TaskGroup]:
    """A task group whose first failure cancels the rest and is raised as it is."""
    try:
        async with asyncio.TaskGroup() as group:
            yield group
    except BaseExceptionGroup as failures:
        raise _first(failures) from None


async def _all(works: Iterable[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; on the first failure cancel the rest and raise that failure."""
    async with _together() as group:
        for work in works:
            group.create_task(work)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    first = group.exceptions[0]
    return _first(first) if isinstance(first, BaseExceptionGroup) else first


class Copier:
    """Copies images between registries. One per process; use as an async context manager."""

    def __init__(self, options: RegistryOptions, *, retry: RetryPolicy | None = None) -> None:
        self.options = options
        self._auth = RegistryAuth(options.credentials, insecure_hosts=options.insecure_hosts)
        self._transport = Transport(options, retry=retry, middlewares=[self._auth])
        self._images: SingleFlight[CopyResult] = SingleFlight()
        self._manifests: SingleFlight[int] = SingleFlight()
        self._blobs: SingleFlight[BlobOutcome] = SingleFlight()
        self._slots = TransferSlots(options.max_concurrent_transfers)
        self._blob_homes: OrderedDict[tuple[str, str], Repository] = OrderedDict()
        self._habits = UploadHabits()
        self._indexes: OrderedDict[str, tuple[str, ...]] = OrderedDict()
        self._tag_schema = TagSchema()

    async def __aenter__(self) -> Self:
        await self._transport.__aenter__()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for flights in (self._images, self._manifests, self._blobs):
            await flights.cancel_all()
        await self._transport.close()

    def _client(self, repository: Repository, *, pull: bool) -> RegistryClient:
        mirrors = self.options.mirrors.get(repository.registry.host, ()) if pull else ()
        return RegistryClient(self._transport, repository, mirrors=tuple(mirrors))

    async def check_push_access(self, repository: Repository) -> None:
        """Raise `RegistryError` unless the registry is reachable and lets us push there."""
        await self._client(repository, pull=False).check_push_access()

    async def source_digest(self, reference: Reference) -> str | None:
        """The digest `reference` has at its source, asked with the credentials in force
        (one HEAD, on its mirrors first, as the copy reads); None when there is no such
        manifest; `RegistryError` (401/403: refused)."""
        client = self._client(reference.repository, pull=True)
        return await client.readable_digest(reference.identifier)

    async def copy_image(
        self,
        source: Reference,
        target: Reference,
        *,
        force: bool = False,
        move_tag: bool = False,
        progress: ProgressListener | None = None,
    ) -> CopyResult:
        """Copy `source` (all platforms) to `target`; raises `RegistryError` on failure.

        The digest copied is `target`'s, else `source`'s, else what `source`'s tag names
        now. Unless `force`, a target that already holds it costs one HEAD request (and a
        HEAD of the source tag when neither reference names a digest). A target tag that
        holds other bits is moved only with `move_tag`; otherwise it is KEPT and the copy
        is stored under its digest (`CopyResult.tag`, `CopyResult.tag_digest`).
        """
        key = (source.name, target.name, force, move_tag)
        return await self._images.run(
            key, lambda: self._copy(source, target, _Ask(force, move_tag, progress))
        )

    async def current_digest(self, ref: Reference) -> str:
        """The digest `ref` names in its registry now: its own, else its tag's (one HEAD,
        which Docker Hub does not count as a pull). `NotFoundError` when there is none."""
        return ref.digest or await tags.current(self._client(ref.repository, pull=True), ref)

    async def children(self, ref: Reference) -> tuple[str, ...]:
        """The digests of the child manifests (platforms) of the index `ref` names by digest;
        () for an image manifest. One GET per digest per process: content never changes
        under a digest."""
        assert ref.digest is not None, "children are asked of a manifest by digest"
        found = self._indexes.get(ref.digest)
        if found is None:
            client = self._client(ref.repository, pull=True)
            parsed = (await client.get_manifest(ref.digest, expected=ref.digest)).parse()
            found = (
                tuple(c.digest for c in parsed.manifests) if isinstance(parsed, ImageIndex) else ()
            )
            self._indexes[ref.digest] = found
            if len(self._indexes) > KNOWN_INDEXES:
                self._indexes.popitem(last=False)
        self._indexes.move_to_end(ref.digest)
        return found

    async def summarize(self, ref: Reference) -> ImageSummary:
        """Digest, platforms and bytes of `ref` where it is (`oci.summary`), read as a copy
        would read it (mirrors first)."""
        return await summarize(self._client(ref.repository, pull=True), ref)

    async def has_manifest(self, ref: Reference) -> bool:
        """Whether `ref`'s registry holds `ref` (one HEAD, by digest if it has one)."""
        client = self._client(ref.repository, pull=True)
        return await client.manifest_digest(ref.identifier) is not None

    async def _copy(self, source: Reference, target: Reference, ask: _Ask) -> CopyResult:
        job = _Job(
            self._client(source.repository, pull=True),
            self._client(target.repository, pull=False),
            _Tally(),
            ask.progress,
        )
        wanted = target.digest or source.digest
        held = await job.target.manifest_digest(target.tag) if target.tag is not None else None
        if wanted is None and held is not None:
            # The tag exists: whether that is "already there" depends on the source's tag now.
            wanted = await tags.current(job.source, source)
        there = await tags.already_there(job.target, target, wanted, held, move_tag=ask.move_tag)
        if not ask.force and there is not None:
            logger.debug("%s already holds %s", target.name, there.digest)
            return CopyResult(
                source,
                target,
                there.digest,
                already_present=True,
                tag=there.tag,
                tag_digest=there.tag_digest,
            )
        manifest = await job.source.get_manifest(wanted or source.identifier, expected=wanted)
        await self._copy_contents(job, manifest)
        placed = await tags.place(job.target, target, manifest, move_tag=ask.move_tag)
        job.tally.manifests_pushed += 1
        logger.debug(
            "copied %s to %s (%s, tag %s)", source.name, target.name, placed.digest, placed.tag
        )
        t = job.tally
        return CopyResult(
            source,
            target,
            manifest.digest,
            already_present=False,
            tag=placed.tag,
            tag_digest=placed.tag_digest,
            blobs_copied=t.blobs_copied,
            blobs_mounted=t.blobs_mounted,
            blobs_skipped=t.blobs_skipped,
            bytes_copied=t.bytes_copied,
            manifests_pushed=t.manifests_pushed,
        )

    async def _copy_contents(self, job: _Job, manifest: Manifest, *, depth: int = 0) -> None:
        """Everything a manifest refers to, so that the manifest itself can be pushed.

        Children of any type are copied by their shape (`manifests.parse_manifest`); nested
        indexes recurse, at most `MAX_NESTING` deep. A `subject` is not a dependency: the
        manifest it names is the one being annotated, copied (or not) on its own account.
        """
        parsed = manifest.parse()
        if isinstance(parsed, ImageIndex):
            if depth >= MAX_NESTING:
                raise InvalidManifestError(
                    f"manifest {manifest.digest}: indexes nested more than {MAX_NESTING} deep"
                )
            children = {child.digest: child for child in parsed.manifests}
            works = [self._copy_child(job, child, depth + 1) for child in children.values()]
        else:
            blobs = {blob.digest: blob for blob in parsed.blobs}
            works = [self._copy_blob(job, blob) for blob in blobs.values()]
        # What refers to the manifest is looked up while its contents copy: those few small
        # GETs are then off the path to the tag, which waits for the copy's last manifest.
        async with _together() as group:
            found = (
                group.create_task(self._find_referrers(job, manifest.digest, depth))
                if self.options.referrers.enabled
                else None
            )
            for work in works:
                group.create_task(work)
        if found is not None:
            await self._copy_found(job, manifest.digest, found.result(), depth)

    async def sync_referrers(self, source: Reference, target: Reference) -> int:
        """Copy what refers to the image `source` names by digest, and to each of its
        platforms, that `target` (the same digest, already copied) lacks: signatures and
        attestations attached upstream after the copy. Returns the manifests pushed;
        `RegistryError` as `copy_image`. The cost is in `controller.referrer_resync`."""
        assert source.digest is not None, "referrers are synced for a digest"
        assert source.digest == target.digest, "a backup holds the source's digest"
        job = _Job(
            self._client(source.repository, pull=True),
            self._client(target.repository, pull=False),
            _Tally(),
            None,
        )
        if self.options.referrers.enabled:
            platforms = await self.children(source)
            await _all(
                self._copy_referrers(job, digest, depth)
                for digest, depth in [(source.digest, 0), *((p, 1) for p in platforms)]
            )
        return job.tally.manifests_pushed

    async def _copy_referrers(self, job: _Job, digest: str, depth: int) -> None:
        """What refers to `digest` (signatures, SBOMs, attestations: `oci.referrers`),
        each with its own referrers, at most `MAX_NESTING` deep; before any tag is pushed."""
        await self._copy_found(job, digest, await self._find_referrers(job, digest, depth), depth)

    async def _find_referrers(self, job: _Job, digest: str, depth: int) -> _Referrers:
        """The source's referrers of `digest` and its cosign tags, looked up concurrently."""
        if depth >= MAX_NESTING:
            logger.info("referrers of %s not followed: %d deep", digest, depth)
            return _Referrers((), ())
        async with _together() as group:
            listed = group.create_task(find_referrers(job.source, digest))
            tagged = group.create_task(cosign_tags(job.source, digest))
        return _Referrers(tuple(listed.result()), tuple(tagged.result()))

    async def _copy_found(self, job: _Job, digest: str, found: _Referrers, depth: int) -> None:
        works = [
            self._optional(self._copy_referrer(job, digest, entry, depth), entry["digest"])
            for entry in found.listed
        ] + [
            self._optional(self._copy_tagged(job, tag, tagged, depth), tag)
            for tag, tagged in found.tagged
        ]
        await _all(works)

    async def _optional(self, work: Coroutine[Any, Any, None], what: str) -> None:
        """`work`, whose failure fails the image unless the policy says referrers are optional
        (a signature policy would reject a backup that lost its signature)."""
        try:
            await work
        except RegistryError as exc:
            if not self.options.referrers.optional:
                logger.warning("referrer %s not copied: %s", what, exc)
                raise
            logger.warning("referrer %s not copied (optional): %s", what, exc)

    async def _copy_referrer(
        self, job: _Job, subject: str, entry: dict[str, Any], depth: int
    ) -> None:
        child = read_descriptor(entry, f"referrer of {subject}")
        policy = self.options.referrers
        if policy.artifact_types:
            # Read the manifest itself: registries' listings differ (ggcr lists the config's
            # media type as `artifactType`).
            found = await job.source.get_manifest(child.digest, expected=child.digest)
            if not policy.wants(artifact_type(found)):
                return
        await self._copy_child(job, child, depth + 1)
        await self._tag_schema.add(job.target, subject, entry)

    async def _copy_tagged(self, job: _Job, tag: str, manifest: Manifest, depth: int) -> None:
        """A cosign `.sig`/`.att`/`.sbom` tag: its contents, then the tag (moved if it changed:
        cosign rewrites it whenever it adds a signature)."""
        if not self.options.referrers.wants(artifact_type(manifest)):
            return
        if await job.target.manifest_digest(tag) == manifest.digest:
            return
        await self._copy_contents(job, manifest, depth=depth + 1)
        await job.target.put_manifest(tag, manifest)
        job.tally.manifests_pushed += 1

    async def _copy_child(self, job: _Job, child: Descriptor, depth: int) -> None:
        key = (job.target.authority, job.target.repository.path, child.digest)
        pushed = await self._manifests.run(key, lambda: self._push_child(job, child, depth))
        job.tally.manifests_pushed += pushed

    async def _push_child(self, job: _Job, child: Descriptor, depth: int) -> int:
        if await job.target.manifest_digest(child.digest) is not None:
            return 0
        manifest = await job.source.get_manifest(
            child.digest, expected=child.digest, media_type=child.media_type
        )
        if len(manifest.raw) != child.size:
            raise DigestMismatchError(
                f"manifest {child.digest}: {len(manifest.raw)} bytes, index says {child.size}"
            )
        await self._copy_contents(job, manifest, depth=depth)
        await job.target.put_manifest(child.digest, manifest)
        return 1

    async def _copy_blob(self, job: _Job, blob: Descriptor) -> None:
        if blob.is_foreign:
            # Non-distributable layers are fetched from their `urls`, not the registry;
            # like skopeo and crane we leave them there (see docs/copy.md).
            outcome = BlobOutcome.SKIPPED
        else:
            key = (job.target.authority, job.target.repository.path, blob.digest)
            outcome = await self._blobs.run(key, lambda: self._transfer(job, blob))
        job.tally.count(outcome, blob.size)
        if job.progress is not None:
            job.progress.blob_finished(blob, outcome)

    async def _transfer(self, job: _Job, blob: Descriptor) -> BlobOutcome:
        target = job.target
        if await target.blob_exists(blob.digest):
            self._remember(target, blob.digest)
            return BlobOutcome.SKIPPED
        refused = await self._mount(job, blob)
        if refused is BlobOutcome.MOUNTED:
            self._remember(target, blob.digest)
            return BlobOutcome.MOUNTED
        # The first try uses the session a refused mount opened; each retry opens its own.
        sessions = iter([refused] if refused is not None else [])
        try:
            # One retry budget for the blob: the whole-blob retries and the retries of the
            # requests inside them (POST, source GET, commit) spend from it together.
            with shared_budget(self._transport.retry):
                async with self._slots.hold(job.source.authority, target.authority):
                    await self._transport.with_retries(
                        lambda: self._upload(job, blob, next(sessions, None))
                    )
        finally:
            if (unused := next(sessions, None)) is not None:
                # A refused mount's session never used (e.g. cancelled while waiting
                # for a transfer slot): do not leave it open in the registry.
                await target.cancel_upload(unused)
        self._remember(target, blob.digest)
        return BlobOutcome.COPIED

    async def _mount(
        self, job: _Job, blob: Descriptor
    ) -> Literal[BlobOutcome.MOUNTED] | UploadSession | None:
        """Try to mount the blob from a repository of the target registry known to hold it:
        MOUNTED, the upload session a refused mount opened, or None (no mount).

        A refusal in any form (an error status, or 202 with a session) means "upload"; a host
        that refuses mounts is not asked again in this process (see `uploads.HostHabits`)."""
        habits = self._habits.host(job.target.authority)
        if habits.refuses_mounts or (home := self._mount_source(job, blob.digest)) is None:
            return None
        try:
            session = await job.target.start_upload(mount=(blob.digest, home))
        except RegistryError as exc:
            if exc.status not in REFUSED_MOUNT_STATUSES:
                raise
            logger.debug("mount of %s from %s failed: %s", blob.digest, home.name, exc)
            habits.mount_refused(exc.status)
            return None
        if session is None:
            habits.mounted()
            return BlobOutcome.MOUNTED
        logger.debug("mount of %s from %s refused; uploading", blob.digest, home.name)
        habits.mount_refused(None)
        return session

    async def _upload(self, job: _Job, blob: Descriptor, session: UploadSession | None) -> None:
        """One upload try, into `session` or a new one (strategies: `oci.uploads`)."""
        habits = self._habits.host(job.target.authority)
        await upload(job.target, habits, blob, session, partial(self._stream, job, blob))

    def _stream(self, job: _Job, blob: Descriptor) -> AbstractAsyncContextManager[BlobStream]:
        """The blob's download, opened anew for each try of its upload."""
        progress = job.progress
        if progress is not None:
            progress.blob_started(blob)
        advanced = None if progress is None else partial(progress.blob_advanced, blob)
        return job.source.open_blob(blob, on_progress=advanced)

    def _mount_source(self, job: _Job, digest: str) -> Repository | None:
        """A repository of the target registry known to hold `digest`, if any."""
        target = job.target
        known = self._blob_homes.get((target.authority, digest))
        if known is not None and known != target.repository:
            return known
        source = job.source.repository
        if job.source.authority == target.authority and source != target.repository:
            return source
        return None

    def _remember(self, client: RegistryClient, digest: str) -> None:
        key = (client.authority, digest)
        self._blob_homes[key] = client.repository
        self._blob_homes.move_to_end(key)
        if len(self._blob_homes) > KNOWN_BLOB_HOMES:
            self._blob_homes.popitem(last=False)
