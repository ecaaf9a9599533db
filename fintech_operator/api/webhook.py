"""Webhook: an HTTP endpoint that receives signed events of its namespace.

The notifier (``fintech-operator notifier``) delivers every subscribed event of the
Webhook's namespace that happened after the Webhook was created, signed the way
Standard Webhooks does it, with timeouts, retries on an increasing schedule, a circuit
breaker and a rate limit per endpoint. Undelivered events wait in the delivery log for
the endpoint, within the limits of ``spec.retry``; the operator copies the delivery
state into ``status``.
"""

from __future__ import annotations

import enum
from typing import Annotated, Any, Final

import pydantic

from fintech_operator.api import common

URL_MAX_LENGTH: Final = 2048
EVENT_TYPES_MAX_ITEMS: Final = 32
EVENT_TYPE_MAX_LENGTH: Final = 255
# An exact type (dev.fintech.posting.posted.v1), a prefix ending in .* (dev.fintech.posting.*),
# or * for every type.
EVENT_TYPE_PATTERN: Final = (
    r"^(\*|dev\.fintech(\.[a-z][a-z0-9_]*)*\.\*"
    r"|dev\.fintech(\.[a-z][a-z0-9_]*)+\.v[1-9][0-9]{0,2})$"
)
TIMEOUT_SECONDS_MAX: Final = 30
ATTEMPTS_MAX: Final = 20
DELAY_SECONDS_MAX: Final = 86_400
AGE_SECONDS_MIN: Final = 60
AGE_SECONDS_MAX: Final = 7 * 86_400
RATE_MAX: Final = 1000
FAILURE_THRESHOLD_MAX: Final = 100
OPEN_SECONDS_MAX: Final = 3600
ERROR_MAX_LENGTH: Final = 1024


EventTypePattern = Annotated[
    str,
    pydantic.Field(
        max_length=EVENT_TYPE_MAX_LENGTH,
        pattern=EVENT_TYPE_PATTERN,
        description="An event type (dev.fintech.posting.posted.v1), a prefix ending in .* "
        "(dev.fintech.posting.*), or * for every type.",
    ),
    common.Expected(
        "an event type such as dev.fintech.posting.posted.v1, a prefix ending in .* such as "
        "dev.fintech.posting.*, or * for every type"
    ),
]


class SecretKeyRef(common.SpecModel):
    """A key of a Secret in the Webhook's namespace."""

    name: common.ObjectName = pydantic.Field(description="Name of the Secret.")
    key: common.KeyName = pydantic.Field(
        default="secret",
        description="Key in the Secret's data; default 'secret'. Its value is the signing "
        "secret in the Standard Webhooks form whsec_<base64 of 24 to 64 random bytes>.",
    )


class RetryPolicy(common.SpecModel):
    """How long and how often a failed delivery is tried again."""

    model_config = pydantic.ConfigDict(
        json_schema_extra=common.cel_rules(
            (
                "!has(self.initialDelaySeconds) || !has(self.maxDelaySeconds) || "
                "self.initialDelaySeconds <= self.maxDelaySeconds",
                "initialDelaySeconds must not exceed maxDelaySeconds",
            )
        )
    )

    max_attempts: pydantic.StrictInt = pydantic.Field(
        default=10,
        ge=1,
        le=ATTEMPTS_MAX,
        description=f"Attempts per event, the first included; 1 to {ATTEMPTS_MAX}, default 10. "
        "After the last failed attempt the delivery is marked Failed in the delivery log.",
    )
    initial_delay_seconds: pydantic.StrictInt = pydantic.Field(
        default=5,
        ge=1,
        le=DELAY_SECONDS_MAX,
        description="Wait after the first failure, in seconds; each later wait doubles "
        f"(5, 10, 20, ...). 1 to {DELAY_SECONDS_MAX}, default 5.",
    )
    max_delay_seconds: pydantic.StrictInt = pydantic.Field(
        default=3600,
        ge=1,
        le=DELAY_SECONDS_MAX,
        description=f"Cap of one wait between attempts, in seconds; 1 to {DELAY_SECONDS_MAX}, "
        "default 3600.",
    )
    max_age_seconds: pydantic.StrictInt = pydantic.Field(
        default=3 * 86_400,
        ge=AGE_SECONDS_MIN,
        le=AGE_SECONDS_MAX,
        description="Longest an event waits for this endpoint (while it fails, its circuit is "
        "open, its Secret is missing or the Webhook is suspended), in seconds; then it is "
        f"marked Failed (Expired). {AGE_SECONDS_MIN} to {AGE_SECONDS_MAX}, default 259200 "
        "(3 days).",
    )

    @pydantic.model_validator(mode="after")
    def _delays_ordered(self) -> RetryPolicy:
        if self.initial_delay_seconds > self.max_delay_seconds:
            raise ValueError("initialDelaySeconds must not exceed maxDelaySeconds")
        return self


