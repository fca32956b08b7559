"""`image-cloner run`: kopf's watch streams, our work queue and the metrics server, one loop.

Start-up order is the promise made to users: configuration was checked by the caller;
the backup registry is checked (reachable, credentials accepted) and the result logged
before kopf starts watching, so before any workload is touched. A failed check does not
stop the controller: it keeps re-checking in the background and reports not-ready, and
workloads whose images cannot be copied get a Warning Event and are retried.

Logins given as files are re-read every few seconds (`credentials.watch_logins`): a
rotated push login is used by the copy engine from its next request on, the log redactor
learns the new passwords, and the workloads whose namespaces hold a pull Secret are
queued again, so that their Secret gets a rotated pull login (`pull_secrets`).

With leader election on, every replica watches (so `/readyz` means the same everywhere)
and feeds its queue, but only the Lease holder runs the queue's workers; `leader` stops
them the moment the Lease is in doubt.

Shutdown (SIGTERM, SIGINT): stop taking work, give in-flight reconciles a grace period
(interrupting a copy is safe: a tag is pushed last; a patch is atomic), release the Lease
so that another replica takes over at once, then stop kopf.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any

import kopf

from image_cloner.admission_index import BackupIndex
from image_cloner.backoff import Backoff
from image_cloner.controller.admission import AdmissionCopies, WebhookServer, serve_admission
from image_cloner.controller.census import WorkloadCensus
from image_cloner.controller.handlers import build_registry, operator_settings
from image_cloner.controller.kube import Kube
from image_cloner.controller.leader import LeaderElector, default_identity
from image_cloner.controller.pull_secrets import PullSecrets, watched_logins
from image_cloner.controller.queue import WorkQueue
from image_cloner.controller.reconcile import Reconciler
from image_cloner.controller.server import MetricsServer
from image_cloner.controller.watch import WatchTracker
from image_cloner.controller.wiring import live_options, plugin_login, source_access
from image_cloner.credential_plugins import PluginLogin, PluginProvider
from image_cloner.credentials import LiveLogin, WatchedLogin, watch_logins
from image_cloner.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from image_cloner.health import Health
from image_cloner.logs import (
    CONTROLLER_LOGGER,
    LogFormat,
    LogLevel,
    Redactor,
    configure_logging,
    log_event,
)
from image_cloner.metrics import Metrics, registry_labels
from image_cloner.oci.copying import Copier
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.references import Repository
from image_cloner.settings import ConfigError, Settings
from image_cloner.workloads import WorkloadKey

__all__ = ["live_options", "run", "source_access"]

WORKERS = 32
"""Workloads reconciled at once. A pass mostly waits for the apiserver (three requests for
a rewrite: read, pods, patch) and never for a copy (`reconcile.COPY_PATIENCE`), so more
workers hide more latency; blob transfers are limited separately by the copier. On the
1,000-Deployment bench, 16 → 32 took all rewritten from 25 s to 22 s, peak RSS 77 → 83 MiB;
64 reached 100 MiB (each worker holds the body it works on)."""

SHUTDOWN_GRACE = 20.0
"""Seconds in-flight reconciles get to finish on shutdown (a pod gets 30 by default)."""

CHECK_REPOSITORY = "image-cloner-check"
"""Repository (under the backup prefix) where the start-up check opens and cancels an upload."""

RECHECK_BACKOFF = Backoff(base=5.0, cap=300.0)
"""Waits between checks of a backup registry that failed its check."""

ADMISSION_RECHECK = 5.0
"""Seconds between checks of a healthy backup registry while the webhook serves: it stops
rewriting Pods to a registry that went down within about this long."""

logger = logging.getLogger(CONTROLLER_LOGGER)


def run(
    settings: Settings,
    *,
    kubeconfig: str | None,
    log_format: LogFormat | None = None,
    log_level: LogLevel | None = None,
) -> int:
    """Run the controller until SIGTERM/SIGINT; returns the process exit status."""
    secrets = [c.password for c in settings.registry_options.credentials.values()]
    if settings.pull_login is not None:
        secrets.append(settings.pull_login.first.password)
    redactor = configure_logging(
        fmt=log_format or settings.log_format,
        level=(log_level or settings.log_level).upper(),
        secrets=secrets,
    )
    # Our decision lines at DEBUG are the story; kopf's and aiohttp's are noise there.
    for noisy in ("kopf", "aiohttp", "asyncio"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    # kopf reports every handler call ("Handler 'deployments' succeeded"); keep its problems.
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    if kubeconfig is not None and not Path(kubeconfig).is_file():
        # Checked before the event loop starts, as the seed's flag checks are.
        log_event(logger, logging.ERROR, "no such kubeconfig file", path=kubeconfig)
        return EXIT_BAD_INPUT
    try:
        return asyncio.run(_serve(settings, kubeconfig=kubeconfig, redactor=redactor))
    except KeyboardInterrupt:
        return EXIT_OK


async def _serve(settings: Settings, *, kubeconfig: str | None, redactor: Redactor) -> int:
    try:
        kube = await Kube.connect(kubeconfig=kubeconfig)
    except ConfigError as e:
        log_event(logger, logging.ERROR, "cannot load Kubernetes configuration", error=str(e))
        return EXIT_BAD_INPUT
    health = Health()
    metrics = Metrics(health=health)
    queue: WorkQueue[WorkloadKey] = WorkQueue(name="workloads")
    metrics.track_queue(lambda: queue.depth)
    census = WorkloadCensus(settings)
    metrics.track_workloads(census.counts)
    push, pull = watched_logins(settings)
    pull_secrets = PullSecrets.for_settings(kube, settings, push=push, pull=pull)
    pull_secrets.report_login(metrics)
    plugins = PluginProvider(settings.credential_plugins) if settings.credential_plugins else None
    from_plugin = await plugin_login(settings, plugins, redactor)
    options = live_options(settings, push or from_plugin)
    metrics.observe_registries(registry_labels(options, backup_host=settings.backup.registry.host))
    try:
        async with (
            Copier(replace(options, request_listener=metrics.registry_request)) as copier,
            MetricsServer(metrics=metrics, health=health, port=settings.metrics_port),
        ):
            index = BackupIndex()
            tracker = WatchTracker(
                queue=queue, health=health, kube=kube, settings=settings, census=census
            )
            reconciler = Reconciler(
                kube=kube,
                copier=copier,
                settings=settings,
                metrics=metrics,
                pull_secrets=pull_secrets,
                access=source_access(settings, kube, copier, plugins),
                index=index,
                census=census,
                delivered=tracker.delivered,
            )
            webhook = _webhook(
                settings,
                kube=kube,
                health=health,
                reconciler=reconciler,
                index=index,
                pull_secrets=pull_secrets,
            )
            operation = _Operation(
                settings=settings,
                kube=kube,
                copier=copier,
                queue=queue,
                health=health,
                elector=_elector(settings, kube, metrics),
                webhook=webhook,
            )
            rotation = _Rotation(
                logins=[login for login in (push, pull) if login is not None],
                from_plugin=from_plugin,
                redactor=redactor,
                pull_secrets=pull_secrets,
                tracker=tracker,
            )
            return await operation.run(reconciler, tracker, rotation)
    finally:
        await kube.close()


def _webhook(
    settings: Settings,
    *,
    kube: Kube,
    health: Health,
    reconciler: Reconciler,
    index: BackupIndex,
    pull_secrets: PullSecrets,
) -> Coroutine[Any, Any, None] | None:
    """The admission webhook and its copy queue, when the mode asks for them."""
    if not settings.serves_webhook:
        return None
    copies = AdmissionCopies(
        copies=reconciler.copies, index=index, settings=settings, pull_secrets=pull_secrets
    )
    server = WebhookServer(
        settings=settings,
        index=index,
        health=health,
        copies=copies,
        kube=kube,
        pull_secrets=pull_secrets,
    )
    return serve_admission(server, copies)


class _Rotation:
    """What a changed login sets off: masked in logs, and pull Secrets brought up to date."""

    def __init__(
        self,
        *,
        logins: list[WatchedLogin],
        from_plugin: PluginLogin | None,
        redactor: Redactor,
        pull_secrets: PullSecrets,
        tracker: WatchTracker,
    ) -> None:
        self._logins = logins
        self._from_plugin = from_plugin
        self._redactor = redactor
        self._pull_secrets = pull_secrets
        self._tracker = tracker

    async def run(self) -> None:
        renewals = [watch_logins(self._logins, on_change=self._changed)]
        if self._from_plugin is not None:
            renewals.append(self._from_plugin.keep_renewed(self._changed))
        await asyncio.gather(*renewals)

    async def _changed(self, login: LiveLogin) -> None:
        if login.current is not None:
            self._redactor.add(login.current.password)
        if not self._pull_secrets.follows(login):
            return
        namespaces = self._pull_secrets.namespaces
        # Every workload there is read again; those that use the Secret rewrite it.
        queued = self._tracker.requeue(lambda key: key.namespace in namespaces)
        log_event(
            logger,
            logging.INFO,
            "workloads queued to bring pull secrets up to date",
            login=login.what,
            namespaces=len(namespaces),
            workloads=queued,
        )


class _Operation:
    """Our background tasks and kopf's, started in order and stopped in order."""

    def __init__(
        self,
        *,
        settings: Settings,
        kube: Kube,
        copier: Copier,
        queue: WorkQueue[WorkloadKey],
        health: Health,
        elector: LeaderElector | None,
        webhook: Coroutine[Any, Any, None] | None = None,
    ) -> None:
        self._settings = settings
        self._webhook = webhook
        self._kube = kube
        self._copier = copier
        self._queue = queue
        self._health = health
        self._elector = elector
        self._stopping = asyncio.Event()
        self._checked = asyncio.Event()
        self._kopf_stop = asyncio.Event()
        self._kopf_ready = asyncio.Event()
        self._background: list[asyncio.Task[Any]] = []

    async def run(self, reconciler: Reconciler, tracker: WatchTracker, rotation: _Rotation) -> int:
        """Work until a signal or kopf's end; returns the exit status."""
        await self._start_ours(reconciler, tracker, rotation)
        operator = await self._start_kopf(tracker)
        self._log_start()
        stop_waiter = asyncio.create_task(self._stopping.wait(), name="stop-waiter")
        self._background.append(stop_waiter)
        await asyncio.wait([operator, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
        return await self._stop(operator)

    async def _start_ours(
        self, reconciler: Reconciler, tracker: WatchTracker, rotation: _Rotation
    ) -> None:
        check = _check_registry(self._copier, self._settings, self._health, self._checked)
        self._background = [
            asyncio.create_task(rotation.run(), name="credentials"),
            asyncio.create_task(check, name="check"),
            asyncio.create_task(self._work(reconciler), name="queue"),
            asyncio.create_task(reconciler.referrers.keep_due(self._queue.add), name="referrers"),
            asyncio.create_task(_after(self._kopf_ready, tracker.resync_forever()), name="resync"),
        ]
        if self._webhook is not None:
            # Every replica answers the webhook, leader or not: the Service spreads reviews.
            self._background.append(asyncio.create_task(self._webhook, name="webhook"))
        await asyncio.sleep(0)  # let the queue start its workers

    async def _work(self, reconciler: Reconciler) -> None:
        """The queue's workers: always, or only while this replica holds the Lease."""

        async def work() -> None:
            try:
                await self._queue.run(reconciler, workers=WORKERS)
            finally:
                # Copies run for the queue's workloads: only while this replica works.
                await reconciler.copies.stop()

        await (work() if self._elector is None else self._elector.run(work))

    async def _start_kopf(self, tracker: WatchTracker) -> asyncio.Task[None]:
        # kopf stops what it started and treats every other task created after this point as
        # its own; ours, and the tasks they spawn, stop through the queue's shutdown instead.
        ours = asyncio.all_tasks()
        namespace = self._settings.namespace
        kopf_tasks = await kopf.spawn_tasks(
            registry=build_registry(
                kube=self._kube, tracker=tracker, on_startup=self._checked.wait
            ),
            settings=operator_settings(),
            standalone=True,
            clusterwide=namespace is None,
            namespaces=[namespace] if namespace else [],
            stop_flag=self._kopf_stop,
            ready_flag=self._kopf_ready,
        )
        # spawn_tasks has just installed kopf's handlers; ours replace them, so that in-flight
        # work gets its grace period before kopf goes away.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stopping.set)
        return asyncio.create_task(kopf.run_tasks(kopf_tasks, ignored=ours), name="kopf")

    def _log_start(self) -> None:
        settings = self._settings
        log_event(
            logger,
            logging.INFO,
            "starting controller",
            backup=str(settings.backup),
            namespace=settings.namespace or "(all)",
            ignored=sorted(settings.ignored_namespaces),
            workers=WORKERS,
            metrics_port=settings.metrics_port,
            leader_election=self._elector.identity if self._elector else "off",
            mode=settings.mode,
        )

    async def _stop(self, operator: asyncio.Task[None]) -> int:
        log_event(logger, logging.INFO, "stopping controller")
        await self._queue.shutdown(grace=SHUTDOWN_GRACE)
        self._kopf_stop.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._elector is not None:
            await self._elector.release()  # the work has stopped: hand over now
        try:
            await operator
        except Exception as e:
            log_event(logger, logging.ERROR, "operator failed", error=f"{type(e).__name__}: {e}")
            return EXIT_FAILED
        log_event(logger, logging.INFO, "controller stopped")
        return EXIT_OK


def _elector(settings: Settings, kube: Kube, metrics: Metrics) -> LeaderElector | None:
    """The Lease candidate, or None when leader election is off (then we always work)."""
    if settings.leader_election is None:
        metrics.set_leader(True)
        return None
    metrics.set_leader(False)
    return LeaderElector(
        kube, settings.leader_election, identity=default_identity(), on_change=metrics.set_leader
    )


async def _after(flag: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    try:
        await flag.wait()
    except asyncio.CancelledError:
        work.close()  # never started: close it so it is not reported as never awaited
        raise
    await work


async def _check_registry(
    copier: Copier, settings: Settings, health: Health, checked: asyncio.Event
) -> None:
    """Check push access to the backup location until it works; log every outcome."""
    backup = settings.backup
    path = f"{backup.prefix}/{CHECK_REPOSITORY}" if backup.prefix else CHECK_REPOSITORY
    repository = Repository(backup.registry, path)
    failures = 0
    while True:
        try:
            await copier.check_push_access(repository)
        except RegistryError as e:
            failures += 1
            delay = RECHECK_BACKOFF.delay(failures)
            health.set_registry_ok(False)
            log_event(
                logger,
                logging.ERROR,
                "backup registry check failed",
                registry=str(backup),
                error=str(e),
                retry_in=delay,
            )
        else:
            if not health.registry_ok:
                log_event(
                    logger,
                    logging.INFO,
                    "backup registry check passed: reachable, push allowed",
                    registry=str(backup),
                )
            health.set_registry_ok(True)
            failures = 0
            checked.set()
            if not settings.serves_webhook:
                return
            # The webhook must stop pointing Pods at a registry that went down since.
            delay = ADMISSION_RECHECK
        checked.set()
        await asyncio.sleep(delay)
