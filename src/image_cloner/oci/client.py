"""RegistryClient: the distribution API calls for one repository, in registry terms.

Each method is one step of the OCI distribution spec (HEAD/GET/PUT a manifest, HEAD a
blob, mount it, stream it down, PATCH it up whole or in chunks, commit it); which steps
make an upload is `oci.uploads`' choice. Manifests come back as their exact bytes
with a verified digest; blob bodies are streamed and never held in memory. Reads can go
through mirrors (tried in order, then the registry itself) while names stay unchanged, as
containerd's `hosts.toml` mirrors do.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from urllib.parse import quote

from aiohttp import ClientResponse, hdrs
from yarl import URL

from image_cloner.oci.errors import (
    DigestMismatchError,
    InvalidManifestError,
    RegistryError,
    describe_url,
    mapped_errors,
)
from image_cloner.oci.manifests import (
    ACCEPT,
    MAX_MANIFEST_SIZE,
    OCI_INDEX,
    Descriptor,
    Digester,
    Manifest,
    accept_for,
    check_digest,
    digest_of,
    resolve_media_type,
)
from image_cloner.oci.references import Repository
from image_cloner.oci.transport import Transport

__all__ = ["CONTENT_DIGEST", "BlobStream", "RegistryClient", "UploadSession"]

logger = logging.getLogger(__name__)

CONTENT_DIGEST = "Docker-Content-Digest"
CHUNK_MIN_LENGTH = "OCI-Chunk-Min-Length"
CHUNK_SIZE = 1024 * 1024


def _positive(value: str | None) -> int | None:
    return int(value) if value is not None and value.isdigit() and int(value) > 0 else None


class BlobStream:
    """A blob download as an upload body, hashed on the way.

    The last chunk is held back until the digest is checked, so a registry never receives
    the complete body of a blob that does not match. Its errors are `RegistryError`s; the
    upload's error boundary (`mapped_errors`) gives them back from aiohttp's send error.
    """

    def __init__(
        self,
        resp: ClientResponse,
        descriptor: Descriptor,
        *,
        source: str,
        on_progress: Callable[[int], None] | None = None,
    ) -> None:
        self.descriptor = descriptor
        self._resp = resp
        self._what = f"blob {descriptor.digest} from {source}"
        self._on_progress = on_progress

    async def __aiter__(self) -> AsyncIterator[bytes]:
        digester = Digester(self.descriptor.digest, size=self.descriptor.size)
        pending = b""
        with mapped_errors(hdrs.METH_GET, self._resp.url):
            async for chunk in self._resp.content.iter_chunked(CHUNK_SIZE):
                digester.update(chunk)
                if digester.size > self.descriptor.size:
                    # Fail before the held-back chunk goes out: the target may already
                    # hold `size` bytes, a complete body, once it is sent.
                    raise DigestMismatchError(
                        f"{self._what}: more than the expected {self.descriptor.size} bytes"
                    )
                if pending:
                    yield self._sent(pending)
                pending = chunk
        digester.verify(self._what)
        if pending:
            yield self._sent(pending)

    def _sent(self, chunk: bytes) -> bytes:
        if self._on_progress is not None:
            self._on_progress(len(chunk))
        return chunk


@dataclass(frozen=True)
class UploadSession:
    """An open blob upload on the target: where to send the bytes."""

    location: URL
    min_chunk: int | None = None
    """The registry's `OCI-Chunk-Min-Length`: smallest chunk it takes, if it said."""


