"""OpenTelemetry traces across kopf handlers, PostgreSQL and Kafka.

One trace follows a posting from its handler through the ledger transaction into the outbox
row, across Kafka, and into the rewards consumer's transaction:

* ``reconcile <Kind>`` spans wrap each kopf handler (see ``observability.reconcile``);
* :class:`TracedConnection` gives each ledger transaction and statement a span, but only inside
  a traced operation: the relay's idle polling and the collector's reads make no traces;
* :func:`context_headers` puts the W3C ``traceparent`` into the outbox row written with the
  journal; the relay publishes the row's headers as Kafka headers, so the trace travels with
  the event however late the relay sends it (hours, if Kafka was down);
* :func:`kafka_send` makes the relay's send of a batch a ``send <topic>`` span in (or linked
  to) the traces of its rows;
* :func:`kafka_process` makes a consumer's handling of a batch a ``process <topic>`` span in
  (or linked to) the traces its records carry, so the consumer's transaction joins them.

Export is off by default. It turns on when the standard ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set, and sends OTLP over HTTP with protobuf, which
Jaeger, Tempo and the OpenTelemetry Collector accept. The variables the product interprets
come in with the other settings (``settings.tracing``, :class:`config.TracingSettings`); the
SDK reads its other standard variables itself (``OTEL_RESOURCE_ATTRIBUTES``,
``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_HEADERS``,
``OTEL_EXPORTER_OTLP_TIMEOUT``); ``OTEL_SDK_DISABLED=true`` turns tracing off entirely.
Without an endpoint (or with ``OTEL_TRACES_EXPORTER=none``) the sampler drops every span when
it starts: nothing is recorded, no attribute is kept and no database statement gets a span, so
tracing costs next to nothing; a dropped span still has ids, so log lines keep trace ids that
tie a posting's lines together.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import inspect
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any, Final, ParamSpec, Protocol, Self, TypeVar, cast

import psycopg
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider, sampling
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import Span, SpanKind
from psycopg.abc import Params, Query
from psycopg.rows import Row

from fintech_operator import logs
from fintech_operator.observability import metrics

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")

TRACER_NAME: Final = "fintech_operator"
PROPAGATED_HEADERS: Final = ("traceparent", "tracestate")
SUPPORTED_PROTOCOL: Final = "http/protobuf"
QUERY_TEXT_MAX_CHARS: Final = 2048
DB_SYSTEM: Final = "postgresql"
# A span keeps at most this many links to the traces of the messages in its batch.
BATCH_LINKS_MAX: Final = 128

_provider: TracerProvider | None = None
_OPERATION = re.compile(r"\s*([A-Za-z]+)")
_TARGET = re.compile(r"\b(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM|FROM)\s+([A-Za-z_][\w.]*)", re.I)


class TracingSetupError(RuntimeError):
    """Tracing is configured in a way this build cannot honour; the message names the setting."""


class PanSafeIdGenerator(RandomIdGenerator):
    """Random ids, except that a span id is never 16 decimal digits.

    Span ids travel in every log line and in outbox headers (``traceparent``). One in about
    1,900 random span ids is all decimal, and a tenth of those pass the Luhn check: they look
    exactly like a 16-digit card number to a DLP scanner (and to this product's own scan of
    its logs and database). Drawing again costs nothing and loses under 0.06% of the space.
    """

    def generate_span_id(self) -> int:
        span_id = super().generate_span_id()
        while trace.format_span_id(span_id).isdecimal():
            span_id = super().generate_span_id()
        return span_id


class ExportSettings(Protocol):
    """What :func:`setup` reads: ``config.TracingSettings`` (``settings.tracing``), named
    structurally because the domain's stores import this module and read no settings."""

    @property
    def sdk_disabled(self) -> str: ...
    @property
    def exporter(self) -> str: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def traces_endpoint(self) -> str: ...
    @property
    def protocol(self) -> str: ...
    @property
    def traces_protocol(self) -> str: ...
    @property
    def service_name(self) -> str: ...


def traces_endpoint(settings: ExportSettings) -> str | None:
    """Where spans go, as the SDK would compute it from the same two variables: the traces
    endpoint as it is, else the base endpoint with ``/v1/traces``; None when neither is set."""
    if settings.traces_endpoint:
        return settings.traces_endpoint
    if settings.endpoint:
        return settings.endpoint.rstrip("/") + "/v1/traces"
    return None


