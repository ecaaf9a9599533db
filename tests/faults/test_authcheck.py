"""The checker's authorization rules, on hand-made evidence (pure: no platform).

A consistent record passes; each planted fault (an approval with no hold, a declined answer
that holds, a capture posted twice or posted without the client being told, a retry that got
other bytes or was not a replay, a stored answer other than the one sent, a request never
answered, a card's held or available off the model, events doubled, an expiry too early or
never) is reported with its kind.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pytest

from tests.faults import authcheck

LIMIT = 1_000_000


def _answer(auth: str, approved: bool, **extra: Any) -> str:
    return json.dumps({"approved": approved, "authorization": auth, **extra})


def _line(op: str, req: str, auth: str, card: str, body: dict[str, Any], answer: str,
          **extra: Any) -> dict[str, Any]:  # fmt: skip
    base = {"op": op, "req": req, "auth": auth, "card": card, "body": {"id": req, **body},
            "status": 200, "answer": answer, "retry": False, "replay": False,
            "replayed": False}  # fmt: skip
    return {**base, **extra}


def _clean() -> authcheck.AuthEvidence:
    ev = authcheck.AuthEvidence()
    ev.log = [
        _line("authorize", "a-1", "a-1", "c-0", {"amount": 5000}, _answer("a-1", True)),
        _line("capture", "a-1-cap1", "a-1", "c-0", {"amount": 2000, "final": False},
              _answer("a-1", True, captured=2000)),
        _line("capture", "a-1-cap2", "a-1", "c-0", {"amount": 2500, "final": True},
              _answer("a-1", True, captured=4500)),
        # Cut by a fault (no answer), then answered on retry.
        _line("authorize", "a-2", "a-2", "c-1", {"amount": 3000}, None, status=None,
              retry=True),
        _line("authorize", "a-2", "a-2", "c-1", {"amount": 3000}, _answer("a-2", True)),
        _line("authorize", "a-2", "a-2", "c-1", {"amount": 3000}, _answer("a-2", True),
              replay=True, replayed=True),
        _line("authorize", "a-3", "a-3", "c-0", {"amount": 700},
              _answer("a-3", False, reason="CardNotActive")),
        _line("authorize", "a-4", "a-4", "c-0", {"amount": 1000}, _answer("a-4", True)),
    ]  # fmt: skip
    ev.stored = {
        line["req"]: ("authorize" if line["op"] == "authorize" else "capture", 200, line["answer"])
        for line in ev.log
        if line["answer"] is not None
    }
    ev.rows = {
        "a-1": authcheck.Row("c-0", 5000, 4500, 4500, 500, "closed", False, False),
        "a-2": authcheck.Row("c-1", 3000, 0, 0, 0, "pending", False, False),
        "a-3": authcheck.Row("c-0", 0, 0, 0, 0, "declined", False, False),
        "a-4": authcheck.Row("c-0", 1000, 0, 0, 1000, "expired", True, False),
    }
    ev.capture_journals = {"a-1-cap1": [(10, 2000)], "a-1-cap2": [(11, 2500)]}
    ev.events = Counter({("a-1", "approved"): 1, ("a-1", "captured"): 2, ("a-2", "approved"): 1,
                         ("a-3", "declined"): 1, ("a-4", "approved"): 1,
                         ("a-4", "expired"): 1})  # fmt: skip
    ev.card_held = {"c-0": 0, "c-1": 3000}
    ev.card_status = {"c-0": (0, LIMIT - 500 - 4500), "c-1": (3000, LIMIT - 3000)}
    return ev


PURCHASES = Counter({"c-0": 500})


def test_clean_authorizations_pass() -> None:
    """The baseline: a consistent record has no violation (else every planted test is moot)."""
    assert authcheck.check(_clean(), PURCHASES, LIMIT) == []


def _plant(ev: authcheck.AuthEvidence, fault: str) -> None:  # noqa: PLR0912 - one per fault
    if fault == "approved, no hold":
        del ev.rows["a-2"]
    elif fault == "declined, holds":
        ev.rows["a-3"] = authcheck.Row("c-0", 700, 0, 0, 0, "pending", False, False)
    elif fault == "capture posted twice":
        ev.capture_journals["a-1-cap1"].append((12, 2000))
    elif fault == "capture not told":
        ev.capture_journals["a-2-cap"] = [(13, 100)]
    elif fault == "approved capture lost":
        del ev.capture_journals["a-1-cap2"]
    elif fault == "retry other bytes":
        ev.log.append(_line("authorize", "a-4", "a-4", "c-0", {"amount": 1000},
                            _answer("a-4", False, reason="SpendLimitExceeded")))  # fmt: skip
    elif fault == "retry not replayed":
        ev.log.append({**ev.log[-1], "replay": True, "replayed": False})
    elif fault == "stored other bytes":
        ev.stored["a-2"] = ("authorize", 200, _answer("a-2", False))
    elif fault == "never answered":
        ev.log.append(_line("authorize", "a-9", "a-9", "c-0", {"amount": 1}, None,
                            status=None, retry=True))  # fmt: skip
    elif fault == "books hold":
        ev.card_held["c-1"] = 2999
    elif fault == "status available":
        ev.card_status["c-0"] = (0, LIMIT - 5000 + 1)
    elif fault == "approved twice":
        ev.events[("a-2", "approved")] = 2
    elif fault == "expired early":
        ev.rows["a-4"] = authcheck.Row("c-0", 1000, 0, 0, 1000, "expired", False, False)
    elif fault == "never expired":
        ev.rows["a-2"] = authcheck.Row("c-1", 3000, 0, 0, 0, "pending", True, True)
    elif fault == "declined approval held":  # told IssuerUnavailable (stored), yet it holds
        ev.log.append(_line("authorize", "a-5", "a-5", "c-1", {"amount": 10},
                            _answer("a-5", False, reason="IssuerUnavailable"),
                            replayed=True))  # fmt: skip
        ev.rows["a-5"] = authcheck.Row("c-1", 10, 0, 0, 0, "pending", False, False)
    elif fault == "closed untold":
        ev.rows["a-2"] = authcheck.Row("c-1", 3000, 0, 0, 3000, "closed", False, False)


CASES = {
    "approved, no hold": "lost", "declined, holds": "wrong", "capture posted twice": "doubled",
    "capture not told": "wrong", "approved capture lost": "lost", "retry other bytes": "wrong",
    "retry not replayed": "doubled", "stored other bytes": "wrong", "never answered": "stuck",
    "books hold": "wrong", "status available": "wrong", "approved twice": "doubled",
    "expired early": "wrong", "never expired": "stuck", "closed untold": "wrong",
    "declined approval held": "wrong",
}  # fmt: skip


@pytest.mark.parametrize(("fault", "kind"), sorted(CASES.items()))
def test_planted_authorization_violation_is_reported(fault: str, kind: str) -> None:
    ev = _clean()
    _plant(ev, fault)
    found = authcheck.check(ev, PURCHASES, LIMIT)
    assert kind in {k for k, _ in found}, (fault, found)


# --- Unanswered, then retried (issue 16) -------------------------------------------------------

UNAVAILABLE = _answer("a-2", False, reason="IssuerUnavailable", status="declined", held=0)


@pytest.mark.parametrize(
    ("status", "answer", "replayed", "retry"),
    [
        (None, None, False, True),  # no answer at all
        (502, "bad gateway", False, True),
        (200, "not json", False, True),
        (200, json.dumps({"reason": "Overloaded"}), False, True),
        (200, UNAVAILABLE, False, True),  # the gateway's own deadline decline
        (200, UNAVAILABLE, True, False),  # the settled decline, stored: an answer
        (200, _answer("a-2", True), False, False),
        (409, json.dumps({"error": "IdempotencyConflict"}), False, False),
        (200, "[]", False, True),
    ],
)
def test_what_counts_as_an_answer_of_the_ledger(
    status: int | None, answer: str | None, replayed: bool, retry: bool
) -> None:
    assert authcheck.retryable(status, answer, replayed) is retry


def test_a_retry_after_a_deadline_decline_gets_the_earlier_attempts_approval() -> None:
    """Cut, then the gateway's own IssuerUnavailable on the second attempt (while the first
    had committed), then the approval, replayed: the request's answer is the approval, and the
    deadline decline is neither a wrong answer nor a retry that was not a replay."""
    ev = _clean()
    a2 = next(i for i, line in enumerate(ev.log) if line["req"] == "a-2")
    ev.log.insert(a2 + 1, _line("authorize", "a-2", "a-2", "c-1", {"amount": 3000}, UNAVAILABLE))
    ev.log.append(_line("authorize", "a-2", "a-2", "c-1", {"amount": 3000}, UNAVAILABLE,
                        replay=True))  # fmt: skip
    assert authcheck.check(ev, PURCHASES, LIMIT) == []


def test_an_old_record_that_kept_the_gateways_decline_is_judged_by_the_ledgers_answer() -> None:
    """A line the client flagged as an answer is still not one if it is the gateway's own
    decline: the checker decides from the line, not the flag."""
    ev = _clean()
    ev.log.insert(3, _line("authorize", "a-2", "a-2", "c-1", {"amount": 3000}, UNAVAILABLE))
    assert authcheck.check(ev, PURCHASES, LIMIT) == []
    model = authcheck.replay(ev.log)
    assert model.answers["a-2"][0]["answer"] == _answer("a-2", True)


def test_only_gateway_declines_is_an_unanswered_request() -> None:
    ev = _clean()
    ev.log.append(_line("authorize", "a-9", "a-9", "c-0", {"amount": 1},
                        _answer("a-9", False, reason="IssuerUnavailable")))  # fmt: skip
    assert ("stuck", "request a-9 was never answered") in authcheck.check(ev, PURCHASES, LIMIT)


# --- Captures after expiry ---------------------------------------------------------------------


def _expired_then_force_posted(final: bool) -> authcheck.AuthEvidence:
    """a-4 expired (its whole hold released); then its capture arrived: a force post of 600."""
    ev = _clean()
    ev.log.append(_line("capture", "a-4-cap", "a-4", "c-0", {"amount": 600, "final": final},
                        _answer("a-4", True, forcePost=True, captured=600, held=0,
                                status="expired")))  # fmt: skip
    ev.stored["a-4-cap"] = ("capture", 200, ev.log[-1]["answer"])
    ev.capture_journals["a-4-cap"] = [(14, 600)]
    ev.events[("a-4", "captured")] = 1
    ev.card_status["c-0"] = (0, LIMIT - 500 - 4500 - 600)
    return ev


@pytest.mark.parametrize("final", [True, False])
def test_a_capture_after_expiry_is_a_force_post_not_a_capture_of_the_hold(final: bool) -> None:
    """The hold's row stays expired with nothing captured (the force post touches no hold);
    the journal counts in what the card spent. Counting it against the hold reported a wrong
    captured figure, and a final one a hold "closed" that the books rightly show expired."""
    assert authcheck.check(_expired_then_force_posted(final), PURCHASES, LIMIT) == []


def test_a_force_post_still_counts_in_what_the_card_spent() -> None:
    ev = _expired_then_force_posted(True)
    ev.card_status["c-0"] = (0, LIMIT - 500 - 4500)  # as if the force post were not spent
    assert "wrong" in {k for k, _ in authcheck.check(ev, PURCHASES, LIMIT)}


def test_a_force_post_posted_twice_is_doubled() -> None:
    ev = _expired_then_force_posted(True)
    ev.capture_journals["a-4-cap"].append((15, 600))
    assert "doubled" in {k for k, _ in authcheck.check(ev, PURCHASES, LIMIT)}


def test_a_capture_of_the_hold_that_the_books_lack_is_still_wrong() -> None:
    """Not a force post: a capture told approved that the hold does not show is wrong."""
    ev = _expired_then_force_posted(True)
    line = ev.log[-1]
    line["answer"] = _answer("a-4", True, forcePost=False, captured=600)
    ev.stored["a-4-cap"] = ("capture", 200, line["answer"])
    assert "wrong" in {k for k, _ in authcheck.check(ev, PURCHASES, LIMIT)}


def test_a_capture_cut_by_its_deadline_then_refused_409_is_not_doubled() -> None:
    """Found by the 900 s campaign (seed 1617): a capture declined IssuerUnavailable by the
    gateway (its id then reserved by the settle), retried and refused 409 IdempotencyConflict,
    then sent again on purpose: the same 409, not marked replayed because a refusal is worked
    out afresh and never stored. Nothing was written twice: no violation."""
    ev = _clean()
    conflict = json.dumps({"error": "IdempotencyConflict", "field": "kind"})
    body = {"amount": 100, "final": True}
    ev.log += [
        _line("capture", "a-2-cap", "a-2", "c-1", body, UNAVAILABLE, retry=True),
        _line("capture", "a-2-cap", "a-2", "c-1", body, conflict, status=409),
        _line("capture", "a-2-cap", "a-2", "c-1", body, conflict, status=409, replay=True),
    ]
    ev.stored["a-2-cap"] = ("timeout", 200, UNAVAILABLE)
    assert authcheck.check(ev, PURCHASES, LIMIT) == []


def test_a_capture_cut_by_its_deadline_then_replayed_its_decline_is_clean() -> None:
    """Since migration 0074: the retry of a capture the settle reserved gets the stored
    IssuerUnavailable, marked replayed, and so does a deliberate replay: no violation."""
    ev = _clean()
    body = {"amount": 100, "final": True}
    ev.log += [
        _line("capture", "a-2-cap", "a-2", "c-1", body, UNAVAILABLE, retry=True),
        _line("capture", "a-2-cap", "a-2", "c-1", body, UNAVAILABLE, replayed=True),
        _line("capture", "a-2-cap", "a-2", "c-1", body, UNAVAILABLE, replay=True, replayed=True),
    ]
    ev.stored["a-2-cap"] = ("timeout", 200, UNAVAILABLE)
    assert authcheck.check(ev, PURCHASES, LIMIT) == []


def test_a_stored_answer_retried_without_the_replay_mark_is_still_doubled() -> None:
    """The rule itself stays: an approval sent again that is not marked replayed was decided
    again."""
    ev = _clean()
    ev.log.append({**ev.log[0], "replay": True, "replayed": False})
    assert ("doubled", "request a-1: a retry was not a replay") in authcheck.check(
        ev, PURCHASES, LIMIT
    )
