"""The checker: what the client was told against what the books, Kafka and the webhook
receiver hold. ``collect`` reads the world once (I/O); ``check`` judges it (pure)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition

from fintech_operator.events import topics
from tests.faults import authcheck, receiver, workload

FINAL = ("Posted", "Rejected")
RATE_BPS = 100
# The cards' Lifetime spend limit: far above what a campaign spends, so that available is a
# figure to check (limit - purchases - captures - held) without declining the workload.
LIMIT_MINOR = 1_000_000_000
# How long past its expiresAt an open hold may still be pending (the expiry worker's lag).
EXPIRY_GRACE_SECONDS = 60
KAFKA_READ_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Violation:
    kind: str  # lost | doubled | stuck | wrong
    what: str


@dataclass
class Evidence:
    """Everything the checker judges, read after the campaign quiesced."""

    namespace: str
    specs: dict[str, dict[str, Any]]  # posting name -> spec the client applied
    final: dict[str, tuple[str, str]]  # posting name -> (phase, journalId) on the API now
    seen: list[dict[str, Any]]  # the client's observations, in order
    journals: list[tuple[int, str, str, int | None]] = field(default_factory=list)
    card_balances: dict[str, int] = field(default_factory=dict)  # card name -> debits-credits
    trial: dict[str, tuple[int, int]] = field(default_factory=dict)
    drift: list[str] = field(default_factory=list)
    outbox: list[tuple[str, int | None, bool, str]] = field(default_factory=list)
    kafka_ids: set[str] = field(default_factory=set)
    dead_letters: list[str] = field(default_factory=list)
    rewards: list[tuple[int, int]] = field(default_factory=list)  # (journal_id, points)
    received: list[receiver.Delivery] = field(default_factory=list)
    processes: dict[str, bool] = field(default_factory=dict)
    auth: authcheck.AuthEvidence = field(default_factory=authcheck.AuthEvidence)
    card_status_balances: dict[str, int | None] = field(default_factory=dict)  # kubectl's
    # card name -> (spec.state, status.phase, frozen in the ledger)
    card_states: dict[str, tuple[str, str | None, bool]] = field(default_factory=dict)
    # churned card -> (on the API now: present | deleting | gone, its ledger account's
    # status or None if it never had one, whether its token is retired or None if never
    # mirrored)
    churned: dict[str, tuple[str, str | None, bool | None]] = field(default_factory=dict)


def _ledger_by_posting(ev: Evidence) -> dict[str, list[int]]:
    by_posting: dict[str, list[int]] = defaultdict(list)
    for journal_id, posting, _kind, _rev in ev.journals:
        by_posting[posting].append(journal_id)
    return by_posting


def told_posted(ev: Evidence) -> tuple[dict[str, str], list[Violation]]:
    """Each posting the client ever saw Posted, with its journal; a change of answer is a
    violation (a re-applied object must replay the same journal)."""
    out: list[Violation] = []
    told: dict[str, str] = {}
    for rec in ev.seen:
        name, phase, journal = rec["posting"], rec["phase"], rec["journal"]
        if phase == "Posted" and told.setdefault(name, journal) != journal:
            out.append(Violation("doubled", f"{name} was Posted as {told[name]} then {journal}"))
        elif phase == "Rejected" and name in told:
            out.append(Violation("wrong", f"{name} was Posted as {told[name]}, later Rejected"))
    for name, (phase, journal) in ev.final.items():
        if phase == "Posted" and told.setdefault(name, journal) != journal:
            out.append(Violation("doubled", f"{name} was Posted as {told[name]}, now {journal}"))
    return told, out


def _posting_violations(ev: Evidence) -> list[Violation]:
    by_posting = _ledger_by_posting(ev)
    told, out = told_posted(ev)
    for name, ids in by_posting.items():
        if len(ids) > 1:
            out.append(Violation("doubled", f"{name} has {len(ids)} journals {sorted(ids)}"))
    for name, journal in told.items():
        ledger = by_posting.get(f"{ev.namespace}/{name}", [])
        if [str(i) for i in ledger] != [journal]:
            out.append(Violation("lost", f"{name} was Posted as {journal}; ledger: {ledger}"))
    for name, (phase, _journal) in ev.final.items():
        ledger = by_posting.get(f"{ev.namespace}/{name}", [])
        if phase not in FINAL:
            out.append(Violation("stuck", f"{name} is {phase or 'without a phase'}"))
        elif phase == "Rejected" and ledger:
            out.append(Violation("wrong", f"{name} is Rejected but has journal {ledger}"))
    return out


def _signed(ev: Evidence, name: str) -> int:
    spec = ev.specs[name]
    sign = workload.SIGN[spec["type"]]
    return -sign * spec["amount"] if spec.get("reverses") else sign * spec["amount"]


def _points(ev: Evidence, name: str) -> int:
    """The rule (DESIGN.md invariant 6) at 1%, written out here independently of the product."""
    spec = ev.specs[name]
    base = {"Purchase": 1, "Refund": -1}.get(spec["type"], 0) * (
        spec["amount"] * RATE_BPS // 10_000
    )
    return -base if spec.get("reverses") else base


def _money_violations(ev: Evidence) -> list[Violation]:
    out: list[Violation] = []
    model: Counter[str] = Counter()
    expected_points: dict[int, int] = {}
    told, _ = told_posted(ev)
    for name, journal in told.items():
        model[ev.specs[name]["card"]] += _signed(ev, name)
        expected_points[int(journal)] = _points(ev, name)
    auth_model = authcheck.replay(ev.auth.log)
    for req, (_auth, card, amount) in auth_model.captures.items():
        model[card] += amount
        for journal_id, _amount in ev.auth.capture_journals.get(req, []):
            expected_points[journal_id] = amount * RATE_BPS // 10_000
    for card in sorted(set(model) | set(ev.card_balances)):
        if model[card] != ev.card_balances.get(card, 0):
            out.append(
                Violation(
                    "wrong",
                    f"card {card}: ledger balance "
                    f"{ev.card_balances.get(card, 0)}, client model "
                    f"{model[card]}",
                )
            )
    for card, shown in sorted(ev.card_status_balances.items()):
        if (shown or 0) != model[card]:
            out.append(
                Violation("wrong", f"card {card}: status balance {shown}, model {model[card]}")
            )
    for currency, (debits, credits) in ev.trial.items():
        if debits != credits:
            out.append(Violation("wrong", f"trial balance {currency}: {debits} != {credits}"))
    out += [Violation("wrong", f"balance drift: {code}") for code in ev.drift]
    return out + _rewards_violations(ev, expected_points)


def _rewards_violations(ev: Evidence, expected_points: dict[int, int]) -> list[Violation]:
    """Exactly one rewards row per earning journal, by the rule; none on anything else."""
    out: list[Violation] = []
    points: dict[int, list[int]] = defaultdict(list)
    for journal_id, p in ev.rewards:
        points[journal_id].append(p)
    for journal_id, want in expected_points.items():
        got = points.get(journal_id, [])
        if len(got) > 1:
            out.append(Violation("doubled", f"journal {journal_id} has rewards rows {got}"))
        elif sum(got) != want or (want and not got):
            out.append(Violation("lost", f"journal {journal_id}: points {got}, rule says {want}"))
    out += [
        Violation(
            "wrong",
            f"journal {j} earned {p} points; the client was told of no posting "
            "or capture that earns",
        )
        for j, p in ev.rewards
        if j not in expected_points and p
    ]
    return out


def purchases_spent(ev: Evidence) -> Counter[str]:
    """Per card, what Posted Purchase postings spent against the limit (reversed ones not)."""
    told, _ = told_posted(ev)
    reversed_ = {ev.specs[n]["reverses"] for n in told if ev.specs[n].get("reverses")}
    spent: Counter[str] = Counter()
    for name in told:
        spec = ev.specs[name]
        if spec["type"] == "Purchase" and not spec.get("reverses") and name not in reversed_:
            spent[spec["card"]] += spec["amount"]
    return spent


def _event_violations(ev: Evidence) -> list[Violation]:
    out: list[Violation] = []
    per_journal = Counter(j for _, j, _, _ in ev.outbox if j is not None)
    for journal_id, _posting, _kind, _rev in ev.journals:
        if per_journal[journal_id] != 1:
            out.append(
                Violation(
                    "lost" if per_journal[journal_id] == 0 else "doubled",
                    f"journal {journal_id} has {per_journal[journal_id]} outbox events",
                )
            )
    good = {d.event_id for d in ev.received if d.signature_ok and d.status == 200}
    out += [
        Violation("wrong", f"webhook signature did not verify for {d.event_id}")
        for d in ev.received
        if not d.signature_ok
    ]
    for event_id, _journal, published, etype in ev.outbox:
        if not published:
            out.append(Violation("stuck", f"outbox event {event_id} ({etype}) not published"))
        elif event_id not in ev.kafka_ids:
            out.append(Violation("lost", f"outbox event {event_id} ({etype}) not in Kafka"))
        if event_id not in good:
            out.append(Violation("lost", f"event {event_id} ({etype}) never reached the webhook"))
    out += [Violation("wrong", f"dead letter {d}") for d in ev.dead_letters]
    out += [
        Violation("stuck", f"process {n} is not healthy at the end")
        for n, ok in ev.processes.items()
        if not ok
    ]
    return out


def check(ev: Evidence) -> list[Violation]:
    """Every violation of the campaign's promises; empty when nothing is lost or doubled."""
    auth = [
        Violation(kind, what)
        for kind, what in authcheck.check(ev.auth, purchases_spent(ev), LIMIT_MINOR)
    ]
    return (
        _posting_violations(ev)
        + _money_violations(ev)
        + _event_violations(ev)
        + _card_state_violations(ev)
        + _churn_violations(ev)
        + auth
    )


