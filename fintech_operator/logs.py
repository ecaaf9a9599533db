"""JSON logs on stderr, one object per line, for every process of the product.

Each line carries, besides the message, the fields bound with :func:`bind` for the code
running now (the resource being reconciled, its card's token, the Kafka record being
handled) and the ids of the current OpenTelemetry span, so a log line leads to its trace
and a trace to its log lines. Binding uses a context variable: concurrent handlers in one
event loop each see only their own fields.

Invariant 7 says no card number is ever logged. The code never has one to log, and the
formatter is the safety net behind that: any standalone run of 13 to 19 digits (optionally
grouped by single spaces or dashes, as card numbers are written) is replaced before the line
is written, in the message, in every extra field and in exception text. Identifiers that
long (epoch milliseconds, big ids) are therefore redacted too; log them as text with a prefix.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import re
import sys
import time
import types
from collections.abc import Iterator, Mapping
from typing import Any, Final

from opentelemetry import trace

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
# kopf adds its whole OperatorSettings and an internal flag to every per-object record.
_DROPPED: Final = frozenset({"settings", "k8s_skip"})
REDACTED: Final = "[redacted-number]"
# A standalone number of 13-19 digits, possibly grouped by one space or dash: the shape of a PAN.
_PAN_LIKE: Final = re.compile(r"(?<![\w-])\d(?:[ -]?\d){12,18}(?![\w-])")
_PAN_MIN: Final = 10**12
_PAN_MAX: Final = 10**19
_DEPTH_MAX: Final = 8

_NOTHING_BOUND: Final[Mapping[str, Any]] = types.MappingProxyType({})
_bound: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "fintech_log_fields", default=_NOTHING_BOUND
)


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log line written by this task until the block ends.

    Fields whose value is None are left out, so callers can pass what they have.
    """
    merged = {**_bound.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _bound.set(merged)
    try:
        yield
    finally:
        _bound.reset(token)


def bound() -> Mapping[str, Any]:
    """The fields bound for the code running now."""
    return _bound.get()


def scrub(value: Any, depth: int = 0) -> Any:
    """``value`` with every PAN-shaped number replaced, recursively through dicts and lists."""
    if value is None or isinstance(value, bool | float):
        result: Any = value
    elif isinstance(value, int):
        result = REDACTED if _PAN_MIN <= abs(value) < _PAN_MAX else value
    elif isinstance(value, Mapping) and depth < _DEPTH_MAX:
        result = {str(k): scrub(v, depth + 1) for k, v in value.items()}
    elif isinstance(value, list | tuple | set | frozenset) and depth < _DEPTH_MAX:
        result = [scrub(v, depth + 1) for v in value]
    else:
        result = _PAN_LIKE.sub(REDACTED, value if isinstance(value, str) else str(value))
    return result


def trace_fields() -> dict[str, str]:
    """``trace_id`` and ``span_id`` of the current span, in W3C hex, when there is one."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {
        "trace_id": trace.format_trace_id(ctx.trace_id),
        "span_id": trace.format_span_id(ctx.span_id),
    }


class JsonFormatter(logging.Formatter):
    """Render records as JSON with bound and extra fields and trace ids; PAN-shaped numbers out."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(_bound.get())
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD | _DROPPED}
        ref = extras.pop("k8s_ref", None)
        if isinstance(ref, Mapping) and "resource" not in entry:
            # kopf's per-object lines name their object like ours do, in ``resource``.
            entry["resource"] = {k: ref.get(k) for k in ("kind", "namespace", "name", "uid")}
        entry.update(extras)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        entry = scrub(entry)
        # Trace ids are hex and are added after scrubbing: they are never card numbers.
        entry.update(trace_fields())
        return json.dumps(entry, default=str)


class RoutineSuccessFilter(logging.Filter):
    """Drop kopf's INFO line for every successful timer tick.

    Card balances are refreshed by a timer per card; at 10,000 cards every 10 s that is a
    thousand "Timer 'refresh' succeeded." lines a second, burying everything that matters.
    Failures and every other message pass.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or not record.name.startswith("kopf"):
            return True
        message = record.getMessage()
        return not (message.startswith(("Timer ", "Daemon ")) and message.endswith(" succeeded."))


class KafkaCoordinatorWaitFilter(logging.Filter):
    """aiokafka logs a consumer's wait for its group coordinator as an ERROR (and a WARNING
    for each retry) several times a second: 60 lines at every start against a fresh broker,
    and for the whole of a broker restart. The consumer retries on its own and its readiness
    says whether it has joined, so one WARNING per logger per ``interval_seconds`` tells the
    story; the repeats are dropped."""

    _WAITS: Final = ("GroupCoordinatorNotAvailableError", "Marking the coordinator dead")

    def __init__(self, interval_seconds: float = 60.0) -> None:
        super().__init__()
        self.interval_seconds = interval_seconds
        self._last: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka.consumer.group_coordinator"):
            return True
        message = record.getMessage()
        if not any(wait in message for wait in self._WAITS):
            return True
        now = time.monotonic()
        last = self._last.get(record.name)
        if last is not None and now - last < self.interval_seconds:
            return False
        self._last[record.name] = now
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = (
            f"{message} (waiting for the Kafka group coordinator; retried, repeats in the next "
            f"{self.interval_seconds:.0f} s not logged)"
        )
        record.args = None
        return True


def configure(level: str = "INFO") -> None:
    """Install the JSON handler at ``level`` (``settings.logs.level``, FINTECH_LOG_LEVEL).

    A process calls it first with the default, so that a bad setting is reported as a JSON
    line too, and again with its settings once they are loaded."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RoutineSuccessFilter())
    handler.addFilter(KafkaCoordinatorWaitFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Python warnings become JSON lines too, rather than raw text on stderr.
    logging.captureWarnings(True)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)
    logging.getLogger("kafka").setLevel(logging.WARNING)