class RateLimit(common.SpecModel):
    """The most requests per second the notifier sends this endpoint."""

    requests_per_second: pydantic.StrictInt = pydantic.Field(
        default=10,
        ge=1,
        le=RATE_MAX,
        description=f"Sustained requests per second; 1 to {RATE_MAX}, default 10.",
    )
    burst: pydantic.StrictInt = pydantic.Field(
        default=20,
        ge=1,
        le=RATE_MAX,
        description=f"Requests that may go at once after a quiet spell; 1 to {RATE_MAX}, "
        "default 20.",
    )


class CircuitBreaker(common.SpecModel):
    """When to stop calling a failing endpoint for a while."""

    failure_threshold: pydantic.StrictInt = pydantic.Field(
        default=5,
        ge=1,
        le=FAILURE_THRESHOLD_MAX,
        description="Consecutive failed attempts that open the circuit; 1 to "
        f"{FAILURE_THRESHOLD_MAX}, default 5.",
    )
    open_seconds: pydantic.StrictInt = pydantic.Field(
        default=30,
        ge=1,
        le=OPEN_SECONDS_MAX,
        description="How long an open circuit sends nothing before one trial request "
        f"(half-open); 1 to {OPEN_SECONDS_MAX}, default 30.",
    )


class WebhookSpec(common.SpecModel):
    """Where to deliver which events, and how."""

    url: Annotated[
        str,
        common.Expected(
            f"an http:// or https:// URL with a host, up to {URL_MAX_LENGTH} characters "
            "without spaces, such as https://hooks.example.com/fintech"
        ),
    ] = pydantic.Field(
        min_length=8,
        max_length=URL_MAX_LENGTH,
        pattern=r"^https?://[^\s/?#]+[^\s]*$",
        description="http or https URL the notifier POSTs each event to (the CloudEvent JSON, "
        "content type application/cloudevents+json). Redirects are not followed.",
    )
    event_types: tuple[EventTypePattern, ...] = pydantic.Field(
        min_length=1,
        max_length=EVENT_TYPES_MAX_ITEMS,
        description="Event types to deliver: exact types such as dev.fintech.posting.posted.v1, "
        "prefixes such as dev.fintech.posting.*, or * for all. Only events about objects "
        "in the Webhook's namespace are delivered.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    secret_ref: SecretKeyRef = pydantic.Field(
        description="The Secret key holding the signing secret (whsec_...)."
    )
    timeout_seconds: pydantic.StrictInt = pydantic.Field(
        default=5,
        ge=1,
        le=TIMEOUT_SECONDS_MAX,
        description="Longest wait for one HTTP request, connection included; 1 to "
        f"{TIMEOUT_SECONDS_MAX}, default 5. A slower answer counts as a failure.",
    )
    retry: RetryPolicy | None = pydantic.Field(
        default=None, description="Retry schedule and limits; absent means the defaults."
    )
    rate_limit: RateLimit | None = pydantic.Field(
        default=None, description="Requests per second; absent means the defaults."
    )
    circuit_breaker: CircuitBreaker | None = pydantic.Field(
        default=None, description="Circuit breaker; absent means the defaults."
    )
    suspend: bool = pydantic.Field(
        default=False,
        description="Hold deliveries: events keep queueing (up to retry.maxAgeSeconds) and go "
        "out when suspend is set back to false.",
    )

    @pydantic.field_validator("event_types")
    @classmethod
    def _unique(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("eventTypes must not list a type twice")
        return value


class WebhookPhase(enum.StrEnum):
    """What the endpoint is doing now."""

    PENDING = "Pending"
    ACTIVE = "Active"
    SUSPENDED = "Suspended"
    FAILING = "Failing"
    REJECTED = "Rejected"


class WebhookReason(enum.StrEnum):
    """Why the endpoint is in its phase (``status.reason``); a problem the notifier reports
    as ``Word: detail`` shows its own CamelCase word instead."""

    AWAITING_NOTIFIER = "AwaitingNotifier"
    SUSPENDED = "Suspended"
    DELIVERING = "Delivering"
    RETRYING = "Retrying"
    CIRCUIT_OPEN = "CircuitOpen"
    ENDPOINT_PROBLEM = "EndpointProblem"
    INVALID_SPEC = "InvalidSpec"


class CircuitState(enum.StrEnum):
    """The endpoint's circuit breaker."""

    CLOSED = "Closed"
    OPEN = "Open"
    HALF_OPEN = "HalfOpen"


class DeliveryOutcome(enum.StrEnum):
    """How one delivery ended."""

    DELIVERED = "Delivered"
    FAILED = "Failed"
    EXPIRED = "Expired"


class LastDelivery(common.StatusModel):
    """The latest delivery attempt to the endpoint."""

    event_id: str | None = pydantic.Field(
        default=None, max_length=64, description="CloudEvents id (the webhook-id header)."
    )
    event_type: str | None = pydantic.Field(
        default=None, max_length=EVENT_TYPE_MAX_LENGTH, description="Type of the event."
    )
    attempted_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When the attempt was made."
    )
    outcome: DeliveryOutcome | None = pydantic.Field(
        default=None, description="Delivered (2xx), Failed (will retry or gave up) or Expired."
    )
    status_code: pydantic.StrictInt | None = pydantic.Field(
        default=None, ge=100, le=599, description="HTTP status of the answer, if one came."
    )
    message: str | None = pydantic.Field(
        default=None, max_length=ERROR_MAX_LENGTH, description="Why the attempt failed."
    )


