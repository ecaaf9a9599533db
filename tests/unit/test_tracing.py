"""Tracing helpers and the kopf handler wrapper, observed with the SDK's in-memory exporter."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import kopf
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from fintech_operator import config, logs, pan
from fintech_operator.observability import metrics, reconcile, tracing


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """Spans of the code under test, kept in memory; the previous provider is restored."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    previous = tracing.install(provider)
    try:
        yield exporter
    finally:
        tracing.install(previous)
        provider.shutdown()


def _named(exporter: InMemorySpanExporter, name: str) -> ReadableSpan:
    found = [s for s in exporter.get_finished_spans() if s.name == name]
    assert len(found) == 1, [s.name for s in exporter.get_finished_spans()]
    return found[0]


def _body(kind: str, status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "kind": kind,
        "metadata": {"namespace": "ns1", "name": "obj1", "uid": "u-1"},
        "spec": spec,
        "status": status or {},
    }


def _count(kind: str, handler: str, outcome: str) -> float:
    labels = {"kind": kind, "handler": handler, "outcome": outcome}
    return metrics.sample("fintech_reconcile_duration_seconds_count", labels) or 0.0


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.formatter_ = logs.JsonFormatter()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.formatter_.format(record))


async def test_wrapped_handler_is_a_span_with_its_resource_and_timing(
    spans: InMemorySpanExporter,
) -> None:
    """A successful handler becomes ``reconcile <Kind>``, is timed, and logs with its trace."""
    capture = _Capture()
    logging.getLogger("test.handler").addHandler(capture)
    seen: dict[str, Any] = {}

    async def issue(**kwargs: Any) -> str:
        logging.getLogger("test.handler").warning("inside")
        seen["headers"] = tracing.context_headers()
        return "done"

    wrapped = reconcile.wrap(issue, "issue")
    body = _body("Card", status={"token": "tok_abc"})
    before = _count("Card", "issue", "success")
    try:
        assert await wrapped(body=body, patch=kopf.Patch()) == "done"
    finally:
        logging.getLogger("test.handler").removeHandler(capture)
    span = _named(spans, "reconcile Card")
    assert span.attributes is not None
    assert span.attributes["k8s.resource.name"] == "obj1"
    assert span.attributes["fintech.outcome"] == "success"
    assert _count("Card", "issue", "success") == before + 1
    trace_id = trace.format_trace_id(span.context.trace_id)
    assert seen["headers"]["traceparent"].split("-")[1] == trace_id
    inside = [line for line in capture.lines if '"inside"' in line]
    assert len(inside) == 1
    assert f'"trace_id": "{trace_id}"' in inside[0]
    assert '"card_token": "tok_abc"' in inside[0]
    assert '"namespace": "ns1"' in inside[0]


async def test_rejection_is_an_outcome_with_its_reason(spans: InMemorySpanExporter) -> None:
    """A handler that sets phase Rejected counts a rejection by reason and a rejected posting."""

    async def post(patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Rejected"
        patch.status["reason"] = "CurrencyMismatch"

    body = _body("Posting", type="Refund", amount=10, currency="GBP", card="c1")
    rejected_before = metrics.sample(
        "fintech_rejections_total", {"kind": "Posting", "reason": "CurrencyMismatch"}
    )
    posting_labels = {"type": "Refund", "currency": "GBP", "outcome": "rejected"}
    postings_before = metrics.sample("fintech_postings_total", posting_labels) or 0.0
    await reconcile.wrap(post, "post")(body=body, patch=kopf.Patch())
    attributes = _named(spans, "reconcile Posting").attributes or {}
    assert attributes["fintech.outcome"] == "rejected"
    rejected_after = metrics.sample(
        "fintech_rejections_total", {"kind": "Posting", "reason": "CurrencyMismatch"}
    )
    assert rejected_after == (rejected_before or 0.0) + 1
    assert metrics.sample("fintech_postings_total", posting_labels) == postings_before + 1


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (kopf.TemporaryError("later", delay=1), "retry"),
        (kopf.PermanentError("never"), "failed"),
        (RuntimeError("boom"), "error"),
    ],
)
async def test_errors_pass_through_unchanged_with_their_outcome(
    spans: InMemorySpanExporter, error: Exception, outcome: str
) -> None:
    """kopf sees the very exception the handler raised; the outcome names its class."""

    async def refresh(**_: Any) -> None:
        raise error

    before = _count("Card", "refresh", outcome)
    with pytest.raises(type(error)) as raised:
        await reconcile.wrap(refresh, "refresh", periodic=True)(body=_body("Card"))
    assert raised.value is error
    assert _count("Card", "refresh", outcome) == before + 1
    assert _named(spans, "reconcile Card").attributes["fintech.outcome"] == outcome  # type: ignore[index]


