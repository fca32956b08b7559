"""Kubernetes API errors keep the apiserver's Status, and decisions read its reason.

The Status bodies below are what the test bed's apiserver answered (tests/e2e/test_kube.py
and tests/e2e/test_patch_outcomes.py check the same answers live): a failed JSON-patch
`test`, a ValidatingAdmissionPolicy refusal and a stale resourceVersion. An apiserver that
cannot be reached at all is a failed request like any other, so the periodic resync
survives it instead of its task dying for good (after which `/readyz` turns stale forever).
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from image_cloner.controller import kube as kube_module
from image_cloner.controller.kube import Kube
from image_cloner.controller.kube_errors import (
    AlreadyExists,
    Conflict,
    Invalid,
    KubeApiError,
    NotFound,
    StatusCause,
    Unreachable,
    api_error,
)
from image_cloner.controller.kubeconfig import Endpoint, StaticIdentity
from image_cloner.controller.queue import WorkQueue
from image_cloner.controller.reconcile import changed_meanwhile
from image_cloner.controller.watch import WatchTracker
from image_cloner.health import Health
from image_cloner.settings import Settings
from image_cloner.workloads import DEPLOYMENT, WorkloadKey


def status(code: int, reason: str, message: str, details: dict[str, Any] | None) -> str:
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details is not None:
        body["details"] = details
    return json.dumps(body)


TEST_FAILED = status(
    422, "Invalid", "the server rejected our request due to an error in our request", {}
)
ADMISSION_REFUSED = status(
    422,
    "Invalid",
    "deployments.apps \"web\" is forbidden: ValidatingAdmissionPolicy 'deny' with binding "
    "'deny' denied request: backup images refused",
    {
        "name": "web",
        "group": "apps",
        "kind": "deployments",
        "causes": [
            {
                "message": "ValidatingAdmissionPolicy 'deny' with binding 'deny' denied "
                "request: backup images refused"
            }
        ],
    },
)
STALE_VERSION = status(
    409,
    "Conflict",
    'Operation cannot be fulfilled on deployments.apps "web": the object has been modified; '
    "please apply your changes to the latest version and try again",
    {"name": "web", "group": "apps", "kind": "deployments"},
)
FIELD_INVALID = status(
    422,
    "Invalid",
    'Deployment.apps "web" is invalid: spec.template.spec.containers[0].image: Required value',
    {
        "name": "web",
        "group": "apps",
        "kind": "Deployment",
        "causes": [
            {
                "reason": "FieldValueRequired",
                "message": "Required value",
                "field": "spec.template.spec.containers[0].image",
            }
        ],
    },
)


@pytest.mark.parametrize(
    ("code", "body", "error_type", "reason", "changed"),
    [
        pytest.param(422, TEST_FAILED, Invalid, "Invalid", True, id="json-patch-test-failed"),
        pytest.param(422, ADMISSION_REFUSED, Invalid, "Invalid", False, id="admission-policy"),
        pytest.param(422, FIELD_INVALID, Invalid, "Invalid", False, id="field-validation"),
        pytest.param(409, STALE_VERSION, Conflict, "Conflict", True, id="stale-version"),
        pytest.param(
            404, status(404, "NotFound", "not found", {}), NotFound, "NotFound", False, id="gone"
        ),
        pytest.param(
            409,
            status(409, "AlreadyExists", "exists", {"name": "x"}),
            AlreadyExists,
            "AlreadyExists",
            False,
            id="already-exists",
        ),
        pytest.param(500, "<html>oops</html>", KubeApiError, "", False, id="no-status"),
    ],
)
def test_the_status_decides_what_a_failed_patch_means(
    code: int, body: str, error_type: type[KubeApiError], reason: str, changed: bool
) -> None:
    error = api_error(code, body, fallback="Internal Server Error")
    assert type(error) is error_type
    assert (error.status, error.reason) == (code, reason)
    assert changed_meanwhile(error) is changed


def test_the_status_message_details_and_causes_are_kept() -> None:
    error = api_error(422, FIELD_INVALID, fallback="Unprocessable Entity")
    assert error.message.endswith("containers[0].image: Required value")
    assert str(error).startswith("Kubernetes API error 422: Deployment.apps")
    assert error.details["name"] == "web"
    assert error.causes == (
        StatusCause(
            message="Required value",
            reason="FieldValueRequired",
            field="spec.template.spec.containers[0].image",
        ),
    )


def test_an_answer_without_a_status_keeps_the_http_reason() -> None:
    error = api_error(404, b"404 page not found", fallback="Not Found")
    assert isinstance(error, NotFound), "a proxy's 404 is still a 404"
    assert (error.reason, error.message, error.causes) == ("", "Not Found", ())


@pytest.fixture
def refusing_port() -> int:
    """A loopback port nothing listens on: connections are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A loopback port that takes connections (backlog) but never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("server", ["refusing_port", "silent_port"])
async def test_an_unreachable_apiserver_is_an_api_error_and_the_resync_survives_it(
    server: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    port: int = request.getfixturevalue(server)
    monkeypatch.setattr(kube_module, "REQUEST_TIMEOUT", 0.5)
    kube = Kube(Endpoint(server=f"http://127.0.0.1:{port}", source=StaticIdentity()))
    try:
        with pytest.raises(Unreachable) as caught:
            await kube.read_workload(DEPLOYMENT, "demo", "web")
        assert caught.value.status == 0
        assert "apiserver" in str(caught.value)

        health = Health(staleness=60)
        queue: WorkQueue[WorkloadKey] = WorkQueue()
        settings = Settings.from_env({"IMAGE_CLONER_REGISTRY": "localhost:5000"})
        tracker = WatchTracker(queue=queue, health=health, kube=kube, settings=settings)
        assert await tracker.resync(DEPLOYMENT) == 0, "a failed listing is logged, not raised"
        assert "Deployment watch has had no event or listing yet" in health.problems()
    finally:
        await kube.close()
