"""The Pod admission webhook as the controller serves it: HTTPS, answers from memory.

`WebhookServer` answers the apiserver's AdmissionReviews at `/mutate-pods` with
`admission.decide` over the in-memory `BackupIndex`; it does no registry and no apiserver
request on that path, so it answers in well under the webhook's 2 s timeout. What an
answer sets off happens afterwards, in the background:

- images it did not know go into `AdmissionCopies`, a bounded queue (a full queue drops
  the image: the next Pod that names it queues it again) copied by the controller's
  `ImageCopies` (single-flight with workload mode's copies, same backoff, same metrics);
  a verified copy goes into the index, and the namespace gets its pull Secret;
- a rewritten Pod's owner (its ReplicaSet, Job, ...) gets one Event whose message names
  no Pod, so that the hundred Pods of a rollout count up one Event (`Kube.record_event`).

The serving certificate is read from `tls.crt`/`tls.key` in `IMAGE_CLONER_WEBHOOK_CERT_DIR`
(a mounted kubernetes.io/tls Secret, e.g. cert-manager's) and read again when the files
change, so a rotated certificate is served without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web

from image_cloner.admission import AdmissionDecision, AdmissionRules, decide
from image_cloner.admission_index import BackupIndex, MayUse, copied_anonymously, public_only
from image_cloner.controller.copies import ImageCopies
from image_cloner.controller.kube import KubeCalls
from image_cloner.controller.kube_errors import KubeApiError
from image_cloner.controller.pull_secrets import PullSecrets
from image_cloner.health import Health
from image_cloner.logs import CONTROLLER_LOGGER, log_event
from image_cloner.mapping import target_for
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.references import Reference
from image_cloner.settings import Settings

__all__ = [
    "PODS_REWRITTEN",
    "WEBHOOK_PATH",
    "AdmissionCopies",
    "WebhookServer",
    "serve_admission",
    "serving_context",
]

WEBHOOK_PATH = "/mutate-pods"
PODS_REWRITTEN = "PodImagesRewritten"
QUEUE_SIZE = 256
"""Images waiting for a copy; more are dropped until there is room (a later Pod re-queues)."""
COPY_WORKERS = 2
CERT_RECHECK = 10.0
"""Seconds between looks at the certificate files (a mounted Secret changes within ~1 min)."""

logger = logging.getLogger(CONTROLLER_LOGGER)


class AdmissionCopies:
    """The images the webhook met and did not know, copied in the background, one at a time each."""

    def __init__(
        self,
        *,
        copies: ImageCopies,
        index: BackupIndex,
        settings: Settings,
        pull_secrets: PullSecrets,
    ) -> None:
        self._copies = copies
        self._index = index
        self._settings = settings
        self._pull_secrets = pull_secrets
        self._queue: asyncio.Queue[tuple[str, Reference]] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self._pending: set[tuple[str, str]] = set()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    def offer(self, namespace: str, source: Reference) -> bool:
        """Queue a copy of `source` for `namespace`; False when it is queued already or full."""
        key = (namespace, source.name)
        if key in self._pending:
            return False
        try:
            self._queue.put_nowait((namespace, source))
        except asyncio.QueueFull:
            return False
        self._pending.add(key)
        return True

    async def run(self) -> None:
        await asyncio.gather(*(self._work() for _ in range(COPY_WORKERS)))

    async def _work(self) -> None:
        while True:
            namespace, source = await self._queue.get()
            try:
                await self._copy(namespace, source)
            finally:
                self._pending.discard((namespace, source.name))

    async def _copy(self, namespace: str, source: Reference) -> None:
        target = target_for(source, self._settings.backup)
        if self._copies.blocked(source, target) is not None:
            return  # failing lately: its backoff decides, and a later Pod queues it again
        try:
            result = await self._copies.copy(source, target)
        except RegistryError as e:
            log_event(
                logger, logging.WARNING, "admission copy failed", image=str(source), error=str(e)
            )
            return
        credentials = self._settings.registry_options.credentials
        self._index.record(source, result.pinned, anonymous=copied_anonymously(source, credentials))
        try:
            await self._pull_secrets.ensure(namespace)
        except KubeApiError as e:
            log_event(
                logger,
                logging.WARNING,
                "cannot write pull secret",
                namespace=namespace,
                error=str(e),
            )
        # Logged once the namespace can pull it too: from now on its Pods are rewritten.
        log_event(
            logger,
            logging.INFO,
            "backup verified for admission",
            image=str(source),
            backup=str(result.pinned),
        )


def serving_context(cert_dir: Path) -> ssl.SSLContext:
    """A server TLS context with the certificate and key found in `cert_dir`."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_dir / "tls.crt", cert_dir / "tls.key")
    return context