def _card_state_violations(ev: Evidence) -> list[Violation]:
    """A card's status shows its spec's state, and its ledger account is frozen exactly when
    that state is Frozen (a freeze left in the ledger after an unfreeze refuses purchases the
    card shows it takes: bench/RESULTS.md, "Found by CI")."""
    out: list[Violation] = []
    for card, (spec, phase, frozen) in sorted(ev.card_states.items()):
        if spec not in ("Active", "Frozen"):
            continue
        if phase != spec:
            out.append(Violation("stuck", f"card {card}: spec.state {spec}, status {phase}"))
        elif frozen != (spec == "Frozen"):
            ledger = "frozen" if frozen else "open"
            out.append(Violation("wrong", f"card {card}: {spec}, but {ledger} in the ledger"))
    return out


def _churn_violations(ev: Evidence) -> list[Violation]:
    """A deleted card leaves no account that can spend: closed (zero balance: the churn posts
    nothing) with its token retired, however its deletion met the faults (during its issuance,
    with the operator or the database down). A deletion still pending is stuck; a card whose
    delete never went through is a card like any other."""
    out: list[Violation] = []
    for card, (on_api, status, retired) in sorted(ev.churned.items()):
        if on_api == "deleting":
            out.append(Violation("stuck", f"deleted card {card}: still deleting"))
        elif on_api == "gone" and status not in (None, "closed"):
            out.append(Violation("wrong", f"deleted card {card}: its account is {status}"))
        elif on_api == "gone" and retired is False:
            out.append(Violation("wrong", f"deleted card {card}: its token still authorizes"))
    return out