def setup(
    service_name: str, service_version: str, settings: ExportSettings
) -> TracerProvider | None:
    """Install the tracer provider for this process; export over OTLP/HTTP when configured.

    Returns None when ``OTEL_SDK_DISABLED=true``. Fails at start-up, naming the variable, when
    an exporter protocol other than http/protobuf is asked for.
    """
    if settings.sdk_disabled.strip().lower() == "true":
        return None
    endpoint = traces_endpoint(settings)
    exporter = settings.exporter.strip().lower()
    protocol = settings.traces_protocol or settings.protocol or SUPPORTED_PROTOCOL
    if endpoint and exporter != "none" and protocol != SUPPORTED_PROTOCOL:
        raise TracingSetupError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol!r} is not supported: "
            f"this build exports {SUPPORTED_PROTOCOL} only"
        )
    if exporter not in ("otlp", "none"):
        raise TracingSetupError(f"OTEL_TRACES_EXPORTER={exporter!r}: use 'otlp' or 'none'")
    attributes: dict[str, str] = {"service.version": service_version}
    # Passed attributes win over the SDK's own reading of OTEL_SERVICE_NAME: the same value.
    attributes["service.name"] = settings.service_name or service_name
    exporting = bool(endpoint) and exporter == "otlp"
    provider = TracerProvider(
        resource=Resource.create(attributes),
        id_generator=PanSafeIdGenerator(),
        # No exporter: record nothing (issue 17: recording spans nobody exports cost ~10% of
        # the operator's CPU). With one, OTEL_TRACES_SAMPLER decides (default: parent-based).
        sampler=None if exporting else sampling.ALWAYS_OFF,
    )
    if exporting:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )

        # The batch processor bounds its queue (OTEL_BSP_MAX_QUEUE_SIZE, default 2048) and
        # drops spans rather than block a handler when the collector is slow or down.
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
        log.info("exporting traces over OTLP/HTTP to %s", endpoint)
    install(provider)
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)
    return provider


def install(provider: TracerProvider | None) -> TracerProvider | None:
    """Use ``provider`` for this module's spans; returns the previous one (tests restore it)."""
    # One provider per process, replaced only by setup() and by tests.
    global _provider
    previous, _provider = _provider, provider
    return previous


def tracer() -> trace.Tracer:
    """The product's tracer, from the installed provider or OpenTelemetry's global one."""
    if _provider is not None:
        return _provider.get_tracer(TRACER_NAME)
    return trace.get_tracer(TRACER_NAME)


@contextlib.contextmanager
def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: dict[str, Any] | None = None,
    parent: otel_context.Context | None = None,
    links: Sequence[trace.Link] = (),
) -> Iterator[Span]:
    """A current span; an exception escaping the block is recorded and marks it as an error."""
    with tracer().start_as_current_span(
        name, context=parent, kind=kind, attributes=attributes, links=links
    ) as current:
        yield current


def in_traced_operation() -> bool:
    """True inside a recording span: child spans are worth creating."""
    return trace.get_current_span().is_recording()


def context_headers() -> dict[str, str]:
    """The current trace context as W3C headers, to store with an outbox row (may be empty)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {key: carrier[key] for key in PROPAGATED_HEADERS if key in carrier}


def context_from_kafka(headers: Iterable[tuple[str, bytes]] | None) -> otel_context.Context:
    """The trace context carried by Kafka record headers (empty context when there is none)."""
    carrier = {
        key: value.decode("latin-1")
        for key, value in headers or ()
        if key in PROPAGATED_HEADERS and isinstance(value, bytes)
    }
    return propagate.extract(carrier)


def _kafka_headers_with(
    headers: Sequence[tuple[str, bytes]] | None, ctx: otel_context.Context
) -> list[tuple[str, bytes]]:
    """``headers`` with the trace context of ``ctx`` replacing any carried before."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=ctx)
    kept = [(k, v) for k, v in headers or () if k not in PROPAGATED_HEADERS]
    return kept + [(k, carrier[k].encode()) for k in PROPAGATED_HEADERS if k in carrier]


# --- PostgreSQL ----------------------------------------------------------------------------------


