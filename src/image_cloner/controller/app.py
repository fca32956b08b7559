"""`image-cloner run`: kopf's watch streams, our work queue and the metrics server, one loop.

Start-up order is the promise made to users: configuration was checked by the caller;
the backup registry is checked (reachable, credentials accepted) and the result logged
before kopf starts watching, so before any workload is touched. A failed check does not
stop the controller: it keeps re-checking in the background and reports not-ready, and
workloads whose images cannot be copied get a Warning Event and are retried.

Shutdown (SIGTERM, SIGINT): stop taking work, give in-flight reconciles a grace period
(interrupting a copy is safe: a tag is pushed last; a patch is atomic), then stop kopf.
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

from image_cloner.backoff import Backoff
from image_cloner.controller.handlers import build_registry, operator_settings
from image_cloner.controller.kube import Kube
from image_cloner.controller.queue import WorkQueue
from image_cloner.controller.reconcile import Reconciler
from image_cloner.controller.server import MetricsServer
from image_cloner.controller.watch import WatchTracker
from image_cloner.exits import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from image_cloner.health import Health
from image_cloner.logs import CONTROLLER_LOGGER, LogFormat, LogLevel, configure_logging, log_event
from image_cloner.metrics import Metrics, registry_labels
from image_cloner.oci.copying import Copier
from image_cloner.oci.errors import RegistryError
from image_cloner.oci.references import Repository
from image_cloner.settings import Settings
from image_cloner.workloads import WorkloadKey

__all__ = ["run"]

WORKERS = 4
"""Workloads reconciled at once; blob transfers are limited separately by the copier."""

SHUTDOWN_GRACE = 20.0
"""Seconds in-flight reconciles get to finish on shutdown (a pod gets 30 by default)."""

CHECK_REPOSITORY = "image-cloner-check"
"""Repository (under the backup prefix) where the start-up check opens and cancels an upload."""

RECHECK_BACKOFF = Backoff(base=5.0, cap=300.0)
"""Waits between checks of a backup registry that failed its check."""

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
    configure_logging(
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
        # The client would only complain of a missing "current-context".
        log_event(logger, logging.ERROR, "no such kubeconfig file", path=kubeconfig)
        return EXIT_BAD_INPUT
    try:
        return asyncio.run(_serve(settings, kubeconfig=kubeconfig))
    except KeyboardInterrupt:
        return EXIT_OK


async def _serve(settings: Settings, *, kubeconfig: str | None) -> int:
    try:
        kube = await Kube.connect(kubeconfig=kubeconfig)
    except Exception as e:  # the client raises several types for unreadable configs
        log_event(logger, logging.ERROR, "cannot load Kubernetes configuration", error=str(e))
        return EXIT_BAD_INPUT
    health = Health()
    metrics = Metrics(health=health)
    queue: WorkQueue[WorkloadKey] = WorkQueue(name="workloads")
    metrics.track_queue(lambda: queue.depth)
    options = settings.registry_options
    metrics.observe_registries(registry_labels(options, backup_host=settings.backup.registry.host))
    try:
        async with (
            Copier(replace(options, request_listener=metrics.registry_request)) as copier,
            MetricsServer(metrics=metrics, health=health, port=settings.metrics_port),
        ):
            reconciler = Reconciler(kube=kube, copier=copier, settings=settings, metrics=metrics)
            tracker = WatchTracker(queue=queue, health=health, kube=kube, settings=settings)
            operation = _Operation(
                settings=settings, kube=kube, copier=copier, queue=queue, health=health
            )
            return await operation.run(reconciler, tracker)
    finally:
        await kube.close()


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
    ) -> None:
        self._settings = settings
        self._kube = kube
        self._copier = copier
        self._queue = queue
        self._health = health
        self._stopping = asyncio.Event()
        self._checked = asyncio.Event()
        self._kopf_stop = asyncio.Event()
        self._kopf_ready = asyncio.Event()
        self._background: list[asyncio.Task[Any]] = []

    async def run(self, reconciler: Reconciler, tracker: WatchTracker) -> int:
        """Work until a signal or kopf's end; returns the exit status."""
        await self._start_ours(reconciler, tracker)
        operator = await self._start_kopf(tracker)
        self._log_start()
        stop_waiter = asyncio.create_task(self._stopping.wait(), name="stop-waiter")
        self._background.append(stop_waiter)
        await asyncio.wait([operator, stop_waiter], return_when=asyncio.FIRST_COMPLETED)
        return await self._stop(operator)

    async def _start_ours(self, reconciler: Reconciler, tracker: WatchTracker) -> None:
        check = _check_registry(self._copier, self._settings, self._health, self._checked)
        self._background = [
            asyncio.create_task(check, name="check"),
            asyncio.create_task(self._queue.run(reconciler, workers=WORKERS), name="queue"),
            asyncio.create_task(_after(self._kopf_ready, tracker.resync_forever()), name="resync"),
        ]
        await asyncio.sleep(0)  # let the queue start its workers

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
        )

    async def _stop(self, operator: asyncio.Task[None]) -> int:
        log_event(logger, logging.INFO, "stopping controller")
        await self._queue.shutdown(grace=SHUTDOWN_GRACE)
        self._kopf_stop.set()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        try:
            await operator
        except Exception as e:
            log_event(logger, logging.ERROR, "operator failed", error=f"{type(e).__name__}: {e}")
            return EXIT_FAILED
        log_event(logger, logging.INFO, "controller stopped")
        return EXIT_OK


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
            health.set_registry_ok(True)
            log_event(
                logger,
                logging.INFO,
                "backup registry check passed: reachable, push allowed",
                registry=str(backup),
            )
            checked.set()
            return
        checked.set()
        await asyncio.sleep(delay)
