"""The metrics registry: bounded labels, amounts counted once, the snapshot, the server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fintech_operator import config
from fintech_operator.observability import metrics, reconcile

BASE = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:9092"}


def _value(name: str, **labels: str) -> float:
    return metrics.sample(name, labels) or 0.0


def test_posted_posting_counts_once_with_its_amount() -> None:
    """A new posting adds its amount; a replay and a rejection count but add no amount."""
    spec = {"type": "Purchase", "amount": 1250, "currency": "JPY"}
    labels = {"type": "Purchase", "currency": "JPY"}
    before = _value("fintech_posting_amount_minor_total", **labels)
    metrics.posting_decided(spec, "posted")
    metrics.posting_decided(spec, "replayed")
    metrics.posting_decided(spec, "rejected")
    assert _value("fintech_posting_amount_minor_total", **labels) == before + 1250
    for outcome in ("posted", "replayed", "rejected"):
        assert _value("fintech_postings_total", **labels, outcome=outcome) >= 1


@pytest.mark.parametrize("amount", [12.5, True, "1250", None, -5])
def test_non_integer_or_negative_amounts_are_never_added(amount: object) -> None:
    """Floats, bools, strings, missing and negative amounts never reach the amount counter."""
    labels = {"type": "Fee", "currency": "CHF"}
    before = _value("fintech_posting_amount_minor_total", **labels)
    metrics.posting_decided({"type": "Fee", "amount": amount, "currency": "CHF"}, "posted")
    assert _value("fintech_posting_amount_minor_total", **labels) == before


@pytest.mark.parametrize(
    ("spec", "type_", "currency"),
    [
        ({"type": "Bogus", "currency": "usd"}, "other", "other"),
        ({"type": "Refund", "currency": "US DOLLARS"}, "Refund", "other"),
        ({}, "other", "other"),
        (None, "other", "other"),
    ],
)
def test_user_typed_labels_fold_into_other(
    spec: dict[str, str] | None, type_: str, currency: str
) -> None:
    """Label values from a user's YAML that do not fit their shape become ``other``."""
    before = _value("fintech_postings_total", type=type_, currency=currency, outcome="rejected")
    metrics.posting_decided(spec, "rejected")
    after = _value("fintech_postings_total", type=type_, currency=currency, outcome="rejected")
    assert after == before + 1


def test_rejection_reason_and_unknown_outcomes_are_bounded() -> None:
    """A reason that is not a CamelCase word, and an unknown outcome, become ``other``."""
    before = _value("fintech_rejections_total", kind="Posting", reason="other")
    metrics.rejection("Posting", "not a reason; DROP TABLE")
    assert _value("fintech_rejections_total", kind="Posting", reason="other") == before + 1
    metrics.reconcile("Card", "issue", "exploded", 0.01)
    count = _value(
        "fintech_reconcile_duration_seconds_count", kind="Card", handler="issue", outcome="other"
    )
    assert count >= 1


def test_webhook_deliveries_count_outcomes_and_time() -> None:
    """Each delivery attempt is counted by outcome and timed; unknown outcomes are ``other``."""
    before = _value("fintech_webhook_deliveries_total", outcome="failed")
    metrics.webhook_delivery("failed", 0.2)
    metrics.webhook_delivery("teleported", 0.1)
    assert _value("fintech_webhook_deliveries_total", outcome="failed") == before + 1
    assert _value("fintech_webhook_deliveries_total", outcome="other") >= 1
    assert _value("fintech_webhook_delivery_duration_seconds_count", outcome="failed") >= 1


def test_notifier_holds_are_timed_and_uncovered_events_counted() -> None:
    """Each routed poll is one hold observation; only events routed without a covering
    Webhook list are counted, and negative inputs (a clock step) add nothing."""
    polls = _value("fintech_notifier_route_hold_seconds_count")
    uncovered = _value("fintech_notifier_routed_uncovered_total")
    metrics.notifier_route_held(1.7, 0)
    metrics.notifier_route_held(60.2, 12)
    metrics.notifier_route_held(-0.5, -3)
    assert _value("fintech_notifier_route_hold_seconds_count") == polls + 3
    assert _value("fintech_notifier_routed_uncovered_total") == uncovered + 12
    assert _value("fintech_notifier_route_hold_seconds_bucket", le="2.0") >= 2