def _query_text(query: Any) -> str:
    if isinstance(query, str):
        text = query
    elif isinstance(query, bytes):
        text = query.decode("utf-8", errors="replace")
    else:
        text = f"<{type(query).__name__}>"
    return " ".join(text.split())[:QUERY_TEXT_MAX_CHARS]


def _db_span_name(text: str) -> tuple[str, str, str | None]:
    operation = _OPERATION.match(text)
    op = operation.group(1).upper() if operation else "QUERY"
    target = _TARGET.search(text)
    table = target.group(1) if target else None
    return (f"{op} {table}" if table else op), op, table


@contextlib.contextmanager
def _db_span(query: Any, *, batch: bool = False) -> Iterator[None]:
    if not in_traced_operation():
        yield
        return
    # Statements are parameterised: the text holds placeholders, never values or card data.
    text = _query_text(query)
    name, operation, table = _db_span_name(text)
    attributes: dict[str, Any] = {
        "db.system.name": DB_SYSTEM,
        "db.operation.name": ("BATCH " if batch else "") + operation,
        "db.query.text": text,
    }
    if table:
        attributes["db.collection.name"] = table
    with span(name, kind=SpanKind.CLIENT, attributes=attributes):
        yield


class TracedCursor(psycopg.AsyncCursor[Row]):
    """An async cursor whose statements are spans when run inside a traced operation."""

    # The base class declares overloads (str, bytes, Composed, Template); they all end here.
    async def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        with _db_span(query):
            return await super().execute(cast(Any, query), params, prepare=prepare, binary=binary)

    async def executemany(
        self, query: Query, params_seq: Iterable[Params], *, returning: bool = False
    ) -> None:
        with _db_span(query, batch=True):
            await super().executemany(query, params_seq, returning=returning)


class TracedConnection(psycopg.AsyncConnection[Row]):
    """A connection for ``AsyncConnectionPool(connection_class=...)``: traced transactions.

    Only spans are added; isolation, autocommit and every other behaviour stay psycopg's.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cursor_factory = TracedCursor

    @contextlib.asynccontextmanager
    async def transaction(
        self, savepoint_name: str | None = None, force_rollback: bool = False
    ) -> AsyncIterator[psycopg.AsyncTransaction]:
        if not in_traced_operation():
            async with super().transaction(savepoint_name, force_rollback) as tx:
                yield tx
            return
        nested = self.info.transaction_status is not psycopg.pq.TransactionStatus.IDLE
        attributes = {"db.system.name": DB_SYSTEM, "fintech.db.savepoint": nested}
        with span(
            "SAVEPOINT" if nested else "TRANSACTION", kind=SpanKind.CLIENT, attributes=attributes
        ):
            async with super().transaction(savepoint_name, force_rollback) as tx:
                yield tx


# --- Kafka ---------------------------------------------------------------------------------------


def _span_context_of(headers: Iterable[tuple[str, bytes]] | None) -> trace.SpanContext | None:
    headers = tuple(headers or ())
    if not any(key == "traceparent" for key, _ in headers):
        return None  # what the propagators extract from no traceparent, without asking them
    ctx = trace.get_current_span(context_from_kafka(headers)).get_span_context()
    return ctx if ctx.is_valid else None


def _batch_parent_and_links(
    carried: Sequence[trace.SpanContext | None],
) -> tuple[otel_context.Context | None, list[trace.Link]]:
    """A batch's parent (when all its messages belong to one trace) and its links (at most
    :data:`BATCH_LINKS_MAX`), as the messaging conventions suggest for batches."""
    contexts = [ctx for ctx in carried if ctx is not None]
    links = [trace.Link(ctx) for ctx in contexts[:BATCH_LINKS_MAX]]
    traces = {ctx.trace_id for ctx in contexts}
    if len(traces) == 1 and len(contexts) == len(carried):
        return trace.set_span_in_context(trace.NonRecordingSpan(contexts[0])), links
    return None, links


def _destination(topics: Iterable[str]) -> tuple[str, dict[str, Any]]:
    names = sorted(set(topics))
    attributes: dict[str, Any] = {"messaging.system": "kafka"}
    if len(names) == 1:
        attributes["messaging.destination.name"] = names[0]
        return names[0], attributes
    return "multiple", attributes


def kafka_send(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Decorate a function that sends a batch (a parameter ``messages`` of objects with
    ``topic`` and ``headers``): one ``send <topic>`` span, continuing the trace its messages
    carry (an outbox row's ``traceparent``) or linking to each when they carry several.

    Each message is counted in ``fintech_kafka_produced_total`` once the call returns
    (acknowledged) or raises (not acknowledged). The headers themselves pass unchanged, so a
    consumer's span is a child of the handler that wrote the row.
    """
    signature = inspect.signature(fn)
    if "messages" not in signature.parameters:
        raise TypeError(f"{fn.__qualname__} has no parameter named 'messages'")

    @functools.wraps(fn)
    async def traced(*args: P.args, **kwargs: P.kwargs) -> R:
        messages = list(signature.bind_partial(*args, **kwargs).arguments["messages"])
        parent, links = _batch_parent_and_links([_span_context_of(m.headers) for m in messages])
        destination, attributes = _destination(m.topic for m in messages)
        attributes |= {
            "messaging.operation.type": "send",
            "messaging.batch.message_count": len(messages),
        }
        ok = False
        try:
            with span(
                f"send {destination}",
                kind=SpanKind.PRODUCER,
                attributes=attributes,
                parent=parent,
                links=links,
            ):
                result = await fn(*args, **kwargs)
                ok = True
                return result
        finally:
            for topic, count in collections.Counter(m.topic for m in messages).items():
                metrics.kafka_produced(topic, ok, count)

    return traced


