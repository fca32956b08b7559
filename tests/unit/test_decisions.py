"""The controller's decision lines: the seed's words, levels and fields, per workload kind."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable

import pytest

from image_cloner.controller.decisions import WorkloadLog
from image_cloner.logs import CONTROLLER_LOGGER

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}"


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_format_is_the_seeds(capture: Callable[..., io.StringIO]) -> None:
    out = capture(fmt="text")
    WorkloadLog("deployment", name="nginx", namespace="demo-system").inspecting()
    (line,) = lines(out)
    expected = (
        rf"{TIMESTAMP}\tDEBUG\tcontroller\.image-cloner\tinspecting deployment\t"
        r'\{"name": "nginx", "namespace": "demo-system"\}'
    )
    assert re.fullmatch(expected, line), line


SEED_LINES: list[tuple[Callable[[WorkloadLog], None], int, str, dict[str, object]]] = [
    (lambda w: w.inspecting(), logging.DEBUG, "inspecting {noun}", {}),
    (
        lambda w: w.checking_container("nginx:1.21.4-alpine"),
        logging.DEBUG,
        "checking {noun} container",
        {"image": "nginx:1.21.4-alpine"},
    ),
    (
        lambda w: w.cloning("nginx:1.21.4-alpine"),
        logging.INFO,
        "cloning {noun} image",
        {"image": "nginx:1.21.4-alpine"},
    ),
    (
        lambda w: w.updating("nginx:1.21.4-alpine", "localhost:5000/nginx:1.21.4-alpine"),
        logging.INFO,
        "updating {noun} image",
        {"From": "nginx:1.21.4-alpine", "To": "localhost:5000/nginx:1.21.4-alpine"},
    ),
    (
        lambda w: w.updated("localhost:5000/nginx:1.21.4-alpine"),
        logging.INFO,
        "{noun} image reference updated",
        {"image": "localhost:5000/nginx:1.21.4-alpine"},
    ),
    (
        lambda w: w.already_cloned("localhost:5000/nginx:1.21.4-alpine"),
        logging.DEBUG,
        "image already cloned",
        {"image": "localhost:5000/nginx:1.21.4-alpine"},
    ),
    (
        lambda w: w.clone_failed("nginx:1.21.4-alpine", "authentication", container="web"),
        logging.WARNING,
        "cloning {noun} image failed",
        {"image": "nginx:1.21.4-alpine", "reason": "authentication", "container": "web"},
    ),
    (
        lambda w: w.not_ready("waiting for rollout: 1 of 2 updated replicas are available"),
        logging.DEBUG,
        "{noun} not ready",
        {"reason": "waiting for rollout: 1 of 2 updated replicas are available"},
    ),
]


@pytest.mark.parametrize("noun", ["deployment", "daemonset"])
@pytest.mark.parametrize("case", SEED_LINES)
def test_decision_lines_as_json(
    capture: Callable[..., io.StringIO],
    noun: str,
    case: tuple[Callable[[WorkloadLog], None], int, str, dict[str, object]],
) -> None:
    call, level, message, fields = case
    out = capture(fmt="json")
    call(WorkloadLog(noun, name="nginx", namespace="demo-system"))
    (line,) = lines(out)
    entry = json.loads(line)
    assert re.fullmatch(TIMESTAMP, entry.pop("time"))
    assert entry == {
        "level": logging.getLevelName(level).lower(),
        "logger": CONTROLLER_LOGGER,
        "msg": message.format(noun=noun),
        "name": "nginx",
        "namespace": "demo-system",
        **fields,
    }


def test_decision_records_name_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    WorkloadLog("deployment", name="a", namespace="b").inspecting()
    assert [r.funcName for r in caplog.records] == ["test_decision_records_name_the_caller"]
