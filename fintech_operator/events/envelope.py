"""The CloudEvents 1.0 envelope every event of the product travels in (pure: no I/O).

Events are CloudEvents in *structured* JSON mode: one JSON object with the context
attributes (``specversion``, ``id``, ``source``, ``type``, ``subject``, ``time``,
``datacontenttype``) next to ``data``. The same bytes go to Kafka (content type
``application/cloudevents+json``) and, unchanged, to webhook receivers, so a signature
computed by the notifier covers exactly what the relay published.

This profile is stricter than CloudEvents itself, so consumers can rely on it:

- ``type`` is ``dev.fintech.<noun>.<verb>.v<N>``: a breaking change of ``data`` is a new
  ``N``, never an edit of an existing type.
- ``id`` is a UUID, unique forever; consumers de-duplicate on it.
- ``subject`` is the Kubernetes object the event is about,
  ``namespaces/<namespace>/<plural>/<name>``; webhooks only see their own namespace's.
- ``time`` is RFC 3339 in UTC with a ``Z``; ``data`` is a JSON object.
- Extension attributes are lowercase alphanumeric names (CloudEvents' rule) with string,
  integer or boolean values; ``partitionkey`` (the CloudEvents partitioning extension)
  is the Kafka key, the card for card-scoped events.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal

import orjson
import pydantic
from pydantic import BaseModel, ConfigDict, Field

SPEC_VERSION: Final = "1.0"
# The Kafka and HTTP bindings' content type of a structured-mode event.
CONTENT_TYPE: Final = "application/cloudevents+json; charset=utf-8"
DATA_CONTENT_TYPE: Final = "application/json"
TYPE_PATTERN: Final = r"^dev\.fintech(\.[a-z][a-z0-9_]*)+\.v[1-9][0-9]{0,2}$"
SUBJECT_PATTERN: Final = (
    r"^namespaces/[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z][a-z0-9]*/[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
)
SOURCE_PATTERN: Final = r"^/[A-Za-z0-9._~!$&'()*+,;=:@/-]{1,254}$"
ID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
# RFC 3339: a date, a time with optional fraction, and an explicit offset (Z or +hh:mm).
TIME_PATTERN: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,9})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)
EXTENSION_NAME_PATTERN: Final = re.compile(r"^[a-z0-9]{1,20}$")
# Kafka's default message limit is 1 MiB; events are small, and a bound keeps them so.
EVENT_BYTES_MAX: Final = 64 * 1024
STRING_MAX_LENGTH: Final = 512
_SUBJECT_RE: Final = re.compile(SUBJECT_PATTERN)
_TYPE_RE: Final = re.compile(TYPE_PATTERN)


class EnvelopeError(ValueError):
    """An event breaks the envelope's rules (raised by builders and by :func:`decode`)."""


class CloudEvent(BaseModel):
    """A decoded event: context attributes, extensions (in ``model_extra``) and ``data``."""

    model_config = ConfigDict(frozen=True, extra="allow", strict=True)

    specversion: Literal["1.0"]
    id: Annotated[str, Field(pattern=ID_PATTERN)]
    source: Annotated[str, Field(pattern=SOURCE_PATTERN)]
    type: Annotated[str, Field(pattern=TYPE_PATTERN, max_length=255)]
    subject: Annotated[str, Field(pattern=SUBJECT_PATTERN, max_length=STRING_MAX_LENGTH)]
    time: Annotated[str, Field(pattern=TIME_PATTERN)]
    datacontenttype: Literal["application/json"]
    dataschema: Annotated[str, Field(min_length=1, max_length=STRING_MAX_LENGTH)] | None = None
    data: dict[str, Any]

    @pydantic.field_validator("time")
    @classmethod
    def _time_is_a_real_instant(cls, value: str) -> str:
        # The pattern checks the shape; this refuses impossible dates such as 2026-02-30.
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return value

    @pydantic.model_validator(mode="after")
    def _extensions_are_well_formed(self) -> CloudEvent:
        for name, value in (self.model_extra or {}).items():
            if not EXTENSION_NAME_PATTERN.fullmatch(name):
                raise ValueError(f"extension attribute {name!r} must be [a-z0-9]{{1,20}}")
            if not isinstance(value, str | int | bool) or value is None:
                raise ValueError(f"extension attribute {name!r} must be a string, int or bool")
            if isinstance(value, str) and len(value) > STRING_MAX_LENGTH:
                raise ValueError(f"extension attribute {name!r} is too long")
        return self

    @property
    def event_id(self) -> uuid.UUID:
        return uuid.UUID(self.id)

    @property
    def moment(self) -> datetime.datetime:
        """``time`` as an aware datetime."""
        return datetime.datetime.fromisoformat(self.time.replace("Z", "+00:00"))

    @property
    def namespace(self) -> str:
        """The namespace of the object the event is about (from ``subject``)."""
        return namespace_of(self.subject)

    @property
    def extensions(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def subject(namespace: str, plural: str, name: str) -> str:
    """``namespaces/<namespace>/<plural>/<name>``, checked."""
    text = f"namespaces/{namespace}/{plural}/{name}"
    if not _SUBJECT_RE.fullmatch(text) or len(text) > STRING_MAX_LENGTH:
        raise EnvelopeError(f"not a valid event subject: {text!r}")
    return text


def namespace_of(subject_text: str) -> str:
    """The namespace part of a subject; :class:`EnvelopeError` when it has none."""
    if not isinstance(subject_text, str) or not _SUBJECT_RE.fullmatch(subject_text):
        raise EnvelopeError(f"not a valid event subject: {subject_text!r}")
    return subject_text.split("/", 2)[1]


def time_text(moment: datetime.datetime) -> str:
    """RFC 3339 in UTC with millisecond precision and a ``Z``: one spelling per instant."""
    if not isinstance(moment, datetime.datetime) or moment.utcoffset() is None:
        raise EnvelopeError("event times must be timezone-aware datetimes")
    utc = moment.astimezone(datetime.UTC)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, kw_only=True)