def kafka_process(name: str) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
    """Decorate a consumer's handler of a batch (parameter ``records``) or of one ``record``.

    The call becomes a ``process <topic>`` span: the child of the producer's trace when every
    record carries the same one, linked to each otherwise. The records' positions and event
    ids are bound to the log lines written meanwhile. The result is counted in
    ``fintech_consumer_events_total{consumer,outcome}``: a string is one record's outcome;
    an object with ``applied``, ``duplicates``, ``dead_lettered`` and (optionally) ``ignored``
    counts is a batch's.
    """

    def decorate(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
        signature = inspect.signature(fn)
        batch = "records" in signature.parameters
        if not batch and "record" not in signature.parameters:
            raise TypeError(f"{fn.__qualname__} has no parameter named 'records' or 'record'")

        @functools.wraps(fn)
        async def traced(*args: P.args, **kwargs: P.kwargs) -> R:
            bound = signature.bind_partial(*args, **kwargs).arguments
            records = list(bound["records"]) if batch else [bound["record"]]
            parent, links = _batch_parent_and_links([_span_context_of(r.headers) for r in records])
            destination, attributes = _destination(r.topic for r in records)
            attributes |= {
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": name,
                "messaging.batch.message_count": len(records),
            }
            fields: dict[str, Any] = {"consumer": name}
            if len(records) == 1:
                record = records[0]
                fields["record"] = f"{record.topic}/{record.partition}/{record.offset}"
                fields["event_id"] = (
                    dict(record.headers or ()).get("event-id", b"").decode("latin-1") or None
                )
                attributes["messaging.kafka.offset"] = int(record.offset)
            try:
                with (
                    span(
                        f"process {destination}",
                        kind=SpanKind.CONSUMER,
                        attributes=attributes,
                        parent=parent,
                        links=links,
                    ),
                    logs.bind(**fields),
                ):
                    result = await fn(*args, **kwargs)
            except BaseException:
                metrics.consumer_event(name, "error", len(records))
                raise
            _count_outcome(name, result)
            return result

        return traced

    return decorate


def _count_outcome(name: str, result: object) -> None:
    if isinstance(result, str):
        metrics.consumer_event(name, result)
        return
    for outcome in metrics.CONSUMER_BATCH_OUTCOMES:
        count = getattr(result, outcome, None)
        if type(count) is int and count > 0:
            metrics.consumer_event(name, outcome, count)


__all__ = [
    "ExportSettings",
    "TracedConnection",
    "TracedCursor",
    "TracingSetupError",
    "context_from_kafka",
    "context_headers",
    "in_traced_operation",
    "install",
    "kafka_process",
    "kafka_send",
    "setup",
    "span",
    "tracer",
    "traces_endpoint",
]
