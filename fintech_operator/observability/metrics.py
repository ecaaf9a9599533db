"""Prometheus metrics of the product: one registry, named metrics, bounded labels.

Every metric lives in :data:`REGISTRY` (not prometheus_client's global one, so a test or an
embedding program sees exactly ours) and is changed only through the small functions below.
Each function maps its inputs onto a fixed, bounded set of label values: a label value that
comes from a user's YAML (a currency, a posting type, a rejection reason) is checked against
its expected shape and becomes ``other`` when it does not fit, so a typo in a resource can
never create an unbounded number of time series.

Names carry their unit at the end (``_seconds``, ``_messages``, ``_minor``) as Prometheus'
conventions ask. Amounts are exported as the sum of integer minor units. Prometheus stores
every sample as a float64, which is exact for integers up to 2**53 (about 90 trillion dollars
in cents); the metric is telemetry for dashboards and alerts, never read back into the ledger,
so invariant 4 (no float touches an amount) holds for the books.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import wsgiref.simple_server
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from fintech_operator import api

log = logging.getLogger(__name__)

REGISTRY: Final = CollectorRegistry(auto_describe=True)
prometheus_client.ProcessCollector(registry=REGISTRY)
prometheus_client.PlatformCollector(registry=REGISTRY)
prometheus_client.GCCollector(registry=REGISTRY)

OTHER: Final = "other"
# Reconciles span from a few milliseconds (a status patch) to seconds (a contended ledger
# transaction retried after a serialization failure); the buckets cover both ends.
RECONCILE_BUCKETS_SECONDS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
WEBHOOK_BUCKETS_SECONDS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

RECONCILE_OUTCOMES: Final = frozenset(
    {"success", "rejected", "retry", "failed", "error", "cancelled"}
)
# The API declares the posting types once; a label outside them is folded into ``other``.
POSTING_TYPES: Final = frozenset(t.value for t in api.PostingType)
POSTING_OUTCOMES: Final = frozenset({"posted", "replayed", "rejected"})
WEBHOOK_OUTCOMES: Final = frozenset({"delivered", "failed", "exhausted"})
PRODUCE_OUTCOMES: Final = frozenset({"ok", "error"})
# The counts a consumer's batch result may carry, each an ``outcome`` of
# fintech_consumer_events_total (``error`` is counted when the batch raises). ``ignored``:
# records the consumer read and skipped on purpose (the rewards consumer's authorization steps
# that earn nothing).
CONSUMER_BATCH_OUTCOMES: Final = ("applied", "duplicates", "dead_lettered", "ignored")

_CURRENCY = re.compile(r"[A-Z]{3}")
# Reasons and kinds are CamelCase words from fixed sets in the code; anything else is a bug
# or user input and is folded into ``other``.
_WORD = re.compile(r"[A-Za-z][A-Za-z0-9]{0,63}")
_TOKEN = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")

build_info = Gauge(
    "fintech_build_info",
    "Always 1; the labels name the running version and process.",
    ["version", "service"],
    registry=REGISTRY,
)
reconcile_duration_seconds = Histogram(
    "fintech_reconcile_duration_seconds",
    "Time spent in one kopf handler call, by resource kind, handler and outcome "
    "(success, rejected, retry, failed, error, cancelled). Its _count is the number of reconciles.",
    ["kind", "handler", "outcome"],
    buckets=RECONCILE_BUCKETS_SECONDS,
    registry=REGISTRY,
)
rejections_total = Counter(
    "fintech_rejections_total",
    "Resources moved to phase Rejected, by kind and reason (status.reason).",
    ["kind", "reason"],
    registry=REGISTRY,
)
deleted_card_accounts_total = Counter(
    "fintech_deleted_card_accounts_total",
    "Accounts of deleted cards that nothing had closed, found by the card refresh's sweep: "
    "their token retired and the account closed, or left open with its balance.",
    ["outcome"],
    registry=REGISTRY,
)
postings_total = Counter(
    "fintech_postings_total",
    "Posting resources decided, by type, currency and outcome (posted, replayed, rejected).",
    ["type", "currency", "outcome"],
    registry=REGISTRY,
)
posting_amount_minor_total = Counter(
    "fintech_posting_amount_minor_total",
    "Sum of the amounts of newly posted Postings, in minor units of the currency.",
    ["type", "currency"],
    registry=REGISTRY,
)
kafka_produced_total = Counter(
    "fintech_kafka_produced_total",
    "Messages handed to Kafka by this process, by topic and outcome of the broker ack.",
    ["topic", "outcome"],
    registry=REGISTRY,
)
consumer_events_total = Counter(
    "fintech_consumer_events_total",
    "Kafka records handled by a consumer, by outcome (applied, duplicates, dead_lettered, "
    "ignored, error).",
    ["consumer", "outcome"],
    registry=REGISTRY,
)
webhook_deliveries_total = Counter(
    "fintech_webhook_deliveries_total",
    "Webhook delivery attempts, by outcome: delivered, failed (will retry), exhausted (gave up).",
    ["outcome"],
    registry=REGISTRY,
)
webhook_delivery_duration_seconds = Histogram(
    "fintech_webhook_delivery_duration_seconds",
    "Time of one webhook HTTP delivery attempt, by outcome.",
    ["outcome"],
    buckets=WEBHOOK_BUCKETS_SECONDS,
    registry=REGISTRY,
)
# A batch normally waits up to the notifier's clock skew allowance (2 s) plus one list of
# Webhooks; the long buckets show an API server that could not be read.
NOTIFIER_HOLD_BUCKETS_SECONDS: Final = (0.01, 0.1, 0.5, 1.0, 2.0, 2.5, 3.0, 5.0, 10.0, 30.0, 60.0)
notifier_route_hold_seconds = Histogram(
    "fintech_notifier_route_hold_seconds",
    "Time the notifier held one poll of events before routing it, waiting for a list of "
    "Webhooks that started after its newest event (plus the clock skew allowance).",
    buckets=NOTIFIER_HOLD_BUCKETS_SECONDS,
    registry=REGISTRY,
)
notifier_routed_uncovered_total = Counter(
    "fintech_notifier_routed_uncovered_total",
    "Events the notifier routed after FINTECH_NOTIFIER_ROUTE_HOLD_MAX_SECONDS with a Webhook "
    "list older than them (Webhooks could not be listed); a Webhook created after that list "
    "got none of them.",
    registry=REGISTRY,
)
collect_errors_total = Counter(
    "fintech_metrics_collect_errors_total",
    "Failed runs of the periodic collector, by source (outbox, consumer_lag).",
    ["source"],
    registry=REGISTRY,
)

# The gateway answers within a 1.5 s budget and aims at a few milliseconds: fine buckets low.
GATEWAY_BUCKETS_SECONDS: Final = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 1.5, 2.5, 5.0,
)  # fmt: skip
GATEWAY_ENDPOINTS: Final = frozenset({"authorize", "increment", "capture", "void", "get"})
GATEWAY_REFUSALS: Final = frozenset(
    {"unsigned", "stale", "bad_signature", "too_large", "invalid", "card_number"}
)
gateway_requests_total = Counter(
    "fintech_gateway_requests_total",
    "Requests answered by the authorization gateway, by endpoint and HTTP status code.",
    ["endpoint", "code"],
    registry=REGISTRY,
)
gateway_request_duration_seconds = Histogram(
    "fintech_gateway_request_duration_seconds",
    "Time from a request's arrival at the gateway to its answer, by endpoint.",
    ["endpoint"],
    buckets=GATEWAY_BUCKETS_SECONDS,
    registry=REGISTRY,
)
gateway_refused_total = Counter(
    "fintech_gateway_refused_total",
    "Requests refused before any work, by why: unsigned, stale, bad_signature (401), "
    "too_large (413), invalid, card_number (422).",
    ["reason"],
    registry=REGISTRY,
)
gateway_decisions_total = Counter(
    "fintech_gateway_decisions_total",
    "Answers that carry a reason (Approved or a decline reason), by endpoint and reason.",
    ["endpoint", "reason"],
    registry=REGISTRY,
)
gateway_in_flight = Gauge(
    "fintech_gateway_in_flight",
    "Signed requests the gateway is working on now (bounded by FINTECH_GATEWAY_IN_FLIGHT_MAX).",
    registry=REGISTRY,
    # With several gateway worker processes: the sum over the live ones.
    multiprocess_mode="livesum",
)
gateway_waiting = Gauge(
    "fintech_gateway_waiting",
    "Signed requests waiting for an in-flight slot now (bounded by FINTECH_GATEWAY_QUEUE_MAX).",
    registry=REGISTRY,
    multiprocess_mode="livesum",
)
gateway_settle_total = Counter(
    "fintech_gateway_settle_total",
    "Requests that missed their deadline and were settled afterwards, by outcome "
    "(settled, failed: retries ran out and the request needs an operator's look).",
    ["outcome"],
    registry=REGISTRY,
)


def _word(value: object) -> str:
    text = str(value) if value is not None else ""
    return text if _WORD.fullmatch(text) else OTHER


def _token(value: object) -> str:
    text = str(value) if value is not None else ""
    return text if _TOKEN.fullmatch(text) else OTHER


def _member(value: object, allowed: frozenset[str]) -> str:
    return value if isinstance(value, str) and value in allowed else OTHER


def currency_label(value: object) -> str:
    """An ISO 4217-shaped code, or ``other``."""
    return value if isinstance(value, str) and _CURRENCY.fullmatch(value) else OTHER


def reconcile(kind: object, handler: str, outcome: str, duration_seconds: float) -> None:
    """Record one handler call of ``kind`` that ended with ``outcome``."""
    reconcile_duration_seconds.labels(
        _word(kind), handler[:64], _member(outcome, RECONCILE_OUTCOMES)
    ).observe(max(0.0, duration_seconds))


def rejection(kind: object, reason: object) -> None:
    """Count a resource that moved to phase Rejected with ``reason``."""
    rejections_total.labels(_word(kind), _word(reason)).inc()


def deleted_card_account(closed: bool) -> None:
    """Count a deleted card's account the sweep found: ``closed``, or left open (a balance)."""
    deleted_card_accounts_total.labels("closed" if closed else "left_open").inc()


