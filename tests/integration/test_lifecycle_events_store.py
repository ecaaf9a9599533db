"""Card and reconciliation events are written with their change, once, in real PostgreSQL.

The ledger engine writes a card's ``card.issued`` in the transaction that opens its account
and ``card.state_changed`` to Closed in the one that closes it; the reconciliation store writes
``recon.completed`` with the run's final state. Each test proves the event commits exactly when
the change does (a refused change leaves no event) and that a retry never adds a second row.
"""

from __future__ import annotations

import datetime
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import psycopg
import pytest
import referencing
from psycopg_pool import AsyncConnectionPool

from fintech_operator.cards import store as card_store
from fintech_operator.events import relay, schema
from fintech_operator.ledger import engine, model, rules
from fintech_operator.recon import model as recon
from fintech_operator.recon import parse, store

pytestmark = pytest.mark.integration

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events"
NOW = datetime.datetime(2026, 11, 29, 10, 0, tzinfo=datetime.UTC)


def _validator(type_: str) -> jsonschema.Draft202012Validator:
    resources = [
        (contents["$id"], referencing.Resource.from_contents(contents))
        for contents in (json.loads(p.read_text()) for p in DOCS.glob("*.schema.json"))
    ]
    registry: referencing.Registry[Any] = referencing.Registry().with_resources(resources)
    contents = json.loads((DOCS / f"{type_}.schema.json").read_text())
    return jsonschema.Draft202012Validator(contents, registry=registry)


def outbox_rows(raw: psycopg.Connection[Any], key: str) -> list[tuple[Any, ...]]:
    """(type, event id, topic, journal id) of every outbox row keyed ``key``, oldest first."""
    return raw.execute(
        "SELECT payload->>'type', event_id, topic, journal_id FROM outbox WHERE key = %s"
        " ORDER BY id",
        (key,),
    ).fetchall()


def published(raw: psycopg.Connection[Any], event_id: uuid.UUID) -> dict[str, Any]:
    """The row as the relay would publish it, decoded from the wire bytes."""
    row = raw.execute(
        "SELECT id, event_id, topic, key, payload, headers, journal_id FROM outbox"
        " WHERE event_id = %s",
        (event_id,),
    ).fetchone()
    assert row is not None
    message = relay.to_message(
        relay.OutboxRow(row[0], str(row[1]), row[2], row[3], row[4], row[5], row[6]), ""
    )
    decoded: dict[str, Any] = json.loads(message.value)
    return decoded


def issued_event(name: str, uid: str, token: str = "tok_" + "ab" * 16) -> model.OutboxEvent:
    return schema.CardIssued(
        namespace="shop",
        name=name,
        uid=uid,
        user_id="u1",
        product="standard",
        currency="USD",
        token=token,
        last4="4242",
        state="Active",
        issued_at=NOW,
    ).outbox()


def closed_event(name: str, uid: str, generation: int = 3) -> model.OutboxEvent:
    return schema.CardStateChanged(
        namespace="shop",
        name=name,
        uid=uid,
        generation=generation,
        from_phase="Active",
        to_state="Closed",
        now=NOW,
    ).outbox()


