"""The digest a workload's pods run, read from pod status as kubelets report it."""

from __future__ import annotations

from typing import Any

import pytest

from image_cloner.running import Agreed, Disagreed, NotReported, digest_in_image_id, running

X = "sha256:" + "a" * 64
Y = "sha256:" + "b" * 64


@pytest.mark.parametrize(
    ("image_id", "expected"),
    [
        (f"docker.io/library/nginx@{X}", X),  # containerd, CRI-O
        (f"docker-pullable://nginx@{X}", X),  # cri-dockerd, dockershim
        (f"localhost:5000/app@{X}", X),
        (f"docker://{X}", None),  # a config (image) ID: no manifest
        (X, None),  # containerd's image ID for an image without a repo digest
        ("", None),
        (None, None),
        ("nginx@sha256:short", None),
        (f"nginx@md5:{'a' * 32}", None),
    ],
)
def test_digest_in_image_id(image_id: object, expected: str | None) -> None:
    assert digest_in_image_id(image_id) == expected


def pod(
    image: str = "app:v1",
    image_id: str | None = None,
    *,
    name: str = "app",
    init: bool = False,
    deleting: bool = False,
) -> dict[str, Any]:
    section, statuses = (
        ("initContainers", "initContainerStatuses")
        if init
        else (
            "containers",
            "containerStatuses",
        )
    )
    status: dict[str, Any] = {"name": name, "image": image}
    if image_id is not None:
        status["imageID"] = image_id
    meta: dict[str, Any] = {"name": "p"}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {section: [{"name": name, "image": image}]},
        "status": {statuses: [status]},
    }


def test_all_pods_agree() -> None:
    pods = [pod(image_id=f"docker.io/library/app@{X}") for _ in range(3)]
    assert running(pods, section="containers", container="app", image="app:v1") == Agreed(X, 3)


def test_pods_disagree_names_every_digest_with_its_count() -> None:
    pods = [pod(image_id=f"app@{X}"), pod(image_id=f"app@{Y}"), pod(image_id=f"app@{Y}")]
    verdict = running(pods, section="containers", container="app", image="app:v1")
    assert verdict == Disagreed({X: 1, Y: 2})
    assert str(verdict) == f"{Y} on 2 pods, {X} on 1 pod"


def test_pods_of_another_image_or_being_deleted_are_no_evidence() -> None:
    pods = [
        pod(image_id=f"app@{X}"),
        pod(image="app:v0", image_id=f"app@{Y}"),  # an older revision
        pod(image_id=f"app@{Y}", deleting=True),
    ]
    assert running(pods, section="containers", container="app", image="app:v1") == Agreed(X, 1)


def test_init_containers_are_read_from_their_own_statuses() -> None:
    pods = [pod(image_id=f"app@{X}", init=True)]
    assert running(pods, section="initContainers", container="app", image="app:v1") == Agreed(X, 1)
    assert isinstance(
        running(pods, section="containers", container="app", image="app:v1"), NotReported
    )


def test_not_reported() -> None:
    no_pods = running([], section="containers", container="app", image="app:v1")
    assert no_pods == NotReported("no current pod runs this container")
    kwok = running([pod()], section="containers", container="app", image="app:v1")
    assert kwok == NotReported("the container runtime reports no image digest")
    config_id = running([pod(image_id=X)], section="containers", container="app", image="app:v1")
    assert isinstance(config_id, NotReported)
