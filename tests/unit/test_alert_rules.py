"""The chart's alerts and dashboard, checked by Prometheus's own `promtool`.

The PrometheusRule is rendered by `helm template` as an install would render it; `promtool
check rules` parses it, `promtool test rules` (tests/alerts/alerts_test.yaml) plays series
into each alert and checks when it fires and what it says. The dashboard's queries go
through the same parser as recording rules. Both tools come from the test bed
(`make testbed`). Whether the controller exposes the metrics they use: tests/e2e/test_monitoring.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support.binaries import tool
from tests.support.monitoring import (
    dashboard_queries,
    metric_names,
    render_monitoring,
    rule_queries,
)

ALERT_TESTS = Path(__file__).resolve().parents[1] / "alerts" / "alerts_test.yaml"
SELECTOR = re.compile(r"([A-Za-z_:][\w:]*)\s*\{")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tool("promtool")), *args], capture_output=True, text=True, cwd=cwd, check=False
    )


def test_alerts_parse_and_fire_as_their_tests_say(tmp_path: Path) -> None:
    rule, _ = render_monitoring(tmp_path / "helm")
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(ALERT_TESTS, tmp_path / "alerts_test.yaml")
    checked = promtool("check", "rules", "rules.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool("test", "rules", "alerts_test.yaml", cwd=tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_has_a_test_that_sees_it_fire(tmp_path: Path) -> None:
    rule, _ = render_monitoring(tmp_path)
    tests = yaml.safe_load(ALERT_TESTS.read_text())["tests"]
    firing = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert firing == set(rule_queries(rule))


def test_dashboard_queries_are_promql(tmp_path: Path) -> None:
    _, configmap = render_monitoring(tmp_path / "helm")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["image-cloner.json"])
    assert dashboard["uid"] == "image-cloner"
    queries = dashboard_queries(configmap)
    assert len(queries) >= 15
    # As recording rules, so promtool's parser judges every expression.
    records = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
    (tmp_path / "dashboard.yaml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": records}]})
    )
    checked = promtool("check", "rules", "dashboard.yaml", cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_every_selector_names_a_metric_the_name_check_sees(tmp_path: Path) -> None:
    # A typo such as `image_clonr_ready{...}` must not slip past the e2e name check.
    rule, configmap = render_monitoring(tmp_path / "helm")
    queries = [*rule_queries(rule).values(), *dashboard_queries(configmap)]
    selected = {name for query in queries for name in SELECTOR.findall(query)}
    assert selected <= metric_names(queries), selected - metric_names(queries)