class Draft:
    """An event to build: its context attributes, ``data`` and extensions.

    :meth:`build` gives the structured-mode event as a JSON-ready dict, validated against the
    envelope. ``data`` is taken as given (its type's schema is checked by the caller, see
    ``events.schema``); it must be a JSON object.
    """

    event_id: uuid.UUID
    type_: str
    source: str
    subject_text: str
    time: datetime.datetime
    data: Mapping[str, Any]
    extensions: Mapping[str, str | int | bool] | None = None

    def build(self) -> dict[str, Any]:
        if not isinstance(self.event_id, uuid.UUID):
            raise EnvelopeError("event_id must be a uuid.UUID")
        if not isinstance(self.type_, str) or not _TYPE_RE.fullmatch(self.type_):
            raise EnvelopeError(f"event type {self.type_!r} does not match {TYPE_PATTERN}")
        event: dict[str, Any] = {
            "specversion": SPEC_VERSION,
            "id": str(self.event_id),
            "source": self.source,
            "type": self.type_,
            "subject": self.subject_text,
            "time": time_text(self.time),
            "datacontenttype": DATA_CONTENT_TYPE,
            "data": dict(self.data),
        }
        for name, value in (self.extensions or {}).items():
            if name in event:
                raise EnvelopeError(f"extension {name!r} would overwrite a context attribute")
            event[name] = value
        validate(event)
        return event


def validate(event: Mapping[str, Any]) -> CloudEvent:
    """Check a JSON-ready event against the envelope; :class:`EnvelopeError` when it fails."""
    try:
        return CloudEvent.model_validate(dict(event))
    except pydantic.ValidationError as exc:
        raise EnvelopeError(_one_line(exc)) from exc


def encode(event: Mapping[str, Any]) -> bytes:
    """Canonical JSON bytes (sorted keys, no spaces, UTF-8): equal events are equal bytes."""
    try:
        raw = json.dumps(
            event, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        ).encode()  # A lone surrogate cannot be UTF-8: UnicodeEncodeError, a ValueError.
    except (TypeError, ValueError) as exc:
        raise EnvelopeError(f"event is not JSON-serialisable: {exc}") from exc
    return _bounded(raw)


def encode_stored(event: Mapping[str, Any]) -> bytes:
    """:func:`encode` of an event read back from a ``jsonb`` column, about 10x faster.

    A value that came out of ``jsonb`` holds only JSON types and no NaN or infinity (PostgreSQL
    refuses them), which is exactly where orjson's sorted compact output equals :func:`encode`'s
    byte for byte; the relay's hot loop pays for nothing else.
    """
    try:
        raw = orjson.dumps(event, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:
        raise EnvelopeError(f"event is not JSON-serialisable: {exc}") from exc
    return _bounded(raw)


def _bounded(raw: bytes) -> bytes:
    if len(raw) > EVENT_BYTES_MAX:
        raise EnvelopeError(f"event is {len(raw)} bytes, more than {EVENT_BYTES_MAX}")
    return raw


def decode(raw: bytes | None) -> CloudEvent:
    """Parse one wire message; :class:`EnvelopeError` on anything that is not a valid event."""
    if raw is None:
        raise EnvelopeError("message has no value")
    if len(raw) > EVENT_BYTES_MAX:
        raise EnvelopeError(f"message is {len(raw)} bytes, more than {EVENT_BYTES_MAX}")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EnvelopeError(f"message is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise EnvelopeError(f"message is a JSON {type(value).__name__}, not an object")
    return validate(value)


def _one_line(exc: pydantic.ValidationError, limit: int = 5) -> str:
    problems = [
        f"{'.'.join(str(p) for p in err['loc']) or '<event>'}: {err['msg']}"
        for err in exc.errors(include_url=False)
    ]
    more = f"; and {len(problems) - limit} more" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more