def posting_decided(spec: Mapping[str, Any] | None, outcome: str) -> None:
    """Count a decided Posting; only a new ``posted`` one adds its amount.

    ``spec`` is the resource's spec as the user wrote it (``type``, ``amount``, ``currency``).
    A replay returns the first journal and posts nothing, so its amount is not added twice.
    """
    spec = spec or {}
    type_ = _member(spec.get("type"), POSTING_TYPES)
    currency = currency_label(spec.get("currency"))
    postings_total.labels(type_, currency, _member(outcome, POSTING_OUTCOMES)).inc()
    amount = spec.get("amount")
    # bool is an int in Python; an amount is never a bool (or a float: invariant 4).
    if outcome == "posted" and type(amount) is int and amount > 0:
        posting_amount_minor_total.labels(type_, currency).inc(amount)


def kafka_produced(topic: str, ok: bool, count: int = 1) -> None:
    """Count ``count`` messages acknowledged (or failed) by the broker."""
    kafka_produced_total.labels(_token(topic), "ok" if ok else "error").inc(max(0, count))


def consumer_event(consumer: str, outcome: str, count: int = 1) -> None:
    """Count ``count`` records handled by ``consumer`` with ``outcome``."""
    consumer_events_total.labels(_token(consumer), _token(outcome)).inc(max(0, count))


