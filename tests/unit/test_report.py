"""The operator commands' output: a table for 80 columns, colour only when asked, stable JSON."""

from __future__ import annotations

import json
import re

import pytest

from image_cloner.report import Change, Row, Tone, render_json, render_table

ANSI = re.compile(r"\x1b\[[0-9;]*m")
LONG_IMAGE = "registry.example.com:5000/backup/quay.io/some-org/some-very-long-image-name:v1.2.3"


def rows() -> list[Row]:
    return [
        Row(
            kind="Deployment",
            namespace="payments-production-eu-west",
            name="checkout-frontend-with-a-long-name",
            outcome="reverted",
            tone=Tone.DONE,
            detail=f"{LONG_IMAGE} → quay.io/some-org/some-very-long-image-name:v1.2.3",
            changes=(
                Change("web", LONG_IMAGE, "quay.io/some-org/some-very-long-image-name:v1.2.3"),
            ),
        ),
        Row(
            kind="DaemonSet",
            namespace="ops",
            name="agent",
            outcome="changed",
            tone=Tone.PROBLEM,
            detail="changed since the rewrite: container agent runs agent:3",
        ),
        Row(kind="Secret", namespace="ops", name="pull", outcome="deleted", tone=Tone.DONE),
    ]


@pytest.mark.parametrize("width", [80, 100, 60])
def test_every_line_fits_the_width(width: int) -> None:
    text = render_table(rows(), width=width)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= width
    assert lines[0].split() == ["KIND", "WORKLOAD", "OUTCOME", "DETAIL"]
    assert all(line == line.rstrip() for line in lines)


def test_columns_line_up_and_long_details_wrap_under_their_column() -> None:
    lines = render_table(rows()).splitlines()
    detail_at = lines[0].index("DETAIL")
    outcome_at = lines[0].index("OUTCOME")
    reverted = next(line for line in lines if "reverted" in line)
    assert reverted.index("reverted") == outcome_at
    first = lines.index(reverted)
    continuation = lines[first + 1]
    assert continuation[:detail_at].strip() == ""
    assert continuation[detail_at] != " "
    # Nothing of the detail is lost to the wrapping.
    wrapped = "".join(
        line[detail_at:] for line in lines[first : first + 6] if len(line) > detail_at
    )
    assert LONG_IMAGE.replace(" ", "") in wrapped.replace(" ", "")


def test_a_long_workload_name_keeps_both_ends() -> None:
    line = next(line for line in render_table(rows()).splitlines() if "reverted" in line)
    assert "payments-pr" in line
    assert "long-name" in line
    assert "…" in line


def test_colour_only_when_asked_and_not_counted_in_the_width() -> None:
    plain = render_table(rows(), colour=False)
    coloured = render_table(rows(), colour=True)
    assert not ANSI.search(plain)
    assert "\x1b[31mchanged" in coloured
    assert "\x1b[32mreverted" in coloured
    assert ANSI.sub("", coloured) == plain


def test_json_is_a_list_of_objects_with_fixed_keys() -> None:
    data = json.loads(render_json(rows()))
    assert [set(item) for item in data] == [
        {"kind", "namespace", "name", "outcome", "detail", "images"}
    ] * 3
    assert data[0]["images"] == [
        {
            "container": "web",
            "from": LONG_IMAGE,
            "to": "quay.io/some-org/some-very-long-image-name:v1.2.3",
        }
    ]
    assert data[2] == {
        "kind": "Secret",
        "namespace": "ops",
        "name": "pull",
        "outcome": "deleted",
        "detail": "",
        "images": [],
    }
    assert render_json([]) == "[]\n"
