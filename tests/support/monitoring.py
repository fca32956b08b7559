"""The chart's alerts and dashboard as the tests read them: rendered, and their metric names.

`helm template` renders the PrometheusRule and the dashboard ConfigMap exactly as an install
would; the PromQL in them is then checked by `promtool` (unit tests) and its metric names
against a running controller's `/metrics` (e2e). Names the controller does not expose yet are
listed, with who adds them, in `NOT_YET_EXPOSED`: nothing is skipped silently.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.binaries import tool

__all__ = [
    "CHART",
    "JOB",
    "NAMESPACE",
    "NOT_YET_EXPOSED",
    "dashboard_queries",
    "metric_names",
    "render_monitoring",
    "rule_queries",
]

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "image-cloner"
NAMESPACE = "image-cloner-system"
JOB = "image-cloner-metrics"
"""The job a ServiceMonitor gives release "image-cloner" (its metrics Service's name)."""

NOT_YET_EXPOSED: dict[str, str] = {}
"""Metrics the alerts and dashboard use before the controller has them. When one lands,
remove it here (the e2e test fails while a listed name is exposed)."""

# Our metric names all start with the prefix; `up` is the one Prometheus adds itself.
_NAME = re.compile(r"\b(image_cloner_[a-z0-9_]*[a-z0-9]|up)\b(?=\s*[{\[),]|\s*$|\s*[<>=!])")
# Grafana's variables, replaced by values PromQL accepts (for `promtool check rules`).
_GRAFANA = {"$__rate_interval": "5m", '"$job"': '".+"'}


def render_monitoring(home: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the PrometheusRule, the dashboard ConfigMap) of `helm template` with both enabled."""
    env = {
        **os.environ,
        **{f"HELM_{d}_HOME": str(home / d.lower()) for d in ("CACHE", "CONFIG", "DATA")},
    }
    flags = ["registry=registry.example.com", "prometheusRule.enabled=true"]
    flags.append("grafanaDashboard.enabled=true")
    result = subprocess.run(
        [str(tool("helm")), "template", "image-cloner", str(CHART), "--namespace", NAMESPACE]
        + [arg for flag in flags for arg in ("--set", flag)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    docs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    (rule,) = [d for d in docs if d["kind"] == "PrometheusRule"]
    (dashboard,) = [
        d for d in docs if d["kind"] == "ConfigMap" and "dashboard" in d["metadata"]["name"]
    ]
    return rule, dashboard


def rule_queries(rule: dict[str, Any]) -> dict[str, str]:
    """Alert name → its expression."""
    return {r["alert"]: r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]}


def dashboard_queries(configmap: dict[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard (panels and variables), as valid PromQL."""
    dashboard = json.loads(configmap["data"]["image-cloner.json"])
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            # label_values(METRIC, LABEL) is Grafana's; the metric in it is a PromQL selector.
            queries.append(re.sub(r"label_values\((.+?),\s*\w+\)", r"\1", query["query"]))
    for variable, value in _GRAFANA.items():
        queries = [q.replace(variable, value) for q in queries]
    return queries


def metric_names(queries: list[str]) -> set[str]:
    """The metric names the expressions select (label names and functions are not matched)."""
    return {name for query in queries for name in _NAME.findall(query)}
