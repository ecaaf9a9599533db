"""JSON log lines: bound resource fields, trace ids, and no card-number-shaped digits, ever."""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from fintech_operator import logs

# What a PAN scanner looks for: a standalone run of 13-19 digits.
PAN_SHAPED = re.compile(r"(?<![\w-])\d{13,19}(?![\w-])")
_TRACER = TracerProvider().get_tracer("test")


def _line(msg: str, *args: object, exc: bool = False, **extra: Any) -> dict[str, Any]:
    record = logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, None)
    if exc:
        try:
            raise ValueError("card 4000001234567899 declined")
        except ValueError:
            record.exc_info = sys.exc_info()
    record.__dict__.update(extra)
    text = logs.JsonFormatter().format(record)
    parsed: dict[str, Any] = json.loads(text)
    return parsed


def test_line_is_json_with_bound_fields_and_trace_ids() -> None:
    """Inside a span and a bind, a line carries the span's ids and the bound resource."""
    with (
        _TRACER.start_as_current_span("reconcile Card") as span,
        logs.bind(resource={"kind": "Card", "name": "c1"}, card_token="tok_x", absent=None),
    ):
        line = _line("issued %s", "c1")
    ctx = span.get_span_context()
    assert line["msg"] == "issued c1"
    assert line["trace_id"] == trace.format_trace_id(ctx.trace_id)
    assert line["span_id"] == trace.format_span_id(ctx.span_id)
    assert line["resource"] == {"kind": "Card", "name": "c1"}
    assert line["card_token"] == "tok_x"
    assert "absent" not in line


def test_bound_fields_end_with_their_block() -> None:
    """Fields bound in a block are gone after it; an inner bind adds to the outer one."""
    with logs.bind(outer=1):
        with logs.bind(inner=2):
            assert dict(logs.bound()) == {"outer": 1, "inner": 2}
        assert dict(logs.bound()) == {"outer": 1}
    line = _line("after")
    assert "outer" not in line
    assert "trace_id" not in line


def test_card_numbers_are_redacted_everywhere() -> None:
    """PAN-shaped numbers in the message, extras, nested values and exceptions are replaced."""
    line = _line(
        "charge %s and 4000 0012 3456 7899 and 4000-0012-3456-7899",
        "4000001234567899",
        exc=True,
        pan_int=4000001234567899,
        nested={"list": ["x 4000001234567899 y"]},
    )
    text = json.dumps(line)
    assert not PAN_SHAPED.search(text.replace(" ", "").replace("-", "")), text
    assert line["pan_int"] == logs.REDACTED
    assert logs.REDACTED in line["exc"]


def test_ordinary_numbers_and_identifiers_survive() -> None:
    """Amounts, 12-digit ids, uuids, tokens and timestamps are not mistaken for card numbers."""
    line = _line(
        "journal %d amount %d at 2025-01-15T09:30:00Z",
        123456789012,
        12500,
        uid="6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b",
        token="tok_4000001234567899abc",
    )
    assert line["msg"] == "journal 123456789012 amount 12500 at 2025-01-15T09:30:00Z"
    assert line["uid"] == "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b"
    assert line["token"] == "tok_4000001234567899abc"


@given(
    digits=st.text(alphabet="0123456789", min_size=13, max_size=19),
    before=st.sampled_from(["", " ", "card ", "(", "=", ": "]),
    after=st.sampled_from(["", " ", ".", ")", ", ok"]),
)
def test_no_line_ever_holds_a_13_to_19_digit_number(digits: str, before: str, after: str) -> None:
    """Whatever digits a message carries, the written line has no standalone 13-19 digit run."""
    line = _line(f"{before}{digits}{after}", field=f"{before}{digits}{after}", n=int(digits))
    assert not PAN_SHAPED.search(json.dumps(line))


def test_kopf_object_lines_name_their_resource_without_settings() -> None:
    """kopf's per-object records get ``resource`` from their reference and lose the settings."""
    ref = {"apiVersion": "fintech.dev/v1alpha1", "kind": "Card", "name": "c1", "uid": "u"}
    line = _line(
        "Handler 'issue' succeeded.",
        k8s_ref={**ref, "namespace": "ns"},
        k8s_skip=False,
        settings=object(),
    )
    assert line["resource"] == {"kind": "Card", "namespace": "ns", "name": "c1", "uid": "u"}
    assert "settings" not in line
    assert "k8s_skip" not in line
    assert "k8s_ref" not in line


@pytest.mark.parametrize(
    ("name", "level", "message", "kept"),
    [
        ("kopf.objects", logging.INFO, "Timer 'refresh' succeeded.", False),
        ("kopf.objects", logging.INFO, "Daemon 'x' succeeded.", False),
        ("kopf.objects", logging.ERROR, "Timer 'refresh' succeeded.", True),
        ("kopf.objects", logging.INFO, "Handler 'post' succeeded.", True),
        ("kopf.objects", logging.INFO, "Timer 'refresh' failed temporarily: x", True),
        ("fintech_operator.x", logging.INFO, "Timer 'refresh' succeeded.", True),
    ],
)
def test_routine_timer_successes_are_dropped(
    name: str, level: int, message: str, kept: bool
) -> None:
    """Only kopf's INFO 'Timer/Daemon ... succeeded.' lines are dropped; failures stay."""
    record = logging.LogRecord(name, level, __file__, 1, message, None, None)
    assert logs.RoutineSuccessFilter().filter(record) is kept


def _coordinator_record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
    name = "aiokafka.consumer.group_coordinator"
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_kafka_coordinator_waits_log_once_a_minute_as_a_warning() -> None:
    """aiokafka's ERROR per coordinator retry (60 lines at a fresh broker's start) becomes one
    WARNING that says the consumer waits; other aiokafka errors and other loggers pass."""
    keep = logs.KafkaCoordinatorWaitFilter(interval_seconds=60.0)
    wait = "Group Coordinator Request failed: [Error %d] GroupCoordinatorNotAvailableError"
    first = logging.LogRecord(
        "aiokafka.consumer.group_coordinator", logging.ERROR, __file__, 1, wait, (15,), None
    )
    assert keep.filter(first)
    assert (first.levelno, first.levelname) == (logging.WARNING, "WARNING")
    assert first.getMessage().startswith("Group Coordinator Request failed: [Error 15]")
    assert "waiting for the Kafka group coordinator" in first.getMessage()
    assert not keep.filter(_coordinator_record(wait % 15))
    assert not keep.filter(_coordinator_record("Marking the coordinator dead (node 1)for g."))
    other = _coordinator_record("Error sending JoinGroupRequest_v5 to node 1 [[Error 7]]")
    assert keep.filter(other)
    assert other.levelno == logging.ERROR
    elsewhere = logging.LogRecord(
        "fintech_operator.x", logging.ERROR, __file__, 1, wait, (15,), None
    )
    assert keep.filter(elsewhere)
    assert elsewhere.levelno == logging.ERROR


def test_kafka_coordinator_waits_are_logged_again_after_the_interval() -> None:
    keep = logs.KafkaCoordinatorWaitFilter(interval_seconds=0.0)
    wait = "Group Coordinator Request failed: [Error 15] GroupCoordinatorNotAvailableError"
    assert keep.filter(_coordinator_record(wait))
    assert keep.filter(_coordinator_record(wait))