def read_database(ev: Evidence, database_url: str) -> None:
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        ev.journals = [
            (int(r[0]), str(r[1]), str(r[2]), r[3])
            for r in conn.execute(
                "SELECT id, coalesce(metadata->>'posting', idempotency_key), kind,"
                " reverses_journal_id FROM journals ORDER BY id"
            ).fetchall()
        ]
        prefix = f"card:{ev.namespace}/"
        ev.card_balances = {
            str(code).removeprefix(prefix).rsplit(":", 1)[0]: int(d) - int(c)
            for code, d, c in conn.execute(
                "SELECT a.code, b.debits_minor, b.credits_minor FROM accounts a"
                " JOIN account_balances b ON b.account_id = a.id WHERE a.code LIKE %s",
                (prefix + "%",),
            ).fetchall()
        }
        ev.trial = {
            str(cur): (int(d), int(c))
            for cur, d, c in conn.execute(
                "SELECT a.currency, coalesce(sum(b.debits_minor), 0),"
                " coalesce(sum(b.credits_minor), 0) FROM accounts a"
                " JOIN account_balances b ON b.account_id = a.id GROUP BY a.currency"
            ).fetchall()
        }
        ev.drift = [
            f"ledger {r[0]}"
            for r in conn.execute("SELECT code FROM ledger_balance_drift").fetchall()
        ]
        ev.drift += [
            f"rewards {r[0]}"
            for r in conn.execute("SELECT card FROM rewards_balance_drift").fetchall()
        ]
        ev.outbox = [
            (str(r[0]), r[1], bool(r[2]), str(r[3]))
            for r in conn.execute(
                "SELECT event_id, journal_id, published_at IS NOT NULL, payload->>'type'"
                " FROM outbox ORDER BY id"
            ).fetchall()
        ]
        ev.rewards = [
            (int(j), int(p))
            for j, p in conn.execute("SELECT journal_id, points FROM rewards_ledger").fetchall()
        ]
        ev.drift += [
            f"holds {r[0]}"
            for r in conn.execute("SELECT card FROM authorization_hold_drift").fetchall()
        ]
        _read_authorizations(ev, conn)


