"""Blob uploads as strategies, chosen per registry host and remembered for the process.

Registries agree on the distribution spec's words and not on its details: ECR answers a
PATCH with 201, some proxies and registries refuse a PATCH without `Content-Range`, others
cap a request body (413), expire upload sessions, or drop the answer to a commit that
worked. regclient (`scheme/reg/blob.go`) and go-containerregistry (`remote/write.go`) each
handle a part of that; this module is the whole of it, as data:

- `Strategy`: MONOLITHIC (`PUT ?digest=` with the body: small blobs, one request),
  STREAMED (one PATCH with the whole body, then `PUT ?digest=`: what Docker and skopeo send)
  and CHUNKED (PATCHes with `Content-Range`, each at most `chunk_size` bytes, at least the
  registry's `OCI-Chunk-Min-Length`). Every body is streamed from the source: a chunk is a
  slice of the download, never a buffer, so memory stays flat with every strategy.
- `HostHabits`: what we learnt about one host (which strategies it refused, its chunk size,
  its body limit, whether it refuses mounts), consulted by every later blob.
- `upload`: one blob; a refusal (413, 416, a streamed PATCH refused) adapts the host's
  habits and sends the blob again; an expired session (`BLOB_UPLOAD_UNKNOWN`) opens a new
  one; a failed commit HEADs the blob first (the answer to a commit that worked may be lost).
  Registry outages (429/5xx) are not handled here but by the shared retry budget around it.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from image_cloner.oci.client import RegistryClient, UploadSession
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.manifests import Descriptor

__all__ = ["HostHabits", "Strategy", "UploadHabits", "upload"]

logger = logging.getLogger(__name__)

MONOLITHIC_MAX = 1024 * 1024
"""Blobs up to this size go in one `PUT ?digest=` with the body: one request, not two."""
DEFAULT_CHUNK = 16 * 1024 * 1024
"""Chunk size of CHUNKED uploads unless the registry asks for more (ECR: at least 5 MiB)."""
MIN_CHUNK = 256 * 1024
"""A 413 halves the chunk size, down to this; below it we rather fail with the 413."""
MAX_ADAPTATIONS = 8
"""Refusals and expired sessions one blob may meet before its upload fails."""
MOUNT_REFUSALS = 3
"""Mounts answered "upload instead" (202) in a row, none mounted, before we stop asking."""
REFUSED_MOUNT_STATUSES = frozenset({400, 401, 403, 404, 405})
"""A mount answered with one of these is refused: we upload, and do not ask that host again."""
_REFUSED_BODY_STATUSES = frozenset({400, 405, 411, 416})
_OUR_FAULT_CODES = frozenset({"DIGEST_INVALID", "SIZE_INVALID", "BLOB_UPLOAD_UNKNOWN"})


class Strategy(enum.StrEnum):
    MONOLITHIC = "monolithic"
    STREAMED = "streamed"
    CHUNKED = "chunked"


_PREFERENCE = (Strategy.STREAMED, Strategy.CHUNKED, Strategy.MONOLITHIC)
"""For blobs above `monolithic_max`: the first strategy the host has not refused."""

BodyOpener = Callable[[], AbstractAsyncContextManager[AsyncIterable[bytes]]]
"""Opens the blob's download anew for each try: a streamed body is read once."""


@dataclass
class HostHabits:
    """What one registry host accepts, learnt from its refusals; shared by its uploads."""

    authority: str
    monolithic_max: int = MONOLITHIC_MAX
    chunk_size: int = DEFAULT_CHUNK
    refused: set[Strategy] = field(default_factory=set)
    refuses_mounts: bool = False
    mounts_unanswered: int = 0

    def strategy_for(self, size: int) -> Strategy:
        if size <= self.monolithic_max and Strategy.MONOLITHIC not in self.refused:
            return Strategy.MONOLITHIC
        return next((s for s in _PREFERENCE if s not in self.refused), Strategy.MONOLITHIC)

    def chunk_for(self, session: UploadSession) -> int:
        return max(self.chunk_size, session.min_chunk or 0)

    def adapt(self, strategy: Strategy, error: RegistryError, *, sent: int) -> bool:
        """Learn from `error` (a refusal of a `sent`-byte body); False: nothing left to try."""
        if error.status == 413:
            self.monolithic_max = min(self.monolithic_max, sent - 1)
            if strategy is Strategy.CHUNKED:
                smaller = min(self.chunk_size, sent) // 2
                if smaller < MIN_CHUNK:
                    return False
                self.chunk_size = smaller
            elif strategy is Strategy.STREAMED:
                self.refused.add(Strategy.STREAMED)  # one body of the blob's size: too big
            return True
        # Refused outright (a streamed PATCH without Content-Range, chunks out of step, a
        # PUT with a body): this host gets the next strategy from now on.
        self.refused.add(strategy)
        return any(s not in self.refused for s in _PREFERENCE)

    def mount_refused(self, status: int | None) -> None:
        """A mount was answered with an error `status`, or with a session (None)."""
        if status is not None and status in REFUSED_MOUNT_STATUSES:
            self.refuses_mounts = True
            return
        self.mounts_unanswered += 1
        self.refuses_mounts = self.mounts_unanswered >= MOUNT_REFUSALS

    def mounted(self) -> None:
        self.mounts_unanswered = 0