class WebhookServer:
    """`/mutate-pods` over HTTPS on `settings.webhook_port` (0: a free port, see `.port`)."""

    def __init__(
        self,
        *,
        settings: Settings,
        index: BackupIndex,
        health: Health,
        copies: AdmissionCopies,
        kube: KubeCalls,
        pull_secrets: PullSecrets,
        may_use: MayUse = public_only,
    ) -> None:
        self._settings = settings
        self._index = index
        self._health = health
        self._copies = copies
        self._kube = kube
        self._pull_secrets = pull_secrets
        self._may_use = may_use
        self._context = serving_context(settings.webhook_cert_dir)
        app = web.Application()
        app.router.add_post(WEBHOOK_PATH, self._review)
        self._runner = web.AppRunner(app, access_log=None)

    @property
    def port(self) -> int:
        addresses = self._runner.addresses
        if not addresses:
            raise RuntimeError("webhook server is not started")
        return int(addresses[0][1])

    async def start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(
            self._runner, None, self._settings.webhook_port, ssl_context=self._context
        )
        await site.start()
        log_event(logger, logging.INFO, "admission webhook serving", port=self.port)

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def reload_certificates(self, *, interval: float = CERT_RECHECK) -> None:
        """Load the certificate again whenever its files change (new connections get it)."""
        files = (
            self._settings.webhook_cert_dir / "tls.crt",
            self._settings.webhook_cert_dir / "tls.key",
        )
        seen = _stamps(files)
        while True:
            await asyncio.sleep(interval)
            now = _stamps(files)
            if now == seen:
                continue
            try:
                self._context.load_cert_chain(*files)
            except (OSError, ssl.SSLError) as e:  # half-written: the next look gets it
                log_event(logger, logging.WARNING, "cannot load webhook certificate", error=str(e))
                continue
            seen = now
            log_event(logger, logging.INFO, "webhook certificate reloaded")

    async def _review(self, request: web.Request) -> web.Response:
        try:
            review = json.loads(await request.read())
            decision = decide(review, self._rules(review))
        except ValueError as e:
            return web.Response(status=400, text=f"{e}\n")
        for source in decision.queued:
            self._copies.offer(decision.namespace, source)
        if decision.rewrites:
            self._report(decision)
        return web.json_response(decision.response)

    def _rules(self, review: Any) -> AdmissionRules:
        settings = self._settings
        request = review.get("request") if isinstance(review, dict) else None
        namespace = str(request.get("namespace") or "") if isinstance(request, dict) else ""
        managed = settings.pull_secret_name
        has_secret = managed is not None and namespace in self._pull_secrets.namespaces
        return AdmissionRules(
            backup=settings.backup,
            index=self._index,
            # A managed Secret not yet written there: the Pod could not pull; keep the source.
            registry_ok=self._health.registry_ok and (managed is None or has_secret),
            ignored_namespaces=settings.ignored_namespaces,
            exclude_images=settings.exclude_images,
            pull_secret=managed if has_secret else None,
            may_use=self._may_use,
        )

    def _report(self, decision: AdmissionDecision) -> None:
        changes = "; ".join(f"{r.source} → {r.backup}" for r in decision.rewrites)
        log_event(
            logger,
            logging.INFO,
            "pod admitted with backup images",
            namespace=decision.namespace,
            images=changes,
        )
        owner = decision.owner
        if owner is None:
            return  # a bare Pod has no uid yet at admission; its annotation is the record
        obj = {
            "apiVersion": owner.get("apiVersion"),
            "kind": owner.get("kind"),
            "metadata": {
                "name": owner.get("name"),
                "namespace": decision.namespace,
                "uid": owner.get("uid"),
            },
        }
        message = f"pods admitted with backup images: {changes}"
        self._kube.record_event(obj, reason=PODS_REWRITTEN, message=message)


def _stamps(files: tuple[Path, ...]) -> tuple[float, ...]:
    stamps: list[float] = []
    for path in files:
        with contextlib.suppress(OSError):
            stamps.append(os.stat(path).st_mtime)
    return tuple(stamps)


async def serve_admission(server: WebhookServer, copies: AdmissionCopies) -> None:
    """Serve until cancelled: the webhook, its certificate reloads and its copy queue."""
    await server.start()
    try:
        await asyncio.gather(server.reload_certificates(), copies.run())
    finally:
        await server.stop()