def test_instrument_wraps_resource_and_timer_handlers_only() -> None:
    """Create and timer handlers are wrapped once; daemons and indexes stay as they are."""
    registry = kopf.OperatorRegistry()

    @kopf.on.create("x.dev", "v1", "things", registry=registry)
    async def create(**_: Any) -> None: ...

    @kopf.timer("x.dev", "v1", "things", interval=5, registry=registry)
    async def tick(**_: Any) -> None: ...

    @kopf.daemon("x.dev", "v1", "things", registry=registry)
    async def forever(**_: Any) -> None: ...

    @kopf.index("x.dev", "v1", "things", registry=registry)
    def things(**_: Any) -> dict[str, int]:
        return {}

    @kopf.on.update("x.dev", "v1", "things", registry=registry)
    def sync_update(**_: Any) -> None: ...

    assert reconcile.instrument(registry) == 2
    assert reconcile.instrument(registry) == 0
    fns = [
        h.fn
        for h in [*registry._changing.get_all_handlers(), *registry._spawning.get_all_handlers()]
    ]
    unwrapped = [getattr(fn, "__wrapped__", None) for fn in fns]
    assert create in unwrapped
    assert tick in unwrapped
    assert sync_update in fns
    assert forever in fns


def test_context_headers_are_empty_outside_a_span(spans: InMemorySpanExporter) -> None:
    """With no current span there is no trace to continue, so no header is written."""
    assert tracing.context_headers() == {}


@dataclass(frozen=True)
class _Message:
    """The shape the relay sends: a topic and Kafka headers."""

    topic: str
    headers: tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class _Record:
    """The shape a consumer receives (aiokafka's ConsumerRecord fields that matter here)."""

    topic: str
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes], ...]


@dataclass
class _Outcome:
    applied: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    ignored: int = 0


def _carrying(name: str) -> tuple[trace.SpanContext, tuple[tuple[str, bytes], ...]]:
    """A finished span's context and the Kafka headers an outbox row of it would carry."""
    with tracing.span(name) as current:
        headers = tracing.context_headers()
    carried = tuple((k, v.encode()) for k, v in headers.items())
    return current.get_span_context(), (("event-id", b"e-1"), *carried)


def _produced(topic: str, outcome: str) -> float:
    return (
        metrics.sample("fintech_kafka_produced_total", {"topic": topic, "outcome": outcome}) or 0.0
    )


def _consumed(outcome: str) -> float:
    labels = {"consumer": "rewards", "outcome": outcome}
    return metrics.sample("fintech_consumer_events_total", labels) or 0.0


async def test_send_of_one_trace_continues_it(spans: InMemorySpanExporter) -> None:
    """A batch whose rows come from one handler is a child of that handler's span."""
    handler, headers = _carrying("reconcile Posting")
    sent: list[list[_Message]] = []

    @tracing.kafka_send
    async def send_all(producer: object, messages: list[_Message]) -> None:
        sent.append(messages)

    before = _produced("postings", "ok")
    await send_all(None, [_Message("postings", headers), _Message("postings", headers)])
    send = _named(spans, "send postings")
    assert send.kind is SpanKind.PRODUCER
    assert send.parent is not None
    assert send.parent.span_id == handler.span_id
    assert send.context.trace_id == handler.trace_id
    assert dict(sent[0][0].headers)["traceparent"] == dict(headers)["traceparent"]
    assert _produced("postings", "ok") == before + 2


