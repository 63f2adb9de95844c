"""The Grafana dashboard in deploy/grafana: well formed, and naming only metrics Conduit exposes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "conduit.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# The metric families of the observability contract, as exposed: counters with `_total`,
# histograms by their base name (queries use `_bucket`, `_sum`, `_count`).
METRICS = {
    # engine, label model_name
    "conduit:num_requests_running", "conduit:num_requests_waiting", "conduit:kv_cache_usage_perc",
    "conduit:prefix_cache_queries_total", "conduit:prefix_cache_hits_total",
    "conduit:num_preemptions_total", "conduit:prompt_tokens_total",
    "conduit:generation_tokens_total", "conduit:time_to_first_token_seconds",
    "conduit:inter_token_latency_seconds", "conduit:e2e_request_latency_seconds",
    # admission queues, label model_name
    "conduit:queue_depth", "conduit:queue_slots_in_use", "conduit:queue_rejected_total",
    "conduit:queue_wait_seconds",
    # guards
    "conduit:guard_verdicts_total", "conduit:guard_seconds",
    # gateway
    "conduit:requests_total", "conduit:request_latency_seconds", "conduit:request_ttft_seconds",
    "conduit:request_tpot_seconds", "conduit:request_inter_token_latency_seconds",
    "conduit:input_tokens_total", "conduit:output_tokens_total", "conduit:cost_usd_total",
    "conduit:cache_lookups_total", "conduit:rate_limited_total", "conduit:retries_total",
    "conduit:fallbacks_total", "conduit:deployment_up", "conduit:deployment_in_flight",
    "conduit:traces_dropped_total",
}
HISTOGRAMS = {"conduit:time_to_first_token_seconds", "conduit:inter_token_latency_seconds",
              "conduit:e2e_request_latency_seconds", "conduit:queue_wait_seconds",
              "conduit:guard_seconds", "conduit:request_latency_seconds",
              "conduit:request_ttft_seconds", "conduit:request_tpot_seconds",
              "conduit:request_inter_token_latency_seconds"}
# Prometheus names may hold digits after the first character (conduit:e2e_...): `[a-z_:]+`
# alone would read that one as "conduit:e".
NAME = re.compile(r"conduit:[a-zA-Z0-9_:]+")


def metric_names(expr: str) -> set[str]:
    """The metric families an expression reads, with histogram series folded to their family."""
    return {re.sub(r"_(bucket|sum|count)$", "", name) for name in NAME.findall(expr)}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:  # a collapsed row keeps its panels inside it
        yield panel
        yield from all_panels(panel.get("panels", []))


def test_panels_are_well_formed(dashboard: dict[str, Any]) -> None:
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = list(all_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        assert panel.get("title"), f"panel {panel['id']} has no title"
        if panel["type"] == "row":
            continue
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        assert panel["datasource"] == DATASOURCE, panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"] == DATASOURCE, panel["title"]
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]


def test_queries_name_only_exposed_metrics(dashboard: dict[str, Any]) -> None:
    used: set[str] = set()
    for panel in all_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            assert names, f"{panel['title']!r}: no Conduit metric in {target['expr']!r}"
            unknown = names - METRICS
            assert not unknown, f"{panel['title']!r} uses unknown metrics {sorted(unknown)}"
            for name in NAME.findall(target["expr"]):
                if name.endswith("_bucket"):
                    assert name.removesuffix("_bucket") in HISTOGRAMS, name
            used |= names
    # every family of the contract is on the dashboard somewhere
    assert used == METRICS, f"not shown: {sorted(METRICS - used)}"


def test_template_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name, label in (("model", "model"), ("tenant", "tenant")):
        variable = variables[name]
        assert variable["type"] == "query" and variable["datasource"] == DATASOURCE
        query = variable["query"]
        query = query["query"] if isinstance(query, dict) else query
        match = re.fullmatch(r"label_values\((conduit:[a-zA-Z0-9_:]+),\s*(\w+)\)", query)
        assert match and match[1] in METRICS and match[2] == label, query
    # no import-time inputs: the file must also work through file provisioning
    assert "__inputs" not in dashboard
    assert "${DS_" not in DASHBOARD.read_text()


def test_metric_name_extraction() -> None:
    expr = ('histogram_quantile(0.95, sum by (le) (rate(conduit:request_ttft_seconds_bucket'
            '{model=~"$model"}[$__rate_interval]))) / conduit:queue_depth')
    assert metric_names(expr) == {"conduit:request_ttft_seconds", "conduit:queue_depth"}
