"""The checker's judgement, on hand-made evidence (pure: no platform).

A clean record passes; each planted fault (a doubled journal, a lost posting, a missing
outbox event, an event missing from Kafka or from the webhook, doubled rewards, a wrong
balance, a stuck posting, a bad signature) is reported with its kind. Without these the
campaign's "lost 0 / doubled 0" could be a checker that never looks.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.faults import checker, receiver

NS = "faults"


def _clean() -> checker.Evidence:
    specs = {
        "p-1": {"card": "c-0", "type": "Purchase", "amount": 12_345, "currency": "USD"},
        "p-2": {"card": "c-0", "type": "Refund", "amount": 1_000, "currency": "USD"},
        "p-3": {"card": "c-1", "type": "Purchase", "amount": 500, "currency": "USD",
                "reverses": "p-4"},
        "p-4": {"card": "c-1", "type": "Purchase", "amount": 500, "currency": "USD"},
        "p-5": {"card": "c-1", "type": "Fee", "amount": 300, "currency": "USD"},
    }  # fmt: skip
    final = {"p-1": ("Posted", "1"), "p-2": ("Posted", "2"), "p-3": ("Posted", "4"),
             "p-4": ("Posted", "3"), "p-5": ("Rejected", "")}  # fmt: skip
    seen = [{"posting": n, "phase": p, "journal": j} for n, (p, j) in final.items()]
    ev = checker.Evidence(NS, specs, final, seen)
    ev.journals = [(1, f"{NS}/p-1", "Purchase", None), (2, f"{NS}/p-2", "Refund", None),
                   (3, f"{NS}/p-4", "Purchase", None), (4, f"{NS}/p-3", "Reversal", 3)]  # fmt: skip
    ev.card_balances = {"c-0": 12_345 - 1_000, "c-1": 0}
    ev.trial = {"USD": (50_000, 50_000)}
    ev.outbox = [(f"e{j}", j, True, "dev.fintech.posting.posted.v1") for j in (1, 2, 3, 4)]
    ev.outbox.append(("e-card", None, True, "dev.fintech.card.activated.v1"))
    ev.kafka_ids = {e for e, *_ in ev.outbox} | {"e1"}  # a duplicate in Kafka is allowed
    ev.rewards = [(1, 123), (2, -10), (3, 5), (4, -5)]
    ev.received = [receiver.Delivery(0.0, e, True, 200) for e, *_ in ev.outbox]
    ev.received.append(receiver.Delivery(0.0, "e1", True, 500))  # a failed attempt, retried
    ev.processes = {"operator": True}
    ev.card_states = {"c-0": ("Active", "Active", False), "c-1": ("Frozen", "Frozen", True)}
    ev.churned = {
        "churn-0001": ("gone", "closed", True),  # issued, then deleted: closed, retired
        "churn-0002": ("gone", None, None),  # deleted before it was issued: no account
        "churn-0003": ("present", "open", False),  # its delete never went through: a card
    }
    return ev


def test_clean_evidence_passes() -> None:
    """The baseline: a consistent record has no violation (else every planted test is moot)."""
    assert checker.check(_clean()) == []


def _plant(ev: checker.Evidence, fault: str) -> None:  # noqa: PLR0912 - one per fault
    if fault == "double journal":
        ev.journals.append((9, f"{NS}/p-1", "Purchase", None))
        ev.outbox.append(("e9", 9, True, "t"))
        ev.kafka_ids.add("e9")
        ev.received.append(receiver.Delivery(0.0, "e9", True, 200))
    elif fault == "lost journal":
        ev.journals = [j for j in ev.journals if j[0] != 2]
    elif fault == "missing outbox":
        ev.outbox = [o for o in ev.outbox if o[1] != 3]
    elif fault == "not in kafka":
        ev.kafka_ids.discard("e2")
    elif fault == "unpublished":
        ev.outbox[0] = ("e1", 1, False, "t")
    elif fault == "not delivered":
        ev.received = [d for d in ev.received if d.event_id != "e-card"]
    elif fault == "bad signature":
        ev.received.append(receiver.Delivery(0.0, "e1", False, 200))
    elif fault == "double rewards":
        ev.rewards.append((1, 123))
    elif fault == "wrong balance":
        ev.card_balances["c-0"] += 1
    elif fault == "stuck":
        ev.final["p-6"] = ("", "")
    elif fault == "rejected with row":
        ev.final["p-2"] = ("Rejected", "")
        ev.seen.append({"posting": "p-2", "phase": "Rejected", "journal": ""})
    elif fault == "dead letter":
        ev.dead_letters.append("postings.rewards.dlq:e1")
    elif fault == "trial":
        ev.trial["USD"] = (1, 2)
    elif fault == "drift":
        ev.drift.append("ledger card:faults/c-0:USD")
    elif fault == "process":
        ev.processes["notifier"] = False
    elif fault == "rewards on nothing":
        ev.rewards.append((99, 50))  # journal 99 is no posting or capture the client knows
    elif fault == "status balance":
        ev.card_status_balances["c-1"] = 1
    elif fault == "frozen in the ledger":
        ev.card_states["c-1"] = ("Active", "Active", True)
    elif fault == "open in the ledger":
        ev.card_states["c-1"] = ("Frozen", "Frozen", False)
    elif fault == "status behind":
        ev.card_states["c-1"] = ("Active", "Frozen", True)
    elif fault == "deleted card open":
        ev.churned["churn-0001"] = ("gone", "open", True)
    elif fault == "deleted card token":
        ev.churned["churn-0001"] = ("gone", "closed", False)
    elif fault == "deletion pending":
        ev.churned["churn-0001"] = ("deleting", "open", False)


CASES = {
    "double journal": "doubled", "lost journal": "lost", "missing outbox": "lost",
    "not in kafka": "lost", "unpublished": "stuck", "not delivered": "lost",
    "bad signature": "wrong", "double rewards": "doubled", "wrong balance": "wrong",
    "stuck": "stuck", "rejected with row": "wrong", "dead letter": "wrong", "trial": "wrong",
    "drift": "wrong", "process": "stuck", "rewards on nothing": "wrong", "status balance": "wrong",
    "frozen in the ledger": "wrong", "open in the ledger": "wrong", "status behind": "stuck",
    "deleted card open": "wrong", "deleted card token": "wrong", "deletion pending": "stuck",
}  # fmt: skip


@pytest.mark.parametrize(("fault", "kind"), sorted(CASES.items()))
def test_planted_violation_is_reported(fault: str, kind: str) -> None:
    """Each planted fault is reported with the right kind."""
    ev = _clean()
    _plant(ev, fault)
    kinds = {v.kind for v in checker.check(ev)}
    assert kind in kinds, (fault, checker.check(ev))


def test_every_violation_is_written_one_json_object_a_line(tmp_path: Path) -> None:
    """The report shows the first few; the file keeps them all, and is empty when clean."""
    from tests.faults import campaign  # noqa: PLC0415 - the campaign module imports the platform

    found = [checker.Violation("stuck", f"posting p-{i} has no phase") for i in range(50)]
    found.append(checker.Violation("wrong", 'request a-1: told "x"\nstored "y"'))
    path = tmp_path / campaign.VIOLATIONS_FILE
    campaign.write_violations(path, found)
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"kind": v.kind, "what": v.what} for v in found]
    campaign.write_violations(path, [])
    assert path.read_text() == ""
