"""Readiness of the kinds beyond Deployment and DaemonSet, table by table.

StatefulSets as kubectl's StatefulSetStatusViewer judges them (its messages, in our words);
OnDelete StatefulSets, CronJobs, Jobs and Pods by the rules of docs/controller.md. The
status shapes are the ones the API server serves: zero counters omitted, `rollingUpdate`
defaulted to partition 0 for RollingUpdate.
"""

from __future__ import annotations

from typing import Any

import pytest

from image_cloner.workloads import is_ready

# --- StatefulSet ---------------------------------------------------------------------


def statefulset(
    *,
    generation: int = 2,
    replicas: int | None = 3,
    strategy: dict[str, Any] | None = None,
    status: dict[str, Any],
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "updateStrategy": strategy
        if strategy is not None
        else {"type": "RollingUpdate", "rollingUpdate": {"partition": 0}},
        "template": {"spec": {"containers": [{"name": "db", "image": "postgres:16"}]}},
    }
    if replicas is not None:
        spec["replicas"] = replicas
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": "db", "namespace": "data", "generation": generation},
        "spec": spec,
        "status": status,
    }


DONE = {
    "observedGeneration": 2,
    "replicas": 3,
    "readyReplicas": 3,
    "updatedReplicas": 3,
    "currentReplicas": 3,
    "currentRevision": "db-7c9",
    "updateRevision": "db-7c9",
}
ROLLING_NO_DEFAULTS = {"type": "RollingUpdate"}
"""rollingUpdate unset: only a hand-made object; kubectl then compares the revisions."""


@pytest.mark.parametrize(
    ("strategy", "replicas", "status", "ready", "reason"),
    [
        (None, 3, DONE, True, "rollout complete"),
        # Not observed: newer generation, or observedGeneration still 0 (kubectl checks both).
        (
            None,
            3,
            {**DONE, "observedGeneration": 1},
            False,
            "waiting for rollout: spec update to be observed",
        ),
        (None, 3, {}, False, "waiting for rollout: spec update to be observed"),
        (
            None,
            3,
            {**DONE, "readyReplicas": 1},
            False,
            "waiting for rollout: 2 pods to be ready",
        ),
        # Partition 0 (the API server's default): every pod must run the update revision.
        (
            None,
            3,
            {**DONE, "updatedReplicas": 2, "currentRevision": "db-5a1"},
            False,
            "waiting for rollout: partitioned roll out to finish: 2 out of 3 new pods have"
            " been updated",
        ),
        # kubectl is done once the counts are, before the controller moves currentRevision.
        (None, 3, {**DONE, "currentRevision": "db-5a1"}, True, "rollout complete"),
        # Partition 2 of 3 replicas: only ordinal 2 is updated; the others keep the old one.
        (
            {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
            3,
            {**DONE, "updatedReplicas": 1, "currentRevision": "db-5a1"},
            True,
            "rollout complete",
        ),
        (
            {"type": "RollingUpdate", "rollingUpdate": {"partition": 1}},
            3,
            {**DONE, "updatedReplicas": 1, "currentRevision": "db-5a1"},
            False,
            "waiting for rollout: partitioned roll out to finish: 1 out of 2 new pods have"
            " been updated",
        ),
        # A partition above the replica count updates nothing and waits for nothing.
        (
            {"type": "RollingUpdate", "rollingUpdate": {"partition": 5}},
            3,
            {**DONE, "updatedReplicas": 0},
            True,
            "rollout complete",
        ),
        # No rollingUpdate block: kubectl compares updateRevision with currentRevision.
        (
            ROLLING_NO_DEFAULTS,
            3,
            {**DONE, "updatedReplicas": 3, "currentRevision": "db-5a1"},
            False,
            "waiting for rollout: statefulset rolling update to complete 3 pods at revision db-7c9",
        ),
        (ROLLING_NO_DEFAULTS, 3, DONE, True, "rollout complete"),
        # Scaled to zero: nothing to wait for.
        (None, 0, {"observedGeneration": 2}, True, "rollout complete"),
        # OnDelete (kubectl refuses to judge): every pod ready and at the update revision;
        # currentRevision never moves for OnDelete, so it is not compared.
        (
            {"type": "OnDelete"},
            3,
            {**DONE, "updatedReplicas": 1, "currentRevision": "db-5a1"},
            False,
            "waiting for rollout: 1 out of 3 pods run the update revision (OnDelete: old"
            " pods are replaced when they are deleted)",
        ),
        (
            {"type": "OnDelete"},
            3,
            {**DONE, "currentRevision": "db-5a1"},
            True,
            "rollout complete",
        ),
        (
            {"type": "OnDelete"},
            3,
            {**DONE, "readyReplicas": 2},
            False,
            "waiting for rollout: 1 pods to be ready",
        ),
    ],
)
def test_statefulset_readiness_follows_kubectl(
    strategy: dict[str, Any] | None,
    replicas: int,
    status: dict[str, Any],
    ready: bool,
    reason: str,
) -> None:
    verdict = is_ready(statefulset(strategy=strategy, replicas=replicas, status=status))
    assert (verdict.ready, verdict.reason, verdict.failed) == (ready, reason, False)


# --- CronJob -------------------------------------------------------------------------


def cronjob(*, suspend: bool = False, **status: Any) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "nightly", "namespace": "ops", "generation": 1},
        "spec": {
            "schedule": "0 3 * * *",
            "suspend": suspend,
            "jobTemplate": {"spec": {"template": {"spec": {"containers": []}}}},
        },
        "status": status,
    }