def webhook_delivery(outcome: str, duration_seconds: float) -> None:
    """Record one webhook delivery attempt: ``delivered``, ``failed`` or ``exhausted``."""
    label = _member(outcome, WEBHOOK_OUTCOMES)
    webhook_deliveries_total.labels(label).inc()
    webhook_delivery_duration_seconds.labels(label).observe(max(0.0, duration_seconds))


def notifier_route_held(held_seconds: float, uncovered: int) -> None:
    """Record one routed poll: how long it waited, and its events routed uncovered."""
    notifier_route_hold_seconds.observe(max(0.0, held_seconds))
    notifier_routed_uncovered_total.inc(max(0, uncovered))


def collect_error(source: str) -> None:
    """Count a failed run of a periodic collector."""
    collect_errors_total.labels(_token(source)).inc()


def gateway_answered(endpoint: str, code: int, duration_seconds: float) -> None:
    """Count one answer of the gateway and time it."""
    label = _member(endpoint, GATEWAY_ENDPOINTS)
    gateway_requests_total.labels(label, str(code) if 100 <= code <= 599 else OTHER).inc()
    gateway_request_duration_seconds.labels(label).observe(max(0.0, duration_seconds))


def gateway_refused(reason: str) -> None:
    """Count a request refused before any work (401, 413, 422)."""
    gateway_refused_total.labels(_member(reason, GATEWAY_REFUSALS)).inc()


def gateway_decision(endpoint: str, reason: object) -> None:
    """Count an answer's reason; ``RiskDeclined:<rule>`` counts as ``RiskDeclined``."""
    word = str(reason).split(":", 1)[0] if reason is not None else ""
    gateway_decisions_total.labels(_member(endpoint, GATEWAY_ENDPOINTS), _word(word)).inc()


def gateway_settled(ok: bool) -> None:
    """Count a request settled after its deadline (or given up on)."""
    gateway_settle_total.labels("settled" if ok else "failed").inc()


@dataclass
class _Snapshot:
    outbox_backlog: int | None = None
    outbox_oldest_age_seconds: float | None = None
    consumer_lag: dict[tuple[str, str, int], int] = field(default_factory=dict)


