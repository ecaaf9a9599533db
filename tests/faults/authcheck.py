"""The checker's rules for real-time authorizations (pure): what the processor was told
against the holds, captures, stored answers and events in PostgreSQL, and the cards' held and
available figures.

The model is replayed from the client's record only: a hold for each approved authorization
(plus approved increments), a Purchase journal for each approved capture, closed by an
approved void or final capture. Whether an open hold expired is the one fact taken from the
books, and it is checked against its ``expiresAt``.

What counts as a request's answer is the ledger's, never the gateway's own decline of one
attempt (``Overloaded``, or ``IssuerUnavailable`` not marked replayed: an earlier attempt of
the same id may have committed, and that answer stands). A request cut by a fault and then
retried is judged by the first answer the ledger gave, and every later answer must equal it.
A capture that arrives after its hold expired is a force post: a journal on the card that
touches no hold, so it counts in what the card spent, not in what the hold captured, and a
final one does not close the hold.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

CAPTURE_KEY = "authorization-capture/"
# The declines the gateway gives by itself (not marked replayed): no answer of the ledger.
GATEWAY_DECLINES = ("Overloaded", "IssuerUnavailable")


def retryable(status: int | None, answer: str | None, replayed: bool) -> bool:
    """True when an attempt got no answer the ledger stands behind (the client sends it again).

    A stored answer comes back marked replayed, so a replayed IssuerUnavailable (a settled
    deadline) is an answer; the gateway's own decline of this one attempt is not."""
    if status is None or status >= 500 or answer is None:
        return True
    try:
        body = json.loads(answer)
    except ValueError:
        return True
    if not isinstance(body, dict):
        return True
    return status == 200 and body.get("reason") in GATEWAY_DECLINES and not replayed


@dataclass(frozen=True)
class Row:
    """An authorization as PostgreSQL holds it."""

    card: str
    held: int
    captured: int
    consumed: int
    released: int
    status: str
    due: bool  # now >= expires_at
    overdue: bool  # now > expires_at + the expiry worker's grace


@dataclass
class AuthEvidence:
    log: list[dict[str, Any]] = field(default_factory=list)  # the client's attempts
    rows: dict[str, Row] = field(default_factory=dict)  # authorization id -> row
    stored: dict[str, tuple[str, int, str]] = field(
        default_factory=dict
    )  # req -> kind, code, answer
    capture_journals: dict[str, list[tuple[int, int]]] = field(default_factory=dict)  # req -> ids
    events: Counter[tuple[str, str]] = field(default_factory=Counter)  # (auth, step) -> count
    card_held: dict[str, int] = field(default_factory=dict)  # card -> held_minor in the books
    card_status: dict[str, tuple[int | None, int | None]] = field(default_factory=dict)


@dataclass
class Model:
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # req -> answered
    unanswered: set[str] = field(default_factory=set)
    placed: dict[str, int] = field(default_factory=dict)  # approved auth -> amount held in total
    declined: set[str] = field(default_factory=set)
    captures: dict[str, tuple[str, str, int]] = field(
        default_factory=dict
    )  # req -> auth, card, amt
    captured: Counter[str] = field(default_factory=Counter)  # auth -> captured from its hold
    closed: set[str] = field(default_factory=set)
    increments: Counter[str] = field(default_factory=Counter)
    # Increments declined IssuerUnavailable: their hold may have committed late and been
    # released by the gateway's settle, with its incremented (and a voided) event.
    unavailable_increments: Counter[str] = field(default_factory=Counter)
    unavailable_amounts: Counter[str] = field(default_factory=Counter)
    card_of: dict[str, str] = field(default_factory=dict)


