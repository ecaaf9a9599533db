"""Observability on the real platform: /metrics, OTLP traces and JSON logs of real processes.

One operator and one rewards consumer run for the module, each serving /metrics on its own
loopback port and exporting traces by OTLP/HTTP to a small receiver in this test process.
The examples (a product, a card, a posting of each type) and one posting in the wrong
currency are applied once; the tests then read what the processes exposed about that work.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Kubectl, OperatorProcesses, wait_for

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PURCHASE = "purchase-0001"
PURCHASE_MINOR = 12_500
WRONG_CURRENCY = """
apiVersion: fintech.dev/v1alpha1
kind: Posting
metadata:
  name: wrong-currency
spec:
  card: u-demo-card
  type: Purchase
  amount: 100
  currency: EUR
"""
# What a PAN scanner looks for in a log: a standalone run of 13-19 digits.
PAN_SHAPED = re.compile(r"(?<![\w-])\d{13,19}(?![\w-])")
HEX32 = re.compile(r"[0-9a-f]{32}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class OtlpReceiver:
    """Accepts OTLP/HTTP protobuf exports on 127.0.0.1 and keeps every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                with receiver._lock:
                    receiver.requests.append((self.path, self.headers["Content-Type"], body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def spans(self) -> list[dict[str, Any]]:
        """Every span received so far, flattened with its service name."""
        with self._lock:
            requests = list(self.requests)
        found: list[dict[str, Any]] = []
        for _path, _type, body in requests:
            export = ExportTraceServiceRequest.FromString(body)
            for resource_spans in export.resource_spans:
                resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        found.append(
                            {
                                "service": resource.get("service.name"),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "links": {link.trace_id.hex() for link in span.links},
                                "attributes": {
                                    a.key: a.value.string_value or a.value.int_value
                                    for a in span.attributes
                                },
                            }
                        )
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Observed:
    procs: OperatorProcesses
    operator_port: int
    rewards_port: int
    group: str
    otlp: OtlpReceiver


@pytest.fixture(scope="module")
def observed(
    operator_env: dict[str, str],
    crds_installed: None,
    operator_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Observed]:
    """The operator and the rewards consumer with /metrics on and OTLP export to a receiver.

    The two processes share a host here, so each gets its own metrics port; that is why this
    module starts them itself instead of using the shared ``operator_processes`` fixture.
    """
    otlp = OtlpReceiver()
    base = {
        **operator_env,
        # Own topics: other modules' consumers never see this module's events, nor it theirs.
        "FINTECH_TOPIC_PREFIX": f"{operator_prefix}.",
        "FINTECH_METRICS_COLLECT_INTERVAL_SECONDS": "1",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    operator_port, rewards_port = _free_port(), _free_port()
    procs = OperatorProcesses(
        {**base, "FINTECH_METRICS_PORT": str(operator_port)}, tmp_path_factory.mktemp("obs")
    )
    group = f"rewards-{operator_prefix}"
    procs.start_operator(operator_prefix)
    procs.env = {**base, "FINTECH_METRICS_PORT": str(rewards_port)}
    procs.start("rewards", "rewards", "--group", group)
    try:
        yield Observed(procs, operator_port, rewards_port, group, otlp)
    finally:
        procs.stop()
        otlp.close()


def _status(kubectl: Kubectl, namespace: str, kind: str, name: str) -> dict[str, Any]:
    out = kubectl("get", "-n", namespace, kind, name, "-o", "json").stdout
    status: dict[str, Any] = json.loads(out).get("status") or {}
    return status


@pytest.fixture(scope="module")
def applied(kubectl: Kubectl, observed: Observed, operator_prefix: str) -> Iterator[dict[str, Any]]:
    """The examples and a wrong-currency posting, applied once and decided."""
    namespace = f"{operator_prefix}-{uuid.uuid4().hex[:6]}"
    kubectl("create", "namespace", namespace)
    kubectl("apply", "-n", namespace, "-f", str(EXAMPLES))
    kubectl("apply", "-n", namespace, "-f", "-", input=WRONG_CURRENCY)

    def decided(name: str) -> dict[str, Any] | None:
        status = _status(kubectl, namespace, "posting", name)
        return status if status.get("phase") in ("Posted", "Rejected") else None

    try:
        purchase = wait_for(f"{PURCHASE} decided", lambda: decided(PURCHASE), 120)
        wrong = wait_for("wrong-currency decided", lambda: decided("wrong-currency"), 120)
    except AssertionError:
        print(observed.procs.log("operator")[-5000:])
        raise
    assert purchase["phase"] == "Posted", purchase
    assert wrong["phase"] == "Rejected", wrong
    card = _status(kubectl, namespace, "card", "u-demo-card")
    yield {"namespace": namespace, "purchase": purchase, "wrong": wrong, "card": card}
    kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _get(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def test_metrics_move_for_real_reconciles(observed: Observed, applied: dict[str, Any]) -> None:
    """Posting counters, amounts, reconcile histogram and rejections move; the outbox backlog
    and the consumer group's lag are exported and settle at zero once everything is relayed."""
    reason = str(applied["wrong"]["reason"])
    posted = {"type": "Purchase", "currency": "USD"}

    def ready() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        samples = _scrape(observed.operator_port)
        lag = [
            value
            for (name, labels), value in samples.items()
            if name == "fintech_consumer_lag_messages" and ("consumer", observed.group) in labels
        ]
        # Settled: the outbox is drained and the rewards consumer has committed everything.
        wanted = (
            (_get(samples, "fintech_postings_total", **posted, outcome="posted") or 0) >= 1
            and (_get(samples, "fintech_rejections_total", kind="Posting", reason=reason) or 0) >= 1
            and _get(samples, "fintech_outbox_backlog") == 0
            and bool(lag)
            and sum(lag) == 0
        )
        return samples if wanted else None

    samples = wait_for("operator metrics to settle after the examples", ready, 120)
    assert (_get(samples, "fintech_posting_amount_minor_total", **posted) or 0) >= PURCHASE_MINOR
    rejected = {"type": "Purchase", "currency": "EUR", "outcome": "rejected"}
    assert _get(samples, "fintech_postings_total", **rejected) == 1
    reconciled = _get(
        samples,
        "fintech_reconcile_duration_seconds_count",
        kind="Posting",
        handler="post",
        outcome="success",
    )
    assert reconciled is not None
    assert reconciled >= 1
    buckets = [
        k
        for k in samples
        if k[0] == "fintech_reconcile_duration_seconds_bucket" and ("kind", "Card") in k[1]
    ]
    assert buckets, "the Card reconcile histogram has buckets"
    assert _get(samples, "fintech_outbox_oldest_age_seconds") is not None
    produced = [
        value
        for (name, labels), value in samples.items()
        if name == "fintech_kafka_produced_total"
        and dict(labels).get("topic", "").endswith("postings")
        and dict(labels).get("outcome") == "ok"
    ]
    assert produced, "the relay counted the postings it sent"
    assert produced[0] >= 1

    def consumed() -> float | None:
        value = _get(
            _scrape(observed.rewards_port),
            "fintech_consumer_events_total",
            consumer="rewards",
            outcome="applied",
        )
        return value if value and value >= 1 else None

    assert wait_for("the rewards consumer's applied counter", consumed, 120) >= 1


PENDING_KYC_CARD = """
apiVersion: fintech.dev/v1alpha1
kind: Card
metadata:
  name: u-review
spec:
  userId: u_review
  product: standard
  holder: {name: Review Person, country: US, kycStatus: Pending}
"""
REVIEW_REJECT = """
apiVersion: fintech.dev/v1alpha1
kind: CardReview
metadata:
  name: u-review-no
spec:
  card: u-review
  decision: Reject
  reviewer: reviewer@example.com
  comment: The documents do not match.
"""


def test_a_reviewers_rejection_is_counted(
    kubectl: Kubectl, observed: Observed, applied: dict[str, Any]
) -> None:
    """A card rejected by its CardReview counts in fintech_rejections_total like any other
    rejection, although the review is applied by the namespace's timer, not the card's handler."""
    namespace = applied["namespace"]

    def phase(wanted: str) -> dict[str, Any] | None:
        status = _status(kubectl, namespace, "card", "u-review")
        return status if status.get("phase") == wanted else None

    # The examples' CompliancePolicy sends a Pending KYC to review (allowReview: true).
    kubectl("apply", "-n", namespace, "-f", "-", input=PENDING_KYC_CARD)
    wait_for("u-review in PendingReview", lambda: phase("PendingReview"), 120)
    kubectl("apply", "-n", namespace, "-f", "-", input=REVIEW_REJECT)
    rejected = wait_for("u-review rejected by its review", lambda: phase("Rejected"), 120)
    assert rejected["reason"] == "ReviewRejected", rejected

    def counted() -> float | None:
        samples = _scrape(observed.operator_port)
        value = _get(samples, "fintech_rejections_total", kind="Card", reason="ReviewRejected")
        return value if value else None

    assert wait_for("the ReviewRejected rejection counted", counted, 30) == 1


def test_one_trace_spans_handler_database_kafka_and_consumer(
    observed: Observed, applied: dict[str, Any]
) -> None:
    """The purchase's trace, exported by OTLP/HTTP, reaches from its handler and its SQL through
    the relay's send to the rewards consumer's processing and SQL.

    The relay and the consumer work in batches: a batch of one trace joins it, a batch of
    several links to each (OpenTelemetry's messaging conventions), so both count here.
    """
    namespace = applied["namespace"]

    def joined(spans: list[dict[str, Any]], trace_id: str, service: str, verb: str) -> Any:
        return next(
            (
                s
                for s in spans
                if s["service"] == service
                and s["name"].startswith(f"{verb} ")
                and s["name"].endswith("postings")
                and (s["trace_id"] == trace_id or trace_id in s["links"])
            ),
            None,
        )

    def complete() -> tuple[str, list[dict[str, Any]], dict[str, Any], dict[str, Any]] | None:
        spans = observed.otlp.spans()
        handler = [
            s
            for s in spans
            if s["name"] == "reconcile Posting"
            and s["attributes"].get("k8s.resource.name") == PURCHASE
            and s["attributes"].get("k8s.namespace.name") == namespace
            and s["attributes"].get("fintech.outcome") == "success"
        ]
        if not handler:
            return None
        trace_id = handler[0]["trace_id"]
        send = joined(spans, trace_id, "fintech-operator", "send")
        process = joined(spans, trace_id, "fintech-rewards", "process")
        if send is None or process is None:
            return None
        return trace_id, spans, send, process

    trace_id, spans, _send, process = wait_for(
        "the purchase's trace at the receiver", complete, 120
    )
    paths = {(path, content_type) for path, content_type, _ in observed.otlp.requests}
    assert ("/v1/traces", "application/x-protobuf") in paths
    in_trace = [s for s in spans if s["trace_id"] == trace_id]
    operator_sql = {
        s["name"] for s in in_trace if s["attributes"].get("db.system.name") == "postgresql"
    }
    assert "INSERT outbox" in operator_sql, operator_sql
    consumer_sql = [
        s
        for s in spans
        if s["trace_id"] == process["trace_id"]
        and s["service"] == "fintech-rewards"
        and s["attributes"].get("db.system.name") == "postgresql"
    ]
    assert consumer_sql, "the consumer's transaction is in the trace of its processing"
    assert HEX32.fullmatch(trace_id)


def test_logs_are_json_with_trace_ids_and_no_card_numbers(
    observed: Observed, applied: dict[str, Any]
) -> None:
    """Every log line is JSON; the purchase's lines name it, its card token and its trace."""
    namespace = applied["namespace"]
    token = applied["card"]["token"]
    lines: list[dict[str, Any]] = []
    for name in ("operator", "rewards"):
        for raw in observed.procs.log(name).splitlines():
            if raw.strip():
                lines.append(json.loads(raw))
    purchase = [
        line
        for line in lines
        if (line.get("resource") or {}).get("name") == PURCHASE
        and (line.get("resource") or {}).get("namespace") == namespace
    ]
    ours = [line for line in purchase if line["logger"].startswith("fintech_operator.")]
    assert ours, "the operator logged the purchase's reconciles"
    assert all(HEX32.fullmatch(line.get("trace_id", "")) for line in ours), ours
    assert all(line.get("card") == f"{namespace}/u-demo-card" for line in ours), ours
    success = [line for line in ours if line.get("outcome") == "success"]
    assert [line.get("card_token") for line in success] == [token], success
    exported = {span["trace_id"] for span in observed.otlp.spans()}
    assert success[0]["trace_id"] in exported, "the log line leads to an exported trace"
    assert any(line["logger"] == "kopf.objects" for line in purchase), "kopf's lines too"
    for line in lines:
        # Trace and span ids are hex identifiers, checked above; everything else is scanned.
        rest = {k: v for k, v in line.items() if k not in ("trace_id", "span_id")}
        assert not PAN_SHAPED.search(json.dumps(rest)), line