class SnapshotCollector(Collector):
    """Gauges read from a snapshot the periodic collector replaces as a whole.

    Replacing the snapshot (rather than setting long-lived gauges) drops the series of a
    consumer group or partition that no longer exists, with no bookkeeping of what was set.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot = _Snapshot()

    def set_outbox(self, backlog: int, oldest_age_seconds: float) -> None:
        with self._lock:
            self._snapshot.outbox_backlog = backlog
            self._snapshot.outbox_oldest_age_seconds = oldest_age_seconds

    def set_consumer_lag(self, lag: Mapping[tuple[str, str, int], int]) -> None:
        with self._lock:
            self._snapshot.consumer_lag = dict(lag)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            snap = _Snapshot(
                self._snapshot.outbox_backlog,
                self._snapshot.outbox_oldest_age_seconds,
                dict(self._snapshot.consumer_lag),
            )
        # Every process exports every family (docs/operations.md): one whose collector has not
        # read the outbox (the consumers, the gateway, the operator before its first read)
        # exports these two without a sample, never a made-up 0.
        backlog = GaugeMetricFamily(
            "fintech_outbox_backlog",
            "Outbox rows not yet published to Kafka (counted up to a cap).",
        )
        if snap.outbox_backlog is not None:
            backlog.add_metric([], snap.outbox_backlog)
        yield backlog
        oldest = GaugeMetricFamily(
            "fintech_outbox_oldest_age_seconds",
            "Age of the oldest unpublished outbox row; 0 when the outbox is empty.",
        )
        if snap.outbox_oldest_age_seconds is not None:
            oldest.add_metric([], snap.outbox_oldest_age_seconds)
        yield oldest
        lag = GaugeMetricFamily(
            "fintech_consumer_lag_messages",
            "Messages between a consumer group's committed offset and the partition's end.",
            labels=["consumer", "topic", "partition"],
        )
        for (group, topic, partition), value in sorted(snap.consumer_lag.items()):
            lag.add_metric([group, topic, str(partition)], value)
        yield lag


SNAPSHOT: Final = SnapshotCollector()
REGISTRY.register(SNAPSHOT)


class MetricsServerError(RuntimeError):
    """The /metrics server could not start; the message names the address and setting."""


# Set (by ``fintech-operator gateway --workers N``) when several processes share the metrics:
# each writes its values to files in this directory, and /metrics adds them up.
MULTIPROCESS_DIR_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The shared metrics directory of the gateway's workers, or None (one process).

    Not a setting of ours: the environment is how prometheus_client learns it (it picks its
    value class from this variable when first imported, in each worker) and how the gateway's
    supervisor hands it to the worker processes uvicorn starts. Read at call time only."""
    return os.environ.get(MULTIPROCESS_DIR_VARIABLE) or None


def exposed_registry() -> CollectorRegistry:
    """What ``/metrics`` shows: :data:`REGISTRY`, or with several worker processes
    (``PROMETHEUS_MULTIPROC_DIR`` set) the sum over all of them (their process metrics, which
    prometheus_client cannot add up, are then left out)."""
    if multiprocess_dir() is None:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def exposition() -> tuple[bytes, str]:
    """The body and content type of ``/metrics``."""
    body = prometheus_client.generate_latest(exposed_registry())
    return body, prometheus_client.CONTENT_TYPE_LATEST


def serve(host: str, port: int) -> wsgiref.simple_server.WSGIServer:
    """Serve ``/metrics`` from :func:`exposed_registry` on ``host:port`` in a daemon thread.

    Port 0 asks the OS for a free port (tests use it); read ``server.server_port``.
    """
    try:
        server, _thread = prometheus_client.start_http_server(
            port, addr=host, registry=exposed_registry()
        )
    except OSError as exc:
        raise MetricsServerError(
            f"cannot serve /metrics on {host}:{port} (FINTECH_METRICS_PORT): {exc.strerror or exc}"
        ) from None
    log.info("serving /metrics on %s:%d", host, server.server_port)
    return server


def sample(name: str, labels: Mapping[str, str] | None = None) -> float | None:
    """The current value of one sample, or None; for tests and diagnostics."""
    value: float | None = REGISTRY.get_sample_value(name, dict(labels or {}))
    return value


__all__ = [
    "CONSUMER_BATCH_OUTCOMES",
    "REGISTRY",
    "SNAPSHOT",
    "MetricsServerError",
    "collect_error",
    "consumer_event",
    "currency_label",
    "deleted_card_account",
    "exposed_registry",
    "exposition",
    "gateway_answered",
    "gateway_decision",
    "gateway_refused",
    "gateway_settled",
    "kafka_produced",
    "multiprocess_dir",
    "posting_decided",
    "reconcile",
    "rejection",
    "sample",
    "serve",
    "webhook_delivery",
]