class UploadHabits:
    """`HostHabits` per registry host, for the process."""

    def __init__(self) -> None:
        self._hosts: dict[str, HostHabits] = {}

    def host(self, authority: str) -> HostHabits:
        found = self._hosts.get(authority)
        if found is None:
            found = self._hosts[authority] = HostHabits(authority)
        return found


class _Refused(Exception):
    """An upload step the registry refused in a way another try may fix."""

    def __init__(self, error: RegistryError, *, sent: int, expired: bool) -> None:
        super().__init__(error.message)
        self.error = error
        self.sent = sent
        self.expired = expired


async def upload(
    target: RegistryClient,
    habits: HostHabits,
    blob: Descriptor,
    session: UploadSession | None,
    open_body: BodyOpener,
) -> None:
    """Upload `blob` into `session` (or a new one), adapting to the host's refusals."""
    for tries_left in range(MAX_ADAPTATIONS, -1, -1):
        if session is None and (session := await target.start_upload()) is None:
            raise RegistryError(f"{target.repository.name}: upload start returned no session")
        strategy = habits.strategy_for(blob.size)
        try:
            async with open_body() as body:
                await _send(
                    target, session, blob, body, strategy=strategy, chunk=habits.chunk_for(session)
                )
            return
        except _Refused as refused:
            await target.cancel_upload(session)
            session = None
            if not tries_left or not (
                refused.expired or habits.adapt(strategy, refused.error, sent=refused.sent)
            ):
                raise refused.error from None
            logger.info(
                "%s: %s upload of %s refused (%s); trying again as %s",
                habits.authority,
                strategy,
                blob.digest,
                refused.error,
                habits.strategy_for(blob.size),
            )
        except BaseException:
            await target.cancel_upload(session)
            raise
    raise AssertionError("unreachable: the last try raises")


async def _send(
    target: RegistryClient,
    session: UploadSession,
    blob: Descriptor,
    body: AsyncIterable[bytes],
    *,
    strategy: Strategy,
    chunk: int,
) -> None:
    if strategy is Strategy.MONOLITHIC:
        await _commit(target, session, blob, body, sent=blob.size)
        return
    pieces = _Pieces(body)
    offset = 0
    while offset < blob.size:
        length = (
            blob.size - offset if strategy is Strategy.STREAMED else min(chunk, blob.size - offset)
        )
        ranged = None if strategy is Strategy.STREAMED else offset
        try:
            session = await target.patch_blob(
                session, pieces.take(length), length=length, offset=ranged
            )
        except RegistryError as exc:
            raise _refusal(exc, sent=length) from None
        offset += length
    await pieces.drain()  # the end of the stream is where its digest is checked
    await _commit(target, session, blob, None, sent=0)


async def _commit(
    target: RegistryClient,
    session: UploadSession,
    blob: Descriptor,
    body: AsyncIterable[bytes] | None,
    *,
    sent: int,
) -> None:
    try:
        await target.commit_blob(session, blob, body)
    except RegistryError as exc:
        # A commit that worked but whose answer was lost (a dropped connection, a retried
        # PUT answered 404) is a success: the registry holds the blob.
        try:
            if await target.blob_exists(blob.digest):
                logger.info(
                    "%s: commit of %s failed (%s) but the blob is there", target, blob.digest, exc
                )
                return
        except RegistryError:
            pass
        if body is None and not _expired(exc):
            raise  # a commit after PATCHes sends no body: nothing to adapt
        raise _refusal(exc, sent=sent) from None


def _expired(error: RegistryError) -> bool:
    return error.code == "BLOB_UPLOAD_UNKNOWN" and error.status in (400, 404)


def _refusal(error: RegistryError, *, sent: int) -> Exception:
    """`error` of a step that sent `sent` bytes, as `_Refused` if another try may help."""
    if error.status == 413 or (
        error.status in _REFUSED_BODY_STATUSES and error.code not in _OUR_FAULT_CODES
    ):
        return _Refused(error, sent=sent, expired=False)
    if _expired(error):
        return _Refused(error, sent=sent, expired=True)
    return error


class _Pieces:
    """The blob's download, handed out as consecutive slices of exact lengths (the chunks)."""

    def __init__(self, body: AsyncIterable[bytes]) -> None:
        self._body = aiter(body)
        self._rest = b""

    async def take(self, length: int) -> AsyncIterator[bytes]:
        left = length
        while left > 0:
            piece = self._rest or await anext(self._body, b"")
            if not piece:
                raise RegistryError("blob stream ended early")  # BlobStream says why first
            head, self._rest = piece[:left], piece[left:]
            left -= len(head)
            yield head

    async def drain(self) -> None:
        async for _ in self._body:
            raise RegistryError("blob stream longer than its size")  # idem
