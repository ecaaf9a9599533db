"""The notifier's pure parts: Webhook objects to endpoints, routing, and status."""

from __future__ import annotations

import base64
import datetime
import uuid
from dataclasses import replace
from typing import Any

import pydantic
import pytest

from fintech_operator import api
from fintech_operator.events import envelope
from fintech_operator.notify import endpoints, policy, service, status, store
from tests.unit.test_events_schema import posted, wire
from tests.unit.test_rewards_plan import Record, record_of

SECRET = b"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
CREATED = "2026-11-29T09:00:00Z"
UID = "8a7c2a4e-1111-4222-8333-444455556666"


def webhook(**spec_changes: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "url": "http://127.0.0.1:9/hook",
        "eventTypes": ["dev.fintech.posting.*"],
        "secretRef": {"name": "hook-secret"},
    }
    spec.update(spec_changes)
    return {
        "metadata": {
            "namespace": "shop",
            "name": "hook",
            "uid": UID,
            "generation": 2,
            "creationTimestamp": CREATED,
        },
        "spec": spec,
    }


def test_a_webhook_with_defaults_becomes_an_endpoint() -> None:
    """Absent retry, rate and breaker settings take the documented defaults."""
    endpoint = endpoints.from_resource(webhook(), SECRET)
    assert endpoint.ref == "shop/hook"
    assert endpoint.uid == uuid.UUID(UID)
    assert endpoint.retry == policy.RetryPolicy(10, 5.0, 3600.0, 259_200.0)
    assert (endpoint.rate_per_second, endpoint.burst) == (10.0, 20)
    assert (endpoint.failure_threshold, endpoint.open_seconds) == (5, 30.0)
    assert (endpoint.timeout_seconds, endpoint.suspend) == (5.0, False)
    assert endpoint.key is not None
    assert endpoint.problem is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [(None, "SecretNotFound"), (b"hunter2", "SecretInvalid"), (b"\xff\xfe", "SecretInvalid")],
)
def test_an_unusable_secret_holds_deliveries_with_a_reason(
    value: bytes | None, problem: str
) -> None:
    """A missing or malformed Secret is a problem to report, not a reason to drop events."""
    endpoint = endpoints.from_resource(webhook(), value)
    assert endpoint.key is None
    assert endpoint.problem is not None
    assert endpoint.problem.startswith(problem)


@pytest.mark.parametrize(
    "changes",
    [
        {"url": "ftp://example.com/x"},
        {"url": "http://"},
        {"eventTypes": []},
        {"eventTypes": ["posting.posted"]},
        {"eventTypes": ["dev.fintech.posting.posted.v1", "dev.fintech.posting.posted.v1"]},
        {"eventTypes": ["dev.fintech.*.posted.v1"]},
        {"timeoutSeconds": 0},
        {"timeoutSeconds": 31},
        {"retry": {"maxAttempts": 0}},
        {"retry": {"initialDelaySeconds": 10, "maxDelaySeconds": 5}},
        {"retry": {"maxAgeSeconds": 30}},
        {"rateLimit": {"requestsPerSecond": 0}},
        {"circuitBreaker": {"openSeconds": 3601}},
        {"secretRef": {"name": "Bad_Name"}},
        {"secretRef": {"name": "ok", "key": "no/slash"}},
        {"surprise": True},
    ],
)
def test_invalid_webhook_specs_are_refused(changes: dict[str, Any]) -> None:
    """The model refuses every bad spec the CRD schema refuses (and the notifier skips it)."""
    with pytest.raises(pydantic.ValidationError):
        api.WebhookSpec.model_validate(webhook(**changes)["spec"])
    with pytest.raises(endpoints.InvalidWebhook):
        endpoints.from_resource(webhook(**changes), SECRET)


def test_missing_metadata_is_an_invalid_webhook() -> None:
    """A Webhook without a uid cannot be tracked in the delivery log."""
    obj = webhook()
    del obj["metadata"]["uid"]
    with pytest.raises(endpoints.InvalidWebhook):
        endpoints.from_resource(obj, SECRET)


def test_secret_values_are_base64_decoded_from_secret_data() -> None:
    """A Secret's data is base64; absent keys and bad base64 read as missing."""
    data = {"secret": base64.b64encode(SECRET).decode()}
    assert endpoints.secret_value(data, "secret") == SECRET
    assert endpoints.secret_value(data, "other") is None
    assert endpoints.secret_value({"secret": "!!"}, "secret") is None
    assert endpoints.secret_value(None, "secret") is None


@pytest.mark.parametrize(
    ("namespace", "patterns", "selected"),
    [("m1-abc", ["m1-*"], True), ("m2-abc", ["m1-*"], False), ("any", [], True)],
)
def test_namespace_patterns(namespace: str, patterns: list[str], selected: bool) -> None:
    """The notifier can be limited to namespaces by shell patterns, like the operator."""
    assert endpoints.namespace_selected(namespace, patterns) is selected


def test_routing_matches_namespace_type_and_creation_time() -> None:
    """An event goes to Webhooks of its namespace that subscribe to its type and existed then."""
    shop = endpoints.from_resource(webhook(), SECRET)
    other_ns = replace(shop, uid=uuid.uuid4(), namespace="elsewhere")
    cards_only = replace(shop, uid=uuid.uuid4(), event_types=("dev.fintech.card.*",))
    later = replace(
        shop, uid=uuid.uuid4(), created_at=datetime.datetime(2027, 1, 1, tzinfo=datetime.UTC)
    )
    record = record_of(wire(posted()))
    deliveries, poisons = service.route([record], [shop, other_ns, cards_only, later])
    assert poisons == []
    assert [d.webhook_uid for d in deliveries] == [shop.uid]
    assert deliveries[0].body == record.value  # The exact bytes: signatures cover them.
    assert deliveries[0].event_type == "dev.fintech.posting.posted.v1"


