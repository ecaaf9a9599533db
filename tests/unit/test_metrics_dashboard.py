"""The Grafana dashboard shipped with the chart queries only metrics the product exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from fintech_operator.observability import metrics

DASHBOARD = (
    Path(__file__).resolve().parents[2]
    / "charts"
    / "fintech-operator"
    / "dashboards"
    / "fintech-operator.json"
)
_NAME = re.compile(r"\b((?:fintech|process)_[a-z0-9_]+)\b")


def _exported_names() -> set[str]:
    names: set[str] = set()
    for family in metrics.REGISTRY.collect():
        names.update(sample.name for sample in family.samples)
        names.add(family.name)
    return names


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def test_dashboard_is_grafana_json_with_a_datasource_variable() -> None:
    """The file loads as JSON, has a stable uid, and every panel uses the datasource variable."""
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "fintech-operator"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in _panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_every_query_names_an_exported_metric() -> None:
    """Each PromQL expression refers only to series this product's registry exports."""
    # Seed the labelled metrics so their sample names exist in the registry's output.
    metrics.posting_decided({"type": "Purchase", "amount": 1, "currency": "USD"}, "posted")
    metrics.rejection("Posting", "InvalidSpec")
    metrics.reconcile("Card", "issue", "success", 0.01)
    metrics.kafka_produced("postings", ok=True)
    metrics.consumer_event("rewards", "applied")
    metrics.webhook_delivery("delivered", 0.1)
    metrics.collect_error("outbox")
    metrics.SNAPSHOT.set_outbox(0, 0.0)
    metrics.SNAPSHOT.set_consumer_lag({("g", "postings", 0): 0})
    metrics.build_info.labels("0", "test").set(1)
    exported = _exported_names()
    dashboard = json.loads(DASHBOARD.read_text())
    used: set[str] = set()
    for panel in _panels(dashboard):
        for target in panel["targets"]:
            names = set(_NAME.findall(target["expr"]))
            assert names, target["expr"]
            assert names <= exported, (panel["title"], names - exported)
            used |= names
    for required in (
        "fintech_reconcile_duration_seconds_bucket",
        "fintech_postings_total",
        "fintech_posting_amount_minor_total",
        "fintech_rejections_total",
        "fintech_outbox_backlog",
        "fintech_outbox_oldest_age_seconds",
        "fintech_consumer_lag_messages",
        "fintech_webhook_deliveries_total",
    ):
        assert required in used, required
