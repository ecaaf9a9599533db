"""The seed's end-to-end flow on the real platform, with the operator as a real process.

`kubectl apply -f examples/` (a 1% product, a card for u_demo, a purchase) must end with
the card Active with a token and last 4, the purchase Posted as a balanced journal, its
event relayed through Kafka, and the rewards consumer's 1% in ``rewards_ledger``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import Kubectl, OperatorProcesses, wait_for

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PURCHASE_MINOR = 12_500
# Purchase 125.00, refund 25.00, payment 50.00, fee 3.00, adjustment 1.00.
BALANCE_MINOR = 12_500 - 2_500 - 5_000 + 300 + 100


def _get(kubectl: Kubectl, op_namespace: str, kind: str, name: str) -> dict[str, Any]:
    out = kubectl("get", "-n", op_namespace, kind, name, "-o", "json").stdout
    result: dict[str, Any] = json.loads(out)
    return result


def _status_when(kubectl: Kubectl, ns: str, kind: str, name: str, phases: set[str]) -> Any:
    def probe() -> dict[str, Any] | None:
        status = _get(kubectl, ns, kind, name).get("status") or {}
        return status if status.get("phase") in phases else None

    return wait_for(f"{kind}/{name} in {phases}", probe, timeout_seconds=90)


def test_apply_examples_accrues_one_percent(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """The whole seed path works and the purchase earns exactly 1% in rewards_ledger."""
    kubectl("apply", "-n", op_namespace, "-f", str(EXAMPLES))
    try:
        card = _status_when(kubectl, op_namespace, "card", "u-demo-card", {"Active", "Rejected"})
        posting = _status_when(
            kubectl, op_namespace, "posting", "purchase-0001", {"Posted", "Rejected"}
        )
    except AssertionError:
        print(operator_processes.log("operator")[-5000:])
        raise
    assert card["phase"] == "Active", card
    assert card["token"].startswith("tok_")
    assert re.fullmatch(r"\d{4}", card["last4"])
    assert posting["phase"] == "Posted", posting
    journal_id = int(posting["journalId"])
    database_url = operator_env["DATABASE_URL"]

    def rewards_rows() -> list[tuple[Any, ...]]:
        with psycopg.connect(database_url) as conn:
            return conn.execute(
                "SELECT id, card, journal_id, kind, points, amount_minor, currency, rate_bps "
                "FROM rewards_ledger WHERE journal_id = %s",
                (journal_id,),
            ).fetchall()

    rows = wait_for("a rewards_ledger row", rewards_rows, timeout_seconds=60)
    print("\nrewards_ledger:")
    print("id | card | journal_id | kind | points | amount_minor | currency | rate_bps")
    for row in rows:
        print(" | ".join(str(v) for v in row))
    assert len(rows) == 1
    assert rows[0][1] == f"{op_namespace}/u-demo-card"
    assert rows[0][4] == PURCHASE_MINOR // 100
    _assert_journal_balanced_and_published(database_url, journal_id)
    balance = wait_for("the card balance in status", lambda: _balance(kubectl, op_namespace))
    assert balance == {"amount": BALANCE_MINOR, "currency": "USD"}


def _balance(kubectl: Kubectl, op_namespace: str) -> dict[str, Any] | None:
    status = _get(kubectl, op_namespace, "card", "u-demo-card").get("status") or {}
    balance: dict[str, Any] | None = status.get("balance")
    return balance if balance and balance.get("amount") == BALANCE_MINOR else None


def _assert_journal_balanced_and_published(database_url: str, journal_id: int) -> None:
    with psycopg.connect(database_url) as conn:
        sums = conn.execute(
            "SELECT direction, SUM(amount_minor) FROM entries WHERE journal_id = %s "
            "GROUP BY direction ORDER BY direction",
            (journal_id,),
        ).fetchall()
        published = conn.execute(
            "SELECT count(*) FILTER (WHERE published_at IS NOT NULL), count(*) "
            "FROM outbox WHERE journal_id = %s",
            (journal_id,),
        ).fetchone()
    assert sums == [("credit", PURCHASE_MINOR), ("debit", PURCHASE_MINOR)]
    assert published == (1, 1)