async def test_send_of_several_traces_links_to_each(spans: InMemorySpanExporter) -> None:
    """A batch mixing rows of two handlers (or rows with no trace) links instead of parenting."""
    first, first_headers = _carrying("reconcile Posting")
    second, second_headers = _carrying("reconcile Posting")

    @tracing.kafka_send
    async def send_all(producer: object, messages: list[_Message]) -> None:
        return None

    messages = [
        _Message("postings", first_headers),
        _Message("cards", second_headers),
        _Message("cards", ()),
    ]
    await send_all(None, messages)
    send = _named(spans, "send multiple")
    assert send.parent is None
    assert {link.context.span_id for link in send.links} == {first.span_id, second.span_id}


async def test_failed_send_counts_every_message_as_an_error(spans: InMemorySpanExporter) -> None:
    """A batch Kafka did not acknowledge is an error span and an error count per message."""

    @tracing.kafka_send
    async def send_all(producer: object, messages: list[_Message]) -> None:
        raise TimeoutError("no ack")

    before = _produced("recon", "error")
    with pytest.raises(TimeoutError):
        await send_all(None, messages=[_Message("recon", ()), _Message("recon", ())])
    assert _named(spans, "send recon").status.status_code is StatusCode.ERROR
    assert _produced("recon", "error") == before + 2


async def test_processing_a_batch_joins_the_producers_trace(spans: InMemorySpanExporter) -> None:
    """A consumer's batch from one trace is its child; the batch's outcome counts are added."""
    handler, headers = _carrying("reconcile Posting")
    seen: dict[str, Any] = {}

    @tracing.kafka_process("rewards")
    async def process(pool: object, records: list[_Record], *, prefix: str) -> _Outcome:
        seen.update(logs.bound())
        return _Outcome(applied=2, duplicates=1)

    applied, duplicates = _consumed("applied"), _consumed("duplicates")
    records = [_Record("postings", 0, n, headers) for n in (4, 5, 6)]
    outcome = await process(None, records, prefix="")
    assert outcome.applied == 2
    processed = _named(spans, "process postings")
    assert processed.kind is SpanKind.CONSUMER
    assert processed.context.trace_id == handler.trace_id
    assert processed.parent is not None
    assert processed.parent.span_id == handler.span_id
    assert seen == {"consumer": "rewards"}
    assert _consumed("applied") == applied + 2
    assert _consumed("duplicates") == duplicates + 1


async def test_a_batch_counts_its_ignored_records(spans: InMemorySpanExporter) -> None:
    """Records a consumer skipped on purpose are counted under outcome ``ignored``."""

    @tracing.kafka_process("rewards")
    async def process(pool: object, records: list[_Record], *, prefix: str) -> _Outcome:
        return _Outcome(applied=1, ignored=2)

    applied, ignored = _consumed("applied"), _consumed("ignored")
    await process(None, [_Record("authorizations", 0, n, ()) for n in (1, 2, 3)], prefix="")
    assert (_consumed("applied"), _consumed("ignored")) == (applied + 1, ignored + 2)


async def test_processing_one_record_binds_its_position(spans: InMemorySpanExporter) -> None:
    """A single record's handler logs its position and event id; a raise counts an error."""
    _handler, headers = _carrying("reconcile Posting")
    seen: dict[str, Any] = {}

    @tracing.kafka_process("rewards")
    async def handle(record: _Record) -> str:
        seen.update(logs.bound())
        raise RuntimeError("database down")

    errors = _consumed("error")
    with pytest.raises(RuntimeError):
        await handle(_Record("postings", 1, 9, headers))
    assert seen["record"] == "postings/1/9"
    assert seen["event_id"] == "e-1"
    assert _consumed("error") == errors + 1
    assert _named(spans, "process postings").status.status_code is StatusCode.ERROR


def test_decorators_refuse_functions_without_their_parameter() -> None:
    """A send without ``messages`` or a handler without ``record(s)`` fails at import."""

    async def handle(message: object) -> str:
        return "applied"

    with pytest.raises(TypeError, match="record"):
        tracing.kafka_process("rewards")(handle)
    with pytest.raises(TypeError, match="messages"):
        tracing.kafka_send(handle)


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("INSERT INTO outbox (a) VALUES (%s)", "INSERT outbox"),
        ("  update accounts SET x = 1", "UPDATE accounts"),
        ("SELECT id FROM journals WHERE idempotency_key = %s", "SELECT journals"),
        ("WITH locked AS (SELECT 1 FROM accounts) SELECT * FROM locked", "WITH accounts"),
        (b"SET TRANSACTION ISOLATION LEVEL READ COMMITTED", "SET"),
        (object(), "QUERY"),
    ],
)
def test_statement_span_names_are_operation_and_table(query: object, name: str) -> None:
    """Statement spans are named by operation and first table, never by values."""
    assert tracing._db_span_name(tracing._query_text(query))[0] == name