def test_unknown_types_with_a_valid_envelope_are_forwarded() -> None:
    """A newer producer's event type still reaches '*' subscribers (forward compatible)."""
    everything = endpoints.from_resource(webhook(eventTypes=["*"]), SECRET)
    event = envelope.Draft(
        event_id=uuid.uuid4(),
        type_="dev.fintech.card.renewed.v1",  # not (yet) a type of the catalog
        source="/fintech-operator/cards",
        subject_text="namespaces/shop/cards/alice",
        time=datetime.datetime(2026, 11, 29, 10, 0, tzinfo=datetime.UTC),
        data={"card": "shop/alice"},
    ).build()
    deliveries, poisons = service.route([record_of(event)], [everything])
    assert (len(deliveries), poisons) == (1, [])


def test_invalid_events_are_poison_and_the_rest_still_route() -> None:
    """Garbage and a known type with bad data are dead-lettered; good events still go."""
    shop = endpoints.from_resource(webhook(), SECRET)
    bad_data = wire(posted())
    bad_data["data"]["amount"] = -5
    records = [Record(b"nope"), record_of(bad_data), record_of(wire(posted()))]
    deliveries, poisons = service.route(records, [shop])
    assert len(deliveries) == 1
    assert [p.record for p in poisons] == records[:2]
    assert all(p.reason.startswith("invalid event") for p in poisons)


def test_lock_ids_are_stable_signed_32_bit() -> None:
    """The per-endpoint advisory lock id fits PostgreSQL's int4 and depends only on the uid."""
    uid = uuid.UUID(UID)
    assert service.lock_id(uid) == service.lock_id(uuid.UUID(UID))
    assert -(2**31) <= service.lock_id(uid) < 2**31
    assert -(2**31) <= service.lock_id(uuid.UUID("ffffffff-0000-4000-8000-000000000000")) < 0


def report(**changes: Any) -> store.EndpointReport:
    base = store.EndpointReport(
        problem=None,
        circuit="Closed",
        consecutive_failures=0,
        last_attempt_at=datetime.datetime(2026, 11, 29, 10, 0, 1, 500, tzinfo=datetime.UTC),
        last_success_at=datetime.datetime(2026, 11, 29, 10, 0, 1, tzinfo=datetime.UTC),
        last_event_id=uuid.UUID(UID),
        last_event_type="dev.fintech.posting.posted.v1",
        last_outcome="Delivered",
        last_status_code=200,
        last_error=None,
        delivered_total=3,
        failed_total=0,
        pending=0,
    )
    return replace(base, **changes)


@pytest.mark.parametrize(
    ("endpoint", "suspended", "phase", "reason"),
    [
        (None, False, "Pending", "AwaitingNotifier"),
        (report(), False, "Active", "Delivering"),
        (report(consecutive_failures=2, last_error="HTTP 500"), False, "Active", "Retrying"),
        (report(circuit="Open", consecutive_failures=5), False, "Failing", "CircuitOpen"),
        (report(problem="SecretNotFound: no secret"), False, "Failing", "SecretNotFound"),
        (report(problem="weird text"), False, "Failing", "EndpointProblem"),
        (report(), True, "Suspended", "Suspended"),
    ],
)
def test_status_phases(
    endpoint: store.EndpointReport | None, suspended: bool, phase: str, reason: str
) -> None:
    """Each delivery situation maps to one phase and a CamelCase reason."""
    assert status.phase_of(endpoint, suspended)[:2] == (phase, reason)


def test_an_active_endpoint_says_whether_anything_was_delivered_yet() -> None:
    """Served and not refused, but nothing delivered yet (a new Webhook, or only failures so
    far): Active, Delivering, without claiming that deliveries succeed."""
    fresh = report(
        last_attempt_at=None, last_success_at=None, last_event_id=None, last_event_type=None,
        last_outcome=None, last_status_code=None, delivered_total=0,
    )  # fmt: skip
    assert status.phase_of(fresh, False) == ("Active", "Delivering", "no event delivered yet")
    assert status.phase_of(report(), False) == ("Active", "Delivering", "deliveries succeed")


def test_status_fields_and_change_detection() -> None:
    """Status carries the last delivery and counters; only differences are patched."""
    wanted = status.fields(report(), suspended=False)
    assert wanted["lastDelivery"] == {
        "eventId": UID,
        "eventType": "dev.fintech.posting.posted.v1",
        "attemptedAt": "2026-11-29T10:00:01Z",
        "outcome": "Delivered",
        "statusCode": 200,
        "message": None,  # Named, so the merge patch clears an earlier attempt's error.
    }
    assert (wanted["pendingDeliveries"], wanted["deliveredTotal"]) == (0, 3)
    assert status.changed(dict(wanted), wanted) == {}
    assert status.changed({**wanted, "pendingDeliveries": 9}, wanted) == {"pendingDeliveries": 0}
    assert set(status.fields(None, suspended=False)) == {"phase", "reason", "message"}
    api.WebhookStatus.model_validate(wanted)  # The CRD's status schema accepts it.