T1, T2, T3 = "2026-11-29T03:00:00Z", "2026-11-29T03:00:41Z", "2026-11-30T03:00:00Z"
RUNNING = [{"kind": "Job", "name": "nightly-29410", "namespace": "ops"}]


@pytest.mark.parametrize(
    ("status", "ready", "reason"),
    [
        # Never scheduled: the template is all there is, and the first run is worth protecting.
        ({}, True, "no Job has been scheduled yet"),
        # Scheduled at T1, succeeded at T2 (completion comes after the schedule).
        ({"lastScheduleTime": T1, "lastSuccessfulTime": T2}, True, "its last Job succeeded"),
        # Scheduled again at T3 and running; the one before succeeded: its images pulled.
        (
            {"lastScheduleTime": T3, "lastSuccessfulTime": T2, "active": RUNNING},
            True,
            "a Job is running; an earlier one succeeded",
        ),
        # Scheduled at T3, nothing running, last success older: the T3 Job failed.
        (
            {"lastScheduleTime": T3, "lastSuccessfulTime": T2},
            False,
            f"its last Job, scheduled at {T3}, did not succeed",
        ),
        # The first Job runs: nothing proven yet.
        (
            {"lastScheduleTime": T1, "active": RUNNING},
            False,
            "waiting for its first Job to succeed",
        ),
        ({"lastScheduleTime": T1}, False, "no Job of it has succeeded yet"),
    ],
)
def test_cronjob_readiness(status: dict[str, Any], ready: bool, reason: str) -> None:
    verdict = is_ready(cronjob(**status))
    assert (verdict.ready, verdict.reason, verdict.failed) == (ready, reason, False)


def test_a_suspended_cronjob_is_judged_by_the_same_rule() -> None:
    assert is_ready(cronjob(suspend=True)).ready
    assert not is_ready(cronjob(suspend=True, lastScheduleTime=T1)).ready


# --- Job and Pod (backed up, never rewritten) ----------------------------------------


def job(**status: int) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "once", "namespace": "ops"},
        "spec": {"template": {"spec": {"containers": []}}},
        "status": status,
    }


@pytest.mark.parametrize(
    ("status", "ready"),
    [
        ({}, False),
        # Active pods may be Pending (still pulling, or unable to): not proof enough.
        ({"active": 1}, False),
        ({"active": 1, "ready": 1}, True),
        ({"succeeded": 1}, True),
        ({"failed": 2, "succeeded": 1}, True),
        ({"failed": 3}, False),
    ],
)
def test_job_is_ready_once_a_pod_of_it_has_run(status: dict[str, int], ready: bool) -> None:
    assert is_ready(job(**status)).ready is ready


@pytest.mark.parametrize(
    ("phase", "ready", "reason"),
    [
        ("Running", True, "pod is Running"),
        ("Succeeded", True, "pod is Succeeded"),
        ("Pending", False, "waiting for the pod to run: it is Pending"),
        ("Failed", False, "waiting for the pod to run: it is Failed"),
        (None, False, "waiting for the pod to run: it is new"),
    ],
)
def test_pod_is_ready_when_it_runs_or_ran(phase: str | None, ready: bool, reason: str) -> None:
    pod: dict[str, Any] = {"kind": "Pod", "metadata": {"name": "bare"}, "spec": {}}
    if phase is not None:
        pod["status"] = {"phase": phase}
    verdict = is_ready(pod)
    assert (verdict.ready, verdict.reason) == (ready, reason)