class RegistryClient:
    """API calls for one repository; cheap to create, all state lives in the transport."""

    def __init__(
        self, transport: Transport, repository: Repository, *, mirrors: tuple[str, ...] = ()
    ) -> None:
        self.transport = transport
        self.repository = repository
        self.authority = repository.registry.api_host
        self.mirrors = mirrors

    def __repr__(self) -> str:
        return f"RegistryClient({self.repository.name!r})"

    def _url(self, tail: str) -> URL:
        return self.transport.url(self.authority, f"/v2/{self.repository.path}/{tail}")

    def _read_urls(self, tail: str) -> list[tuple[URL, bool]]:
        """Where to read from, in order: (url, is_mirror).

        A mirror gets one try without retries: if it is down or lacks the content, the
        next endpoint is faster than backing off; the registry itself gets full retries.
        """
        path = f"/v2/{self.repository.path}/{tail}"
        mirrors = [(URL(m.rstrip("/") + path, encoded=True), True) for m in self.mirrors]
        return [*mirrors, (self._url(tail), False)]

    # --- manifests -----------------------------------------------------------------------

    async def get_manifest(
        self, identifier: str, *, expected: str | None = None, media_type: str | None = None
    ) -> Manifest:
        """The manifest as served, its digest verified against `expected` (if a digest)
        and against the registry's `Docker-Content-Digest` (if sent). `media_type` is what
        the parent index calls it, accepted too when it is a type we do not list."""
        accept = accept_for(media_type)
        for url, mirror in self._read_urls(f"manifests/{identifier}"):
            try:
                return await self._get_manifest(url, expected, retry=not mirror, accept=accept)
            except RegistryError as exc:
                if not mirror:
                    raise
                logger.info("mirror %s failed, trying the next endpoint: %s", url.host, exc)
        raise AssertionError("unreachable: the registry itself is the last endpoint")

    async def _get_manifest(
        self, url: URL, expected: str | None, *, retry: bool = True, accept: str = ACCEPT
    ) -> Manifest:
        resp = await self.transport.request(
            hdrs.METH_GET,
            url,
            headers={hdrs.ACCEPT: accept},
            max_body=MAX_MANIFEST_SIZE,
            retry=retry,
        )
        what = f"manifest {describe_url(url)}"
        try:
            media_type = resolve_media_type(resp.headers.get(hdrs.CONTENT_TYPE), resp.body)
        except InvalidManifestError as exc:
            raise InvalidManifestError(f"{what}: {exc}") from None
        algorithm = expected.split(":", 1)[0] if expected else "sha256"
        digest = digest_of(resp.body, algorithm=algorithm)
        if expected is not None and digest != expected:
            raise DigestMismatchError(f"{what}: content has digest {digest}, expected {expected}")
        claimed = resp.headers.get(CONTENT_DIGEST)
        if claimed and claimed.startswith(f"{algorithm}:") and claimed != digest:
            raise DigestMismatchError(
                f"{what}: content has digest {digest}, registry says {claimed}"
            )
        return Manifest(raw=resp.body, media_type=media_type, digest=digest)

    async def find_manifest(self, identifier: str) -> Manifest | None:
        """`get_manifest`, or None where an endpoint answers 404 (a mirror included: it is
        trusted to mirror). For lookups of what may not exist: referrers and their tags."""
        for url, mirror in self._read_urls(f"manifests/{identifier}"):
            try:
                return await self._get_manifest(url, None, retry=not mirror)
            except RegistryError as exc:
                if exc.status == 404:
                    return None
                if not mirror:
                    raise
                logger.info("mirror %s failed, trying the next endpoint: %s", url.host, exc)
        raise AssertionError("unreachable: the registry itself is the last endpoint")

    async def referrers(self, digest: str) -> bytes | None:
        """The referrers API's index of the manifests whose `subject` is `digest`, or None
        where the registry has no such API (404, as distribution 2.8 and 3 answer)."""
        for url, mirror in self._read_urls(f"referrers/{digest}"):
            try:
                resp = await self.transport.request(
                    hdrs.METH_GET,
                    url,
                    ok=(200, 404),
                    headers={hdrs.ACCEPT: OCI_INDEX},
                    max_body=MAX_MANIFEST_SIZE,
                    retry=not mirror,
                )
                return resp.body if resp.status == 200 else None
            except RegistryError as exc:
                if not mirror:
                    raise
                logger.info("mirror %s failed, trying the next endpoint: %s", url.host, exc)
        raise AssertionError("unreachable: the registry itself is the last endpoint")

    async def manifest_digest(self, identifier: str) -> str | None:
        """Digest of the manifest at `identifier` on this registry, or None if there is none.

        One HEAD request (through the mirrors first, like reads: a HEAD does not count
        against Docker Hub's pull limit, a GET does); only when the answer has no
        `Docker-Content-Digest` do we GET the manifest and hash it.
        """
        for url, mirror in self._read_urls(f"manifests/{identifier}"):
            try:
                found = await self._manifest_digest(url, retry=not mirror)
            except RegistryError as exc:
                if not mirror:
                    raise
                logger.info("mirror %s failed, trying the next endpoint: %s", url.host, exc)
                continue
            if found is not None or not mirror:
                return found
        raise AssertionError("unreachable: the registry itself is the last endpoint")

    async def _manifest_digest(self, url: URL, *, retry: bool) -> str | None:
        resp = await self.transport.request(
            hdrs.METH_HEAD, url, ok=(200, 404), headers={hdrs.ACCEPT: ACCEPT}, retry=retry
        )
        if resp.status == 404:
            return None
        claimed = resp.headers.get(CONTENT_DIGEST)
        if claimed:
            return check_digest(claimed, what=f"{CONTENT_DIGEST} header")
        return (await self._get_manifest(url, None, retry=retry)).digest

    async def put_manifest(self, identifier: str, manifest: Manifest) -> None:
        """PUT the exact bytes with their original media type (so the digest is kept)."""
        url = self._url(f"manifests/{identifier}")
        resp = await self.transport.request(
            hdrs.METH_PUT,
            url,
            ok=(200, 201, 202),
            headers={hdrs.CONTENT_TYPE: manifest.media_type},
            data=manifest.raw,
        )
        stored = resp.headers.get(CONTENT_DIGEST)
        algorithm = manifest.digest.split(":", 1)[0]
        if stored and stored.startswith(f"{algorithm}:") and stored != manifest.digest:
            raise DigestMismatchError(
                f"PUT {describe_url(url)}: registry stored digest {stored}, "
                f"expected {manifest.digest}"
            )

    # --- blobs ---------------------------------------------------------------------------

    async def blob_exists(self, digest: str) -> bool:
        resp = await self.transport.request(
            hdrs.METH_HEAD, self._url(f"blobs/{digest}"), ok=(200, 404)
        )
        return resp.status == 200

    @asynccontextmanager
    async def open_blob(
        self, descriptor: Descriptor, *, on_progress: Callable[[int], None] | None = None
    ) -> AsyncIterator[BlobStream]:
        """A streaming GET of the blob (mirrors first; redirects to storage are followed),
        as an iterable of chunks whose digest and size are verified on the way."""
        async with AsyncExitStack() as stack:
            for url, mirror in self._read_urls(f"blobs/{descriptor.digest}"):
                try:
                    resp = await stack.enter_async_context(
                        self.transport.stream(hdrs.METH_GET, url, headers={}, retry=not mirror)
                    )
                    break
                except RegistryError as exc:
                    if not mirror:
                        raise
                    logger.info("mirror %s failed, trying the next endpoint: %s", url.host, exc)
            if resp.content_length is not None and resp.content_length != descriptor.size:
                raise DigestMismatchError(
                    f"blob {descriptor.digest}: registry sends {resp.content_length} bytes, "
                    f"expected {descriptor.size}"
                )
            yield BlobStream(resp, descriptor, source=self.repository.name, on_progress=on_progress)

    async def start_upload(
        self, *, mount: tuple[str, Repository] | None = None
    ) -> UploadSession | None:
        """Open an upload session; with `mount=(digest, source)` first ask the registry to
        mount the blob from another of its repositories. None means it was mounted."""
        url = self._url("blobs/uploads/")
        if mount is not None:
            digest, source = mount
            url = url.with_query({"mount": digest, "from": source.path})
        resp = await self.transport.request(hdrs.METH_POST, url, ok=(201, 202))
        if resp.status == 201:
            return None
        location = self._location(resp.url, resp.headers.get(hdrs.LOCATION))
        return UploadSession(location, _positive(resp.headers.get(CHUNK_MIN_LENGTH)))

    async def patch_blob(
        self, session: UploadSession, body: AsyncIterable[bytes], *, length: int, offset: int | None
    ) -> UploadSession:
        """Send `length` bytes of the blob in one PATCH; the session to continue in.

        With `offset` the PATCH is a chunk (`Content-Range: offset-end`); without, the whole
        blob streamed in one request. 202 is the spec's answer, 201 ECR's."""
        headers: dict[str, str] = {
            hdrs.CONTENT_TYPE: "application/octet-stream",
            hdrs.CONTENT_LENGTH: str(length),
        }
        if offset is not None:
            headers[hdrs.CONTENT_RANGE] = f"{offset}-{offset + length - 1}"
        resp = await self.transport.send_stream(
            hdrs.METH_PATCH, session.location, body, ok=(201, 202, 204), headers=headers
        )
        location = resp.headers.get(hdrs.LOCATION) or str(session.location)
        return UploadSession(self._location(resp.url, location), session.min_chunk)

    async def commit_blob(
        self,
        session: UploadSession,
        descriptor: Descriptor,
        body: AsyncIterable[bytes] | None = None,
    ) -> None:
        """`PUT ?digest=`: finish the upload, with the whole blob as `body` (a monolithic
        upload, sent once) or with no body after PATCHes (retried like any request)."""
        location = session.location
        separator = "&" if location.raw_query_string else "?"
        digest = quote(descriptor.digest, safe=":")
        commit = URL(f"{location}{separator}digest={digest}", encoded=True)
        if body is None:
            resp = await self.transport.request(
                hdrs.METH_PUT, commit, ok=(201, 204), headers={hdrs.CONTENT_LENGTH: "0"}
            )
        else:
            resp = await self.transport.send_stream(
                hdrs.METH_PUT,
                commit,
                body,
                ok=(201, 204),
                headers={
                    hdrs.CONTENT_TYPE: "application/octet-stream",
                    hdrs.CONTENT_LENGTH: str(descriptor.size),
                },
            )
        stored = resp.headers.get(CONTENT_DIGEST)
        algorithm = descriptor.digest.split(":", 1)[0]
        if stored and stored.startswith(f"{algorithm}:") and stored != descriptor.digest:
            raise DigestMismatchError(f"blob {descriptor.digest}: registry stored digest {stored}")

    async def cancel_upload(self, session: UploadSession) -> None:
        """Best effort: DELETE an upload session we will not finish."""
        try:
            await self.transport.request(
                hdrs.METH_DELETE, session.location, ok=(202, 204, 404), retry=False
            )
        except RegistryError as exc:
            logger.debug("could not cancel upload session: %s", exc)

    async def check_push_access(self) -> None:
        """Open an upload session and cancel it: proves reachability and push rights."""
        session = await self.start_upload()
        if session is not None:
            await self.cancel_upload(session)

    def _location(self, base: URL, location: str | None) -> URL:
        if not location:
            raise RegistryError(f"{self.repository.name}: upload response without a Location")
        return base.join(URL(location, encoded=True))