def _body(line: dict[str, Any]) -> dict[str, Any]:
    try:
        value = json.loads(line["answer"])
    except (TypeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def replay(log: list[dict[str, Any]]) -> Model:
    """The model of what the processor was told, in the order it was told."""
    model = Model()
    attempts: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for line in log:
        attempts[line["req"]].append(line)
        model.card_of[line["auth"]] = line["card"]
    for req, lines in attempts.items():
        # Judged on the line itself, not only the client's flag: a record written before the
        # client retried the gateway's own declines would otherwise count one as the answer.
        answered = [
            x
            for x in lines
            if not x["retry"] and not retryable(x["status"], x["answer"], x["replayed"])
        ]
        if not answered:
            model.unanswered.add(req)
            continue
        model.answers[req] = answered
        _apply(model, answered[0])
    return model


def _apply(model: Model, line: dict[str, Any]) -> None:
    op, auth, body = line["op"], line["auth"], _body(line)
    approved = line["status"] == 200 and body.get("approved") is True
    if op == "authorize":
        if approved:
            model.placed[auth] = line["body"]["amount"]
        else:
            model.declined.add(auth)
    elif op == "increment" and approved:
        model.placed[auth] = model.placed.get(auth, 0) + line["body"]["amount"]
        model.increments[auth] += 1
    elif op == "increment" and body.get("reason") == "IssuerUnavailable":
        model.unavailable_increments[auth] += 1
        model.unavailable_amounts[auth] += line["body"]["amount"]
    elif op == "capture" and approved:
        model.captures[line["req"]] = (auth, line["card"], line["body"]["amount"])
        if body.get("forcePost") is not True:  # a force post touches no hold
            model.captured[auth] += line["body"]["amount"]
            if line["body"]["final"]:
                model.closed.add(auth)
    elif op == "void" and approved:
        model.closed.add(auth)


def still_held(model: Model, rows: dict[str, Row]) -> Counter[str]:
    """Per card, what the model says is held now (open holds not yet expired)."""
    held: Counter[str] = Counter()
    for auth, placed in model.placed.items():
        row = rows.get(auth)
        if auth in model.closed or (row is not None and row.status == "expired"):
            continue
        held[model.card_of[auth]] += max(0, placed - model.captured[auth])
    return held


def spent_by_captures(model: Model) -> Counter[str]:
    spent: Counter[str] = Counter()
    for _auth, card, amount in model.captures.values():
        spent[card] += amount
    return spent


def _answer_violations(ev: AuthEvidence, model: Model) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for req in sorted(model.unanswered):
        out.append(("stuck", f"request {req} was never answered"))
    for req, lines in model.answers.items():
        first = lines[0]
        # Refusals that write nothing (a 409 for an id used by another kind of request, such as
        # a capture id its deadline settle reserved before migration 0074; a 404) are worked
        # out afresh each time, so their retries are never marked replayed, and nothing can be
        # doubled by them.
        conflict = _body(first).get("error") in ("IdempotencyConflict", "AuthorizationNotFound")
        for later in lines[1:]:
            if (later["status"], later["answer"]) != (first["status"], first["answer"]):
                out.append(
                    (
                        "wrong",
                        f"request {req}: a retry got {later['answer']!r}, "
                        f"first answer {first['answer']!r}",
                    )
                )
            elif later["replay"] and not later["replayed"] and not conflict:
                out.append(("doubled", f"request {req}: a retry was not a replay"))
        stored = ev.stored.get(req)
        # A deadline decline is stored by the gateway's settle; a gateway killed before it
        # settles stores nothing (docs/gateway.md): then the hold rules prove nothing is held.
        unsettled = _body(first).get("reason") == "IssuerUnavailable"
        if first["status"] == 200 and stored is None and not unsettled:
            out.append(("lost", f"request {req} was answered {first['answer']!r}; not stored"))
        elif (
            stored is not None
            and stored[0] != "timeout"
            and not conflict
            and (stored[1], stored[2]) != (first["status"], first["answer"])
        ):
            out.append(
                (
                    "wrong",
                    f"request {req}: told {first['status']} {first['answer']!r}"
                    f", stored {stored[1]} {stored[2]!r}",
                )
            )
    return out


def _hold_violations(ev: AuthEvidence, model: Model) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for auth, placed in model.placed.items():
        row = ev.rows.get(auth)
        if row is None:
            out.append(("lost", f"authorization {auth} was approved; no hold in the books"))
            continue
        want_status = "closed" if auth in model.closed else ("expired", "pending")
        late = model.unavailable_amounts[auth]
        if not placed <= row.held <= placed + late or row.captured != model.captured[auth]:
            out.append(
                (
                    "wrong",
                    f"authorization {auth}: held {row.held} captured "
                    f"{row.captured}, told {placed} and {model.captured[auth]}",
                )
            )
        if row.status not in want_status:
            out.append(("wrong", f"authorization {auth} is {row.status}, told {want_status}"))
        elif row.status == "expired" and not row.due:
            out.append(("wrong", f"authorization {auth} expired before its expiresAt"))
        elif row.status == "pending" and row.overdue:
            out.append(("stuck", f"authorization {auth} is past its expiresAt, still pending"))
        if ev.events[(auth, "approved")] != 1:
            out.append(
                (
                    "lost" if not ev.events[(auth, "approved")] else "doubled",
                    f"authorization {auth}: {ev.events[(auth, 'approved')]} approved events",
                )
            )
        expired = 1 if row.status == "expired" else 0
        if ev.events[(auth, "expired")] != expired:
            out.append(
                (
                    "wrong",
                    f"authorization {auth} ({row.status}): "
                    f"{ev.events[(auth, 'expired')]} expired events",
                )
            )
        told = model.increments[auth]
        if (
            not told
            <= ev.events[(auth, "incremented")]
            <= told + model.unavailable_increments[auth]
        ):
            out.append(
                (
                    "wrong",
                    f"authorization {auth}: {ev.events[(auth, 'incremented')]} "
                    f"increment events, told {told}",
                )
            )
    for auth in model.declined - set(model.placed):
        row = ev.rows.get(auth)
        if row is not None and (row.status == "pending" or row.captured):
            out.append(("wrong", f"authorization {auth} was declined; it holds {row}"))
    return out


def _capture_violations(ev: AuthEvidence, model: Model) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    captured_events: Counter[str] = Counter()
    for (auth, step), count in ev.events.items():
        if step == "captured":
            captured_events[auth] += count
    for req, journals in ev.capture_journals.items():
        if len(journals) > 1:
            out.append(("doubled", f"capture {req} has journals {journals}"))
        if req not in model.captures:
            out.append(
                (
                    "wrong",
                    f"capture {req} has journal {journals}; the client was not "
                    "told it was captured",
                )
            )
    for req, (_auth, _card, amount) in model.captures.items():
        got = ev.capture_journals.get(req, [])
        if [a for _, a in got] != [amount]:
            out.append(("lost", f"capture {req} of {amount} was approved; journals {got}"))
    captures_per_auth = Counter(auth for auth, _c, _a in model.captures.values())
    for auth in set(captured_events) | set(captures_per_auth):
        if captured_events[auth] != captures_per_auth[auth]:
            out.append(
                (
                    "wrong",
                    f"authorization {auth}: {captured_events[auth]} captured "
                    f"events, {captures_per_auth[auth]} captures approved",
                )
            )
    return out


def _card_violations(
    ev: AuthEvidence, model: Model, spent: Counter[str], limit_minor: int
) -> list[tuple[str, str]]:
    """Per card: held in the books and in status, and available, against the model."""
    out: list[tuple[str, str]] = []
    held = still_held(model, ev.rows)
    for card in sorted(set(ev.card_status) | set(held) | set(ev.card_held)):
        if ev.card_held.get(card, 0) != held[card]:
            out.append(
                (
                    "wrong",
                    f"card {card}: books hold {ev.card_held.get(card, 0)}, model {held[card]}",
                )
            )
        status_held, available = ev.card_status.get(card, (None, None))
        want = limit_minor - spent[card] - held[card]
        if (status_held or 0, available) != (held[card], want):
            out.append(
                (
                    "wrong",
                    f"card {card}: status held {status_held} available "
                    f"{available}, model {held[card]} and {want}",
                )
            )
    return out


def check(ev: AuthEvidence, purchases: Counter[str], limit_minor: int) -> list[tuple[str, str]]:
    """Violations as (kind, what). ``purchases`` is what Posting Purchases spent per card."""
    model = replay(ev.log)
    spent = purchases + spent_by_captures(model)
    return (
        _answer_violations(ev, model)
        + _hold_violations(ev, model)
        + _capture_violations(ev, model)
        + _card_violations(ev, model, spent, limit_minor)
    )