def test_snapshot_replacement_drops_series_that_are_gone() -> None:
    """A consumer group absent from the next snapshot disappears from the output."""
    metrics.SNAPSHOT.set_consumer_lag({("g-old", "postings", 0): 7, ("g-new", "postings", 1): 0})
    assert (
        _value("fintech_consumer_lag_messages", consumer="g-old", topic="postings", partition="0")
        == 7
    )
    metrics.SNAPSHOT.set_consumer_lag({("g-new", "postings", 1): 3})
    assert (
        metrics.sample(
            "fintech_consumer_lag_messages",
            {"consumer": "g-old", "topic": "postings", "partition": "0"},
        )
        is None
    )
    assert (
        _value("fintech_consumer_lag_messages", consumer="g-new", topic="postings", partition="1")
        == 3
    )
    metrics.SNAPSHOT.set_outbox(12, 4.5)
    assert _value("fintech_outbox_backlog") == 12
    assert _value("fintech_outbox_oldest_age_seconds") == 4.5


def test_a_process_that_never_read_the_outbox_exports_its_families_without_samples() -> None:
    """docs/operations.md: every process exports every family, another process's "at 0 or
    without samples". The rewards consumer, the notifier and the gateway run no collector, so
    their outbox gauges are families without a sample (no made-up 0 for a backlog they never
    read); once read, the figures are the samples."""
    fresh = metrics.SnapshotCollector()
    families = {family.name: family for family in fresh.collect()}
    for name in ("fintech_outbox_backlog", "fintech_outbox_oldest_age_seconds"):
        assert name in families
        assert families[name].samples == []
    fresh.set_outbox(3, 1.5)
    read = {family.name: family.samples for family in fresh.collect()}
    assert [s.value for s in read["fintech_outbox_backlog"]] == [3]
    assert [s.value for s in read["fintech_outbox_oldest_age_seconds"]] == [1.5]


@pytest.fixture
def served() -> Iterator[int]:
    server = metrics.serve("127.0.0.1", 0)
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()


def test_metrics_endpoint_serves_prometheus_text(served: int) -> None:
    """``/metrics`` answers on loopback in the text format with the product's metric names."""
    marker = f"Marker{uuid.uuid4().hex[:8]}"
    metrics.rejection("Card", marker)
    response = httpx.get(f"http://127.0.0.1:{served}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name in (
        "fintech_reconcile_duration_seconds",
        "fintech_postings",
        "fintech_posting_amount_minor",
        "fintech_rejections",
        "fintech_consumer_lag_messages",
        "fintech_webhook_deliveries",
        "process_cpu_seconds",
    ):
        assert name in families, name
    reasons = {s.labels.get("reason") for s in families["fintech_rejections"].samples}
    assert marker in reasons


def test_busy_port_fails_with_the_setting_named(served: int) -> None:
    """A port already in use stops start-up with a message naming FINTECH_METRICS_PORT."""
    with pytest.raises(metrics.MetricsServerError, match="FINTECH_METRICS_PORT"):
        metrics.serve("127.0.0.1", served)


def test_metrics_settings_are_bounded() -> None:
    """Metrics are off by default; out-of-range values name their variable."""
    settings = config.load(BASE)
    assert settings.metrics.port == 0
    assert settings.metrics.collect_interval_seconds == 15.0
    for name, bad in (
        ("FINTECH_METRICS_PORT", "70000"),
        ("FINTECH_METRICS_PORT", "-1"),
        ("FINTECH_METRICS_COLLECT_INTERVAL_SECONDS", "0"),
        ("FINTECH_METRICS_CONSUMER_GROUPS_MAX", "100000"),
    ):
        with pytest.raises(config.SettingsError, match=name):
            config.load({**BASE, name: bad})


def test_a_patch_outside_a_handler_counts_only_when_it_rejects() -> None:
    """reconcile.count_rejection (the card review timer's patches): a patch to Rejected counts
    once with its reason; any other patch counts nothing."""
    before = _value("fintech_rejections_total", kind="Card", reason="ReviewRejected")
    reconcile.count_rejection("Card", {"status": {"phase": "Active"}})
    reconcile.count_rejection("Card", {"metadata": {"labels": {}}})
    assert _value("fintech_rejections_total", kind="Card", reason="ReviewRejected") == before
    reconcile.count_rejection("Card", {"status": {"phase": "Rejected", "reason": "ReviewRejected"}})
    assert _value("fintech_rejections_total", kind="Card", reason="ReviewRejected") == before + 1


def test_a_swept_deleted_card_account_counts_by_outcome() -> None:
    """The sweep's two outcomes are two series; nothing else is ever a label value."""
    closed = _value("fintech_deleted_card_accounts_total", outcome="closed")
    left_open = _value("fintech_deleted_card_accounts_total", outcome="left_open")
    metrics.deleted_card_account(True)
    metrics.deleted_card_account(True)
    metrics.deleted_card_account(False)
    assert _value("fintech_deleted_card_accounts_total", outcome="closed") == closed + 2
    assert _value("fintech_deleted_card_accounts_total", outcome="left_open") == left_open + 1
