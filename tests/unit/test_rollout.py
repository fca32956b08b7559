"""The rule that decides when a rewrite is undone (`rollout`), as a table."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from image_cloner.mapping import BackupLocation
from image_cloner.rollout import failure, following, rewritten_at
from image_cloner.settings import Settings
from image_cloner.workloads import ORIGINAL_IMAGES_ANNOTATION
from tests.support.fake_kube import deployment

BACKUP: BackupLocation = Settings.from_env({"IMAGE_CLONER_REGISTRY": "backup.example:5000"}).backup
COPY = "backup.example:5000/library/nginx:1@sha256:" + "a" * 64
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def rewritten(*, ready: bool, image: str = COPY, **status: object) -> dict[str, Any]:
    obj = deployment(
        "web",
        {"app": image},
        ready=ready,
        annotations={ORIGINAL_IMAGES_ANNOTATION: json.dumps({"app": "nginx:1"})},
    )
    obj["status"]["conditions"] = [{"type": "Progressing", "reason": "ReplicaSetUpdated"}]
    obj["status"].update(status)
    return obj


def pod(image: str, reason: str | None) -> dict[str, Any]:
    state = {"waiting": {"reason": reason}} if reason else {"running": {}}
    return {
        "spec": {"containers": [{"name": "app", "image": image}]},
        "status": {"containerStatuses": [{"name": "app", "image": image, "state": state}]},
    }


DEADLINE = [{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}]


@pytest.mark.parametrize(
    ("obj", "pods", "age", "expected"),
    [
        pytest.param(rewritten(ready=True), [pod(COPY, "ErrImagePull")], 900, None, id="complete"),
        pytest.param(rewritten(ready=False), [pod(COPY, None)], 30, None, id="under way"),
        pytest.param(
            rewritten(ready=False, conditions=DEADLINE),
            [],
            30,
            "progress deadline exceeded",
            id="deadline",
        ),
        pytest.param(
            rewritten(ready=False),
            [pod("nginx:1", None), pod(COPY, "ImagePullBackOff")],
            30,
            f"ImagePullBackOff for {COPY} (container app)",
            id="pull error on a new pod",
        ),
        pytest.param(
            rewritten(ready=False), [pod("nginx:1", "ErrImagePull")], 30, None, id="old pod's error"
        ),
        pytest.param(
            rewritten(ready=False), [pod(COPY, "ErrImagePull")], 3, None, id="pull error in grace"
        ),
        pytest.param(
            rewritten(ready=False),
            [pod(COPY, None)],
            600,
            "rollout not complete 600s after the rewrite",
            id="timeout",
        ),
        pytest.param(rewritten(ready=False), [pod(COPY, None)], None, None, id="no time known"),
    ],
)
def test_failure(
    obj: dict[str, Any], pods: list[dict[str, Any]], age: int | None, expected: str | None
) -> None:
    when = NOW - timedelta(seconds=age) if age is not None else None
    backups = following(obj, BACKUP)
    assert backups == {"app": COPY}
    assert failure(obj, pods, backups=backups, rewritten=when, now=NOW, timeout=600) == expected


def test_only_containers_still_on_our_backup_are_followed() -> None:
    assert following(rewritten(ready=False, image="nginx:2"), BACKUP) == {}
    assert following(deployment("web", {"app": COPY}), BACKUP) == {}  # no record of ours
    damaged = rewritten(ready=False)
    damaged["metadata"]["annotations"][ORIGINAL_IMAGES_ANNOTATION] = "garbage"
    assert following(damaged, BACKUP) == {}


def test_a_finished_rollout_is_not_followed_when_a_pod_dies_later() -> None:
    done = [{"type": "Progressing", "reason": "NewReplicaSetAvailable"}]
    assert following(rewritten(ready=False, conditions=done), BACKUP) == {}


def test_a_later_spec_change_by_someone_else_is_their_rollout_not_ours() -> None:
    obj = rewritten(ready=False)
    obj["metadata"]["managedFields"] = [
        {"manager": "image-cloner", "operation": "Update", "time": "2026-12-01T11:00:00Z"},
        {"manager": "kubectl", "time": "2026-12-01T11:30:00Z", "fieldsV1": {"f:spec": {}}},
    ]
    assert rewritten_at(obj, manager="image-cloner") is None


def test_the_rewrite_time_is_our_newest_managed_fields_entry() -> None:
    obj = rewritten(ready=False)
    obj["metadata"]["managedFields"] = [
        {"manager": "kubectl", "operation": "Update", "time": "2026-12-01T10:00:00Z"},
        {"manager": "kube-controller-manager", "time": "2026-12-01T11:59:00Z"},
        {"manager": "image-cloner", "operation": "Update", "time": "2026-12-01T11:00:00Z"},
        {"manager": "image-cloner", "operation": "Update", "time": "2026-12-01T11:30:00Z"},
        {"manager": "image-cloner", "subresource": "status", "time": "2026-12-01T11:58:00Z"},
    ]
    assert rewritten_at(obj, manager="image-cloner") == datetime(2026, 12, 1, 11, 30, tzinfo=UTC)
    assert rewritten_at(obj, manager="nobody") is None