def _read_authorizations(ev: Evidence, conn: psycopg.Connection[Any]) -> None:
    prefix = f"{ev.namespace}/"
    auth = ev.auth
    auth.rows = {
        str(r[0]): authcheck.Row(
            card=str(r[1]).removeprefix(prefix),
            held=int(r[2]),
            captured=int(r[3]),
            consumed=int(r[4]),
            released=int(r[5]),
            status=str(r[6]),
            due=bool(r[7]),
            overdue=bool(r[8]),
        )
        for r in conn.execute(
            "SELECT id, coalesce(card, ''), held_minor, captured_minor, consumed_minor,"
            " released_minor, status, coalesce(expires_at <= now(), false),"
            " coalesce(expires_at + make_interval(secs => %s) < now(), false)"
            " FROM authorizations",
            (EXPIRY_GRACE_SECONDS,),
        ).fetchall()
    }
    auth.stored = {
        str(r[0]): (str(r[1]), int(r[2]), bytes(r[3]).decode("utf-8", "replace"))
        for r in conn.execute(
            "SELECT request_id, kind, status_code, answer FROM authorization_requests"
        ).fetchall()
    }
    auth.capture_journals = {}
    for key, journal_id, amount in conn.execute(
        "SELECT j.idempotency_key, j.id, e.amount_minor FROM journals j"
        " JOIN entries e ON e.journal_id = j.id AND e.direction = 'debit'"
        " WHERE j.idempotency_key LIKE %s ORDER BY j.id",
        (authcheck.CAPTURE_KEY + "%",),
    ).fetchall():
        req = str(key).removeprefix(authcheck.CAPTURE_KEY)
        auth.capture_journals.setdefault(req, []).append((int(journal_id), int(amount)))
    auth.events = Counter(
        (str(a), str(t).removeprefix("dev.fintech.authorization.").removesuffix(".v1"))
        for a, t in conn.execute(
            "SELECT payload->'data'->>'authorization', payload->>'type' FROM outbox"
            " WHERE topic = 'authorizations'"
        ).fetchall()
    )
    auth.card_held = {
        str(card).removeprefix(prefix): int(held)
        for card, held in conn.execute(
            # A retired token is a deleted card's (the churn): no status left to compare.
            "SELECT card, held_minor FROM authorization_cards"
            " WHERE namespace = %s AND retired_at IS NULL",
            (ev.namespace,),
        ).fetchall()
    }


async def _read_topics(bootstrap: str, names: tuple[str, ...]) -> dict[str, list[str]]:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, request_timeout_ms=20_000
    )
    try:
        # Inside the try: a start that fails or times out (Kafka still coming back from a
        # kill) has opened connections that only stop() closes; left to the garbage
        # collector they were an unclosed-socket warning, an error under pytest.
        await asyncio.wait_for(consumer.start(), timeout=30)
        found: dict[str, list[str]] = {name: [] for name in names}
        # topics() reads the cluster's metadata but keeps it; the partitions are in it.
        cluster = await consumer._client.fetch_all_metadata()
        parts = [TopicPartition(t, p) for t in names for p in cluster.partitions_for_topic(t) or ()]
        if not parts:
            return found
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        while [tp for tp in parts if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000)
            for tp, records in batch.items():
                for rec in records:
                    ids = [v.decode() for k, v in rec.headers if k == "event-id"]
                    found[tp.topic].append(ids[0] if ids else json.loads(rec.value)["id"])
        return found
    finally:
        await consumer.stop()


def read_kafka(ev: Evidence, bootstrap: str) -> None:
    found = asyncio.run(
        asyncio.wait_for(_read_topics(bootstrap, topics.ALL), KAFKA_READ_TIMEOUT_SECONDS)
    )
    ev.kafka_ids = {i for t in topics.SOURCES for i in found[t]}
    ev.dead_letters = [f"{t}:{i}" for t in topics.DEAD_LETTER for i in found[t]]