class WebhookStatus(common.StatusModel):
    """Observed delivery state, written by the operator from the notifier's delivery log."""

    phase: WebhookPhase | None = pydantic.Field(
        default=None,
        description="Pending until a notifier serves the Webhook; Active while deliveries "
        "succeed or are retried; Failing when the circuit is open, the Secret is unusable or "
        "the notifier refuses the URL's destination (reason DestinationRefused, shown as soon "
        "as a notifier serves the Webhook); Suspended by spec.suspend; Rejected for an "
        "invalid spec.",
    )
    reason: common.Reason | None = pydantic.Field(
        default=None, description="CamelCase cause of the phase."
    )
    message: common.Message | None = common.message_field()
    last_delivery: LastDelivery | None = pydantic.Field(
        default=None, description="The latest delivery attempt."
    )
    last_success_at: common.Timestamp | None = pydantic.Field(
        default=None, description="When an event was last delivered."
    )
    consecutive_failures: common.Count | None = pydantic.Field(
        default=None, description="Failed attempts since the last success."
    )
    circuit: CircuitState | None = pydantic.Field(
        default=None, description="Closed (calling), Open (resting) or HalfOpen (one trial)."
    )
    pending_deliveries: common.Count | None = pydantic.Field(
        default=None, description="Events waiting for this endpoint."
    )
    delivered_total: common.Count | None = pydantic.Field(
        default=None, description="Events delivered to this endpoint so far."
    )
    failed_total: common.Count | None = pydantic.Field(
        default=None, description="Events given up on (attempts exhausted or expired)."
    )
    conditions: list[common.Condition] = common.conditions_field(
        "Current conditions; Ready is True while the endpoint is Active."
    )
    observed_generation: common.Generation | None = common.observed_generation_field()
    kopf: dict[str, Any] | None = common.kopf_status_field()


KIND_INFO: Final = common.KindInfo(
    kind="Webhook",
    plural="webhooks",
    singular="webhook",
    short_names=("wh",),
    description=(
        "Webhook is an HTTP endpoint that receives the namespace's events, signed with "
        "Standard Webhooks headers, retried on failure and rate limited, delivered by the "
        "notifier."
    ),
    spec_model=WebhookSpec,
    status_model=WebhookStatus,
    printer_columns=(
        common.PrinterColumn("URL", "string", ".spec.url", "Endpoint URL."),
        common.PrinterColumn("Phase", "string", ".status.phase", "Delivery phase."),
        common.reason_column(
            "Cause of the phase, e.g. Delivering, CircuitOpen or AwaitingNotifier."
        ),
        common.PrinterColumn("Circuit", "string", ".status.circuit", "Circuit breaker."),
        common.PrinterColumn(
            "Failures", "integer", ".status.consecutiveFailures", "Failures since last success."
        ),
        common.PrinterColumn(
            "Pending", "integer", ".status.pendingDeliveries", "Events waiting for the endpoint."
        ),
        common.age_column(),
    ),
)
