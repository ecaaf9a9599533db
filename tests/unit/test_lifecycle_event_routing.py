"""Card and reconciliation events reach the Webhooks that subscribe to them (pure routing).

The notifier reads every topic, checks a known type's data against its model, and matches
``spec.eventTypes`` (exact, ``prefix.*``, ``*``) in the event's namespace. These tests run the
notifier's own routing function over the bytes the relay publishes for the new types.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import pytest

from fintech_operator.events import relay, schema, topics
from fintech_operator.ledger import model
from fintech_operator.notify import endpoints, service
from tests.unit.test_events_schema import (
    issued,
    recon_completed,
    recon_failed,
    rejected,
    review_requested,
    state_changed,
)
from tests.unit.test_notify_routing import SECRET, webhook


@dataclass
class Record:
    value: bytes
    topic: str
    partition: int = 0
    offset: int = 0
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)


def record(event: model.OutboxEvent) -> Record:
    message = relay.to_message(
        relay.OutboxRow(
            1, str(event.event_id), event.topic, event.key, event.payload, event.headers, None
        ),
        "",
    )
    return Record(message.value, message.topic, key=message.key)


def endpoint(namespace: str, *event_types: str) -> endpoints.Endpoint:
    found = endpoints.from_resource(webhook(eventTypes=list(event_types)), SECRET)
    return replace(found, uid=uuid.uuid4(), namespace=namespace)


CARD_EVENTS = [issued, state_changed, rejected, review_requested]


@pytest.mark.parametrize("builder", CARD_EVENTS)
def test_card_events_reach_card_subscribers_of_their_namespace_only(
    builder: Callable[[], model.OutboxEvent],
) -> None:
    """`dev.fintech.card.*`, the exact type and `*` in the card's namespace get a card event;
    posting subscribers, recon subscribers and other namespaces do not; nothing is poison."""
    event = builder()
    assert event.topic == topics.CARDS
    wanted = [
        endpoint("shop", "dev.fintech.card.*"),
        endpoint("shop", event.payload["type"]),
        endpoint("shop", "*"),
    ]
    unwanted = [
        endpoint("shop", "dev.fintech.posting.*"),
        endpoint("shop", "dev.fintech.recon.*"),
        endpoint("elsewhere", "dev.fintech.card.*"),
    ]
    deliveries, poisons = service.route([record(event)], [*wanted, *unwanted])
    assert poisons == []
    assert sorted(d.webhook_uid for d in deliveries) == sorted(ep.uid for ep in wanted)
    assert {d.event_id for d in deliveries} == {event.event_id}


@pytest.mark.parametrize("builder", [recon_completed, recon_failed])
def test_recon_completed_reaches_recon_subscribers(
    builder: Callable[[], model.OutboxEvent],
) -> None:
    """A run's result goes to `dev.fintech.recon.*` and exact subscribers of its namespace."""
    event = builder()
    wanted = [
        endpoint("finance", "dev.fintech.recon.*"),
        endpoint("finance", schema.RECON_COMPLETED),
    ]
    unwanted = [endpoint("finance", "dev.fintech.card.*"), endpoint("shop", "*")]
    deliveries, poisons = service.route([record(event)], [*wanted, *unwanted])
    assert poisons == []
    assert sorted(d.webhook_uid for d in deliveries) == sorted(ep.uid for ep in wanted)


def test_a_card_event_with_broken_data_is_poison_not_delivered() -> None:
    """A card.issued whose data breaks its model is dead-lettered, never sent to a Webhook."""
    event = issued()
    payload = dict(event.payload)
    payload["data"] = {**payload["data"], "token": "4111111111111111"}
    broken = Record(json.dumps(payload).encode(), "cards")
    deliveries, poisons = service.route([broken], [endpoint("shop", "*")])
    assert deliveries == []
    assert len(poisons) == 1
