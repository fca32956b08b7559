"""Log formats (seed-style text, JSON lines) and redaction."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Callable

import pytest

from image_cloner.logs import (
    RedactingFilter,
    Redactor,
    configure_logging,
    log_event,
)

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d{4}"


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_text_without_fields_has_no_trailing_json(capture: Callable[..., io.StringIO]) -> None:
    out = capture()
    logging.getLogger("setup").info("starting manager")
    (line,) = lines(out)
    assert re.fullmatch(rf"{TIMESTAMP}\tINFO\tsetup\tstarting manager", line), line


def test_records_name_the_caller(root_logging: None, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    log_event(logging.getLogger("x"), logging.INFO, "hello", a=1)
    assert [r.funcName for r in caplog.records] == ["test_records_name_the_caller"]


def test_json_field_named_like_a_key_does_not_clobber_it(
    capture: Callable[..., io.StringIO],
) -> None:
    out = capture(fmt="json")
    log_event(logging.getLogger("x"), logging.INFO, "real message", msg="field", level=3)
    entry = json.loads(lines(out)[0])
    assert (entry["msg"], entry["level"]) == ("real message", "info")
    assert (entry["fields.msg"], entry["fields.level"]) == ("field", 3)


def test_kopf_object_reference_becomes_fields(capture: Callable[..., io.StringIO]) -> None:
    out = capture(fmt="json")
    ref = {"apiVersion": "apps/v1", "kind": "Deployment", "name": "nginx", "namespace": "demo"}
    logging.getLogger("kopf.objects").info("Handler succeeded.", extra={"k8s_ref": ref})
    entry = json.loads(lines(out)[0])
    assert (entry["kind"], entry["name"], entry["namespace"]) == ("Deployment", "nginx", "demo")


def test_configuring_again_replaces_only_our_handler(capture: Callable[..., io.StringIO]) -> None:
    first = capture()
    second = capture(fmt="json")
    logging.getLogger("x").info("once")
    assert first.getvalue() == ""
    assert json.loads(second.getvalue())["msg"] == "once"


def test_unknown_format_is_rejected(root_logging: None) -> None:
    with pytest.raises(ValueError, match="'yaml'"):
        configure_logging(fmt="yaml")  # type: ignore[arg-type]


def test_bad_format_arguments_do_not_break_the_caller() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%s and %s", ("one",), None)
    assert RedactingFilter(Redactor()).filter(record)
    assert record.getMessage() == "%s and %s"


# --- redaction ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer eyJhbGciOi.x.y", "Authorization: Bearer ***"),
        ("{'Authorization': 'Basic dXNlcjpwYXNz'}", "{'Authorization': 'Basic ***'}"),
        ('"authorization":"abc"', '"authorization":"***"'),
        (
            "GET https://testuser:testpass@127.0.0.1:5000/v2/",
            "GET https://testuser:***@127.0.0.1:5000/v2/",
        ),
        ("IMAGE_CLONER_PASS=hunter22 next", "IMAGE_CLONER_PASS=*** next"),
        ("password: hunter22", "password: ***"),
        ('{"auths": {"r.io": {"auth": "dXNlcjpwYXNz"}}}', '{"auths": {"r.io": {"auth": "***"}}}'),
        ("?service=r&access_token=abc.def&x=1", "?service=r&access_token=***&x=1"),
        # Things that only look close stay readable.
        (
            'Bearer realm="https://auth.r.io/token",service="r.io"',
            'Bearer realm="https://auth.r.io/token",service="r.io"',
        ),
        ("localhost:5000/nginx@sha256:abcd", "localhost:5000/nginx@sha256:abcd"),
        (
            "http://127.0.0.1:5000/v2/nginx/blobs/sha256:ab",
            "http://127.0.0.1:5000/v2/nginx/blobs/sha256:ab",
        ),
        ("token expired; refreshing", "token expired; refreshing"),
        (
            "pull secret created: pull_secret=image-cloner-pull",
            "pull secret created: pull_secret=image-cloner-pull",
        ),
    ],
)
def test_redactor_patterns(text: str, expected: str) -> None:
    assert Redactor()(text) == expected


def test_redactor_masks_configured_values_and_their_url_encoding() -> None:
    redact = Redactor(["p@ss word!"])
    assert redact("login p@ss word! then p%40ss%20word%21") == "login *** then ***"


def test_redactor_ignores_values_too_short_to_mask_safely() -> None:
    redact = Redactor(["ab", ""])
    assert redact("abc table") == "abc table"


def test_redaction_covers_message_args_fields_and_tracebacks(
    capture: Callable[..., io.StringIO],
) -> None:
    out = capture(fmt="json", secrets=["testpass"])
    logger = logging.getLogger("x")
    log_event(
        logger,
        logging.INFO,
        "login as %s",
        password="testpass",
        anything="the password is testpass",
        nested={"headers": {"Authorization": "Basic dXNlcjpwYXNz"}, "note": "used testpass"},
        credentials="Bearer t0k3n-value",
        items=["testpass"],
        pull_secret="image-cloner-pull",
        challenge='Bearer realm="https://auth.r.io/token"',
    )
    logger.warning("login as %s with %s", "testuser", "testpass")
    try:
        raise RuntimeError("registry said no to testpass")
    except RuntimeError:
        logger.exception("copy failed")
    text = out.getvalue()
    assert "testpass" not in text
    assert "dXNlcjpwYXNz" not in text
    assert "t0k3n-value" not in text
    first, second, third = (json.loads(line) for line in text.splitlines() if line.startswith("{"))
    # What is secret is known by value (configured, or a credential's shape), not by name:
    assert first["password"] == "***"
    assert first["anything"] == "the password is ***"
    assert first["nested"] == {"headers": {"Authorization": "***"}, "note": "used ***"}
    assert first["credentials"] == "***"
    assert first["items"] == ["***"]
    assert first["pull_secret"] == "image-cloner-pull", "a Secret's name is not a secret"
    assert first["challenge"] == 'Bearer realm="https://auth.r.io/token"'
    assert second["msg"] == "login as testuser with ***"
    assert "RuntimeError: registry said no to ***" in third["exception"]


def test_redactor_learns_secrets_after_configuration(capture: Callable[..., io.StringIO]) -> None:
    stream = io.StringIO()
    redactor = configure_logging(stream=stream)
    redactor.add("late-secret")
    logging.getLogger("x").warning("got late-secret")
    assert stream.getvalue().rstrip().endswith("got ***")