async def test_card_issued_commits_with_the_account_once(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """Opening the account writes card.issued in the same transaction; a retried open (same
    derived id, even with another token) adds nothing, and the stored token is the first."""
    name, uid = f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    first = issued_event(name, uid)
    async with pool.connection() as conn:
        await engine.open_card_account(conn, "shop", name, "USD", events=[first])
        retry = issued_event(name, uid, token="tok_" + "cd" * 16)
        await engine.open_card_account(conn, "shop", name, "USD", events=[retry])
        stored = await card_store.issued(conn, first.event_id)
    assert outbox_rows(raw, f"shop/{name}") == [(schema.CARD_ISSUED, first.event_id, "cards", None)]
    assert stored is not None
    assert (stored.token.token, stored.token.last4) == ("tok_" + "ab" * 16, "4242")
    assert stored.issued_at == NOW
    wire = published(raw, first.event_id)
    _validator(schema.CARD_ISSUED).validate(wire)
    assert schema.decode(json.dumps(wire).encode()).event_id == first.event_id


async def test_a_refused_open_writes_no_event(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """An account that exists in another currency is refused, and its event rolls back too."""
    name, uid = f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    async with pool.connection() as conn:
        await engine.open_card_account(conn, "shop", name, "EUR")
        code = model.card_account_code("shop", name, "EUR")
        with pytest.raises(model.AccountConflict):
            await engine.open_account(
                conn,
                code,
                "EUR",
                model.AccountKind.CARD,
                model.Direction.CREDIT,
                engine.Opening(events=[issued_event(name, uid)]),
            )
        assert await card_store.issued(conn, issued_event(name, uid).event_id) is None
    assert outbox_rows(raw, f"shop/{name}") == []


async def test_closing_writes_state_changed_once_and_only_when_it_closes(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """A close refused for a balance writes nothing; the close that succeeds writes
    card.state_changed to Closed; closing again (a retry, a deletion) writes nothing more."""
    name, uid = f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())
    async with pool.connection() as conn:
        account = await engine.open_card_account(conn, "shop", name, "USD")
    fee = model.PostingRequest(
        idempotency_key=f"fee-{uid}",
        kind=model.PostingKind.FEE,
        lines=rules.lines_for(model.PostingKind.FEE, account.code, 500, "USD"),
        occurred_at=NOW,
    )
    await engine.post(pool, fee)
    async with pool.connection() as conn:
        with pytest.raises(model.AccountNotEmpty):
            await engine.close_account(conn, account.code, events=[closed_event(name, uid)])
    assert outbox_rows(raw, f"shop/{name}") == []
    payment = model.PostingRequest(
        idempotency_key=f"pay-{uid}",
        kind=model.PostingKind.PAYMENT,
        lines=rules.lines_for(model.PostingKind.PAYMENT, account.code, 500, "USD"),
        occurred_at=NOW,
    )
    await engine.post(pool, payment)
    async with pool.connection() as conn:
        await engine.close_account(conn, account.code, events=[closed_event(name, uid)])
        # A later close (the deletion handler, another generation) is a no-op, event included.
        await engine.close_account(conn, account.code, events=[closed_event(name, uid, 9)])
    rows = outbox_rows(raw, f"shop/{name}")
    assert [(r[0], r[1]) for r in rows] == [
        (schema.CARD_STATE_CHANGED, closed_event(name, uid).event_id)
    ]
    _validator(schema.CARD_STATE_CHANGED).validate(published(raw, rows[0][1]))


async def test_write_events_skips_ids_already_written(
    pool: AsyncConnectionPool[Any], raw: psycopg.Connection[Any]
) -> None:
    """A freeze written twice (a retried handler) is one row; a new generation's is another."""
    name, uid = f"c-{uuid.uuid4().hex[:8]}", str(uuid.uuid4())

    def freeze(generation: int) -> model.OutboxEvent:
        return schema.CardStateChanged(
            namespace="shop",
            name=name,
            uid=uid,
            generation=generation,
            from_phase="Active",
            to_state="Frozen",
            now=NOW,
        ).outbox()

    async with pool.connection() as conn:
        assert await engine.write_events(conn, [freeze(2)]) == 1
        assert await engine.write_events(conn, [freeze(2)]) == 0
        assert await engine.write_events(conn, [freeze(4)]) == 1
    assert [r[1] for r in outbox_rows(raw, f"shop/{name}")] == [
        freeze(2).event_id,
        freeze(4).event_id,
    ]


# --- Reconciliation ---------------------------------------------------------------------------

EMPTY_CSV = "reference,amount,currency,occurredAt\n"
WINDOW = recon.Window(NOW - datetime.timedelta(days=400), NOW - datetime.timedelta(days=399))


def plan(**overrides: Any) -> recon.Plan:
    values: dict[str, Any] = {
        "checks": frozenset({recon.Check.SETTLEMENT}),
        "tolerances": recon.Tolerances(),
        "window": WINDOW,
        "event_lag_seconds_max": 300,
        "dry_run": False,
    }
    values.update(overrides)
    return recon.Plan(**values)


def records(text: str) -> store.RecordSource:
    return lambda: parse.parse("csv", [text], 1_000)


def recon_events(raw: psycopg.Connection[Any], key: store.RunKey) -> list[dict[str, Any]]:
    ids = raw.execute(
        "SELECT event_id FROM outbox WHERE key = %s AND payload->>'type' = %s ORDER BY id",
        (f"{key.namespace}/{key.name}", schema.RECON_COMPLETED),
    ).fetchall()
    return [published(raw, event_id) for (event_id,) in ids]


def test_a_run_writes_one_recon_completed_with_its_result(
    migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """A finished run's event carries its summary, window and attempt; asking for the run
    again (a retried handler, a restarted operator) reports it without a second event."""
    key = store.RunKey(str(uuid.uuid4()), "finance", f"run-{uuid.uuid4().hex[:8]}")
    csv = EMPTY_CSV + "R-NOWHERE,1500,USD," + WINDOW.start.isoformat() + "\n"
    done = store.execute(migrated_database_url, key, plan(), records(csv))
    again = store.execute(migrated_database_url, key, plan(), records(csv))
    assert again == done
    [event] = recon_events(raw, key)
    _validator(schema.RECON_COMPLETED).validate(event)
    assert event["id"] == str(schema.lifecycle_event_id(schema.RECON_COMPLETED, key.uid))
    data = event["data"]
    assert done.summary is not None
    assert (data["phase"], data["attempt"], data["exceptions"]) == ("Succeeded", 1, 1)
    assert data["summary"] == dict(done.summary)
    assert data["window"] == {
        "start": WINDOW.start.isoformat().replace("+00:00", ".000Z"),
        "end": WINDOW.end.isoformat().replace("+00:00", ".000Z"),
    }
    assert done.completed_at is not None
    assert schema.decode(json.dumps(event).encode()).envelope.moment == done.completed_at.replace(
        microsecond=done.completed_at.microsecond // 1000 * 1000
    )


def test_a_failed_run_writes_one_failed_event(
    migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """A source that cannot be parsed fails the run; its event says why, with no summary."""
    key = store.RunKey(str(uuid.uuid4()), "finance", f"run-{uuid.uuid4().hex[:8]}")
    failed = store.execute(migrated_database_url, key, plan(dry_run=True), records("no,header"))
    assert failed.state == "failed"
    store.execute(migrated_database_url, key, plan(dry_run=True), records("no,header"))
    [event] = recon_events(raw, key)
    _validator(schema.RECON_COMPLETED).validate(event)
    data = event["data"]
    assert (data["phase"], data["reason"], data["exceptions"], data["dryRun"]) == (
        "Failed",
        failed.reason,
        0,
        True,
    )
    assert "summary" not in data


def test_an_interrupted_attempt_writes_no_event_and_the_next_writes_one(
    migrated_database_url: str, raw: psycopg.Connection[Any]
) -> None:
    """An attempt rolled back half way leaves no event; the attempt that finishes writes one,
    numbered 2."""
    key = store.RunKey(str(uuid.uuid4()), "finance", f"run-{uuid.uuid4().hex[:8]}")
    stop = threading.Event()
    lines = EMPTY_CSV + "".join(f"R-{n},{n},USD,2024-01-01T00:00:00Z\n" for n in range(1, 21_001))

    def stopping() -> Iterator[recon.Record]:
        for index, found in enumerate(parse.parse("csv", [lines], 1_000_000)):
            if index == 15_000:
                stop.set()  # The worker checks every 10,000 records: it stops at 20,000.
            yield found

    with pytest.raises(recon.Interrupted):
        store.execute(migrated_database_url, key, plan(), stopping, stop=stop)
    assert recon_events(raw, key) == []
    done = store.execute(migrated_database_url, key, plan(), records(EMPTY_CSV))
    [event] = recon_events(raw, key)
    assert (done.attempt, event["data"]["attempt"]) == (2, 2)