def test_sdk_disabled_sets_nothing_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """``OTEL_SDK_DISABLED=true`` turns tracing off entirely."""
    assert tracing.setup("fintech-test", "0", _tracing({"OTEL_SDK_DISABLED": "TRUE"})) is None


def _tracing(env: dict[str, str]) -> config.TracingSettings:
    """The tracing settings a process with ``env`` loads (OpenTelemetry's variable names)."""
    base = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "k:9092"}
    return config.load({**base, **env}).tracing


def test_the_traces_endpoint_is_computed_as_the_sdk_does() -> None:
    """The base endpoint gets /v1/traces; the traces endpoint is used as it is and wins."""
    base = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318/"}
    assert tracing.traces_endpoint(_tracing(base)) == "http://127.0.0.1:4318/v1/traces"
    full = {**base, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:9/t"}
    assert tracing.traces_endpoint(_tracing(full)) == "http://127.0.0.1:9/t"
    assert tracing.traces_endpoint(_tracing({})) is None


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
    ],
)
def test_unsupported_exporter_settings_fail_at_start(env: dict[str, str], named: str) -> None:
    """An exporter this build cannot run stops start-up with the variable named."""
    settings = _tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1", **env})
    with pytest.raises(tracing.TracingSetupError, match=named):
        tracing.setup("fintech-test", "0", settings)


def test_span_ids_never_look_like_card_numbers(monkeypatch: pytest.MonkeyPatch) -> None:
    """An all-decimal 16-digit span id (Luhn-valid here) is drawn again; others are kept."""
    luhn_valid_span = int("4111111111111111", 16)
    draws = iter([luhn_valid_span, int("1234567890123456", 16), int("00000000000000a1", 16)])
    monkeypatch.setattr(tracing.RandomIdGenerator, "generate_span_id", lambda _: next(draws))
    generator = tracing.PanSafeIdGenerator()
    assert trace.format_span_id(generator.generate_span_id()) == "00000000000000a1"
    assert pan.find_pans('"span_id": "4111111111111111"')  # what it prevents


def test_the_installed_provider_uses_pan_safe_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tracing.trace, "set_tracer_provider", lambda _: None)  # process-global
    previous = tracing.install(None)
    try:
        provider = tracing.setup("test", "0", _tracing({}))
        assert provider is not None
        assert isinstance(provider.id_generator, tracing.PanSafeIdGenerator)
    finally:
        tracing.install(previous)


def _setup_with(monkeypatch: pytest.MonkeyPatch, endpoint: str | None) -> TracerProvider:
    env = {} if endpoint is None else {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    monkeypatch.setattr(tracing.trace, "set_tracer_provider", lambda _: None)  # process-global
    provider = tracing.setup("test", "0", _tracing(env))
    assert provider is not None
    return provider


def test_without_an_exporter_nothing_is_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Export off: spans are dropped when they start (no attributes kept, no database spans
    below them), yet they still carry ids for the log lines (issue 17)."""
    previous = tracing.install(None)
    try:
        _setup_with(monkeypatch, None)
        with tracing.span("reconcile Posting", attributes={"k": "v"}) as current:
            assert not current.is_recording()
            assert not tracing.in_traced_operation()  # so TracedCursor makes no spans
            assert current.get_span_context().is_valid
            assert "trace_id" in logs.trace_fields()
    finally:
        tracing.install(previous)


def test_with_an_exporter_spans_are_recorded(monkeypatch: pytest.MonkeyPatch) -> None:
    """The other side of the test above: an endpoint turns recording on."""
    previous = tracing.install(None)
    try:
        provider = _setup_with(monkeypatch, "http://127.0.0.1:9")
        with tracing.span("reconcile Posting") as current:
            assert current.is_recording()
            assert tracing.in_traced_operation()
        provider.shutdown()
    finally:
        tracing.install(previous)
