"""Postings applied with kubectl against the real platform and a real operator process.

Each test states the ledger outcome it proves; every refusal is checked to leave no
journal behind.
"""

from __future__ import annotations

import json
import textwrap
from typing import Any

import psycopg
import pytest

from tests.conftest import Kubectl, OperatorProcesses, wait_for

pytestmark = pytest.mark.e2e

PRODUCT = """
apiVersion: fintech.dev/v1alpha1
kind: CardProduct
metadata: {name: standard}
spec: {currency: USD, rewardsRateBps: 100}
"""
CARD = """
apiVersion: fintech.dev/v1alpha1
kind: Card
metadata: {name: %(name)s}
spec:
  userId: u_%(name)s
  product: standard
  holder: {name: Ada Lovelace, country: GB, kycStatus: Accepted}
  state: %(state)s
  spendLimit: {amount: %(limit)d, interval: Daily}
"""


def _posting(name: str, card: str, type_: str, amount: int, **extra: Any) -> str:
    spec = {"card": card, "type": type_, "amount": amount, "currency": "USD", **extra}
    return json.dumps({"apiVersion": "fintech.dev/v1alpha1", "kind": "Posting",
                       "metadata": {"name": name}, "spec": spec})  # fmt: skip


def _apply(kubectl: Kubectl, ns: str, text: str, check: bool = True) -> Any:
    return kubectl("apply", "-n", ns, "-f", "-", input=textwrap.dedent(text), check=check)


def _status(kubectl: Kubectl, ns: str, kind: str, name: str) -> dict[str, Any]:
    out = kubectl("get", "-n", ns, kind, name, "-o", "json").stdout
    status: dict[str, Any] = json.loads(out).get("status") or {}
    return status


def _decided(kubectl: Kubectl, ns: str, name: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        status = _status(kubectl, ns, "posting", name)
        return status if status.get("phase") in ("Posted", "Rejected") else None

    result: dict[str, Any] = wait_for(f"posting {name} decided", probe, timeout_seconds=60)
    return result


def _card(
    kubectl: Kubectl, ns: str, name: str, *, state: str = "Active", limit: int = 10**9
) -> None:
    _apply(kubectl, ns, PRODUCT)
    _apply(kubectl, ns, CARD % {"name": name, "state": state, "limit": limit})
    wait_for(
        f"card {name} issued",
        lambda: _status(kubectl, ns, "card", name).get("phase") in ("Active", "Frozen"),
    )


def _journals(database_url: str, key: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT count(*) FROM journals WHERE idempotency_key = %s", (key,))
        found = row.fetchone()
    return int(found[0]) if found else 0


def _balance(database_url: str, account: str) -> int:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT b.debits_minor - b.credits_minor FROM account_balances b "
            "JOIN accounts a ON a.id = b.account_id WHERE a.code = %s", (account,),
        ).fetchone()  # fmt: skip
    return int(row[0]) if row else 0


@pytest.fixture(scope="module")
def database(operator_env: dict[str, str]) -> str:
    return operator_env["DATABASE_URL"]


def test_each_type_posts_with_the_right_balance(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """Purchase, Refund, Payment, Fee and Adjustment all post; the balance is their net."""
    ns = op_namespace
    _card(kubectl, ns, "c1")
    amounts = {"Purchase": 10_000, "Refund": 2_000, "Payment": 3_000, "Fee": 500,
               "Adjustment": 100}  # fmt: skip
    for type_, amount in amounts.items():
        _apply(kubectl, ns, _posting(f"p-{type_.lower()}", "c1", type_, amount))
    for type_ in amounts:
        status = _decided(kubectl, ns, f"p-{type_.lower()}")
        assert status["phase"] == "Posted", status
        assert int(status["journalId"]) > 0
    expected = 10_000 - 2_000 - 3_000 + 500 + 100
    assert _balance(database, f"card:{ns}/c1:USD") == expected
    posted_event = wait_for(
        "a Normal Posted Event",
        lambda: "Posted" in kubectl("get", "events", "-n", ns, "--field-selector",
                                    "involvedObject.name=p-purchase,type=Normal",
                                    "-o", "jsonpath={.items[*].reason}").stdout,
    )  # fmt: skip
    assert posted_event
    shown = wait_for(
        "card status balance",
        lambda: (_status(kubectl, ns, "card", "c1").get("balance") or {}).get("amount") == expected,
    )
    assert shown


def test_reapplying_a_deleted_posting_never_posts_twice(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """Delete and re-apply (as Argo CD may): the same journal comes back, one journal total."""
    ns = op_namespace
    _card(kubectl, ns, "c2")
    text = _posting("again", "c2", "Purchase", 700)
    _apply(kubectl, ns, text)
    first = _decided(kubectl, ns, "again")
    kubectl("delete", "-n", ns, "posting", "again")
    _apply(kubectl, ns, text)
    second = _decided(kubectl, ns, "again")
    assert first["phase"] == second["phase"] == "Posted"
    assert first["journalId"] == second["journalId"]
    assert _journals(database, f"{ns}/again") == 1
    assert _balance(database, f"card:{ns}/c2:USD") == 700


def test_same_explicit_key_with_another_body_is_a_conflict(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """A second object reusing an idempotency key with a different amount is rejected."""
    ns = op_namespace
    _card(kubectl, ns, "c3")
    _apply(kubectl, ns, _posting("k1", "c3", "Purchase", 100, idempotencyKey="ext-42"))
    assert _decided(kubectl, ns, "k1")["phase"] == "Posted"
    _apply(kubectl, ns, _posting("k2", "c3", "Purchase", 999, idempotencyKey="ext-42"))
    status = _decided(kubectl, ns, "k2")
    assert (status["phase"], status["reason"]) == ("Rejected", "IdempotencyConflict")
    assert _journals(database, "ext-42") == 1


@pytest.mark.parametrize(
    ("name", "card", "extra", "reason"),
    [
        ("unknown-card", "nope", {}, "CardNotFound"),
        ("wrong-currency", "c4", {"currency": "EUR"}, "CurrencyMismatch"),
        ("over-limit", "c4", {"amount": 60_000}, "SpendLimitExceeded"),
        ("unbalanced", "c4", {"entries": "UNBALANCED"}, "Unbalanced"),
    ],
)
def test_bad_postings_end_rejected_with_reason_and_no_journal(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str,
    name: str, card: str, extra: dict[str, Any], reason: str,
) -> None:  # fmt: skip
    """Each semantically bad posting ends Rejected with its reason, an Event, and no journal."""
    ns = op_namespace
    _card(kubectl, ns, "c4", limit=50_000)
    if extra.get("entries") == "UNBALANCED":
        extra = {"entries": [
            {"account": f"card:{ns}/c4:USD", "direction": "Debit", "amount": 500,
             "currency": "USD"},
            {"account": "system:adjustments:USD", "direction": "Credit", "amount": 400,
             "currency": "USD"},
        ]}  # fmt: skip
    amount = extra.pop("amount", 1_000)
    _apply(kubectl, ns, _posting(name, card, "Purchase", amount, **extra))
    status = _decided(kubectl, ns, name)
    assert (status["phase"], status.get("reason")) == ("Rejected", reason), status
    assert status["message"]
    assert _journals(database, f"{ns}/{name}") == 0
    events = kubectl("get", "events", "-n", ns, "--field-selector",
                     f"involvedObject.name={name}", "-o", "json").stdout  # fmt: skip
    assert reason in events


@pytest.mark.parametrize(
    ("field", "value", "named"),
    [
        ("amount", 0, "spec.amount"),
        ("amount", -5, "spec.amount"),
        ("amount", 10**16, "spec.amount"),
        ("amount", 12.5, "spec.amount"),
        ("merchant", {"name": "X", "mcc": "58a4"}, "spec.merchant.mcc"),
    ],
)
def test_malformed_postings_are_refused_at_apply_time(
    kubectl: Kubectl, op_namespace: str, field: str, value: Any, named: str
) -> None:
    """Zero, negative, huge and fractional amounts and a malformed MCC never reach the ledger."""
    spec = {"card": "c", "type": "Purchase", "amount": 100, "currency": "USD", field: value}
    doc = json.dumps({"apiVersion": "fintech.dev/v1alpha1", "kind": "Posting",
                      "metadata": {"name": "bad"}, "spec": spec})  # fmt: skip
    result = _apply(kubectl, op_namespace, doc, check=False)
    assert result.returncode != 0
    assert named in result.stderr


def test_posted_spec_cannot_be_edited(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses
) -> None:
    """Changing the amount of a posted Posting is refused by the API server (CEL)."""
    ns = op_namespace
    _card(kubectl, ns, "c5")
    _apply(kubectl, ns, _posting("fixed", "c5", "Purchase", 100))
    assert _decided(kubectl, ns, "fixed")["phase"] == "Posted"
    result = _apply(kubectl, ns, _posting("fixed", "c5", "Purchase", 200), check=False)
    assert result.returncode != 0
    assert "immutable" in result.stderr


def test_reversal_once_then_refused(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """A reversal restores the balance; reversing it again or twice is rejected."""
    ns = op_namespace
    _card(kubectl, ns, "c6")
    _apply(kubectl, ns, _posting("buy", "c6", "Purchase", 4_000))
    assert _decided(kubectl, ns, "buy")["phase"] == "Posted"
    _apply(kubectl, ns, _posting("undo", "c6", "Purchase", 4_000, reverses="buy"))
    assert _decided(kubectl, ns, "undo")["phase"] == "Posted"
    assert _balance(database, f"card:{ns}/c6:USD") == 0
    _apply(kubectl, ns, _posting("undo2", "c6", "Purchase", 4_000, reverses="buy"))
    assert _decided(kubectl, ns, "undo2")["reason"] == "AlreadyReversed"
    _apply(kubectl, ns, _posting("undo3", "c6", "Purchase", 4_000, reverses="undo"))
    assert _decided(kubectl, ns, "undo3")["reason"] == "NotReversible"
    assert _journals(database, f"{ns}/undo3") == 0
    assert _balance(database, f"card:{ns}/c6:USD") == 0

    def rewards() -> list[int] | None:
        with psycopg.connect(database) as conn:
            rows = conn.execute(
                "SELECT points FROM rewards_ledger WHERE card = %s ORDER BY id", (f"{ns}/c6",)
            ).fetchall()
        return [int(r[0]) for r in rows] if len(rows) == 2 else None

    # The reversal's event takes back exactly the purchase's 1%, through Kafka.
    assert wait_for("the purchase's points and their reversal", rewards) == [40, -40]


def test_a_reversal_applied_with_its_original_reverses_it_in_either_order(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """One kubectl apply of a posting and its reversal (a GitOps folder): the reversal finds
    the original's journal even before the original's status shows it, and a reversal listed
    before its original waits for it instead of ending JournalNotFound."""
    ns = op_namespace
    _card(kubectl, ns, "c12")
    together = "\n---\n".join(
        [
            _posting("fee-a", "c12", "Fee", 300),
            _posting("fee-a-undo", "c12", "Fee", 300, reverses="fee-a"),
            # `kubectl apply -f DIR` takes files in name order: fee-b-undo.yaml before fee-b.yaml.
            _posting("fee-b-undo", "c12", "Fee", 500, reverses="fee-b"),
            _posting("fee-b", "c12", "Fee", 500, idempotencyKey="fee-b-key"),
        ]
    )
    _apply(kubectl, ns, together)
    for name in ("fee-a", "fee-a-undo", "fee-b", "fee-b-undo"):
        status = _decided(kubectl, ns, name)
        assert (name, status.get("phase"), status.get("reason")) == (name, "Posted", None)
    assert _balance(database, f"card:{ns}/c12:USD") == 0


def test_frozen_card_refuses_purchases_but_takes_refunds_and_payments(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """A Frozen card rejects a purchase with CardNotActive and still posts a refund and a
    payment."""
    ns = op_namespace
    _card(kubectl, ns, "c7", state="Frozen")
    _apply(kubectl, ns, _posting("f-buy", "c7", "Purchase", 100))
    _apply(kubectl, ns, _posting("f-refund", "c7", "Refund", 100))
    _apply(kubectl, ns, _posting("f-pay", "c7", "Payment", 100))
    assert _decided(kubectl, ns, "f-buy")["reason"] == "CardNotActive"
    assert _decided(kubectl, ns, "f-refund")["phase"] == "Posted"
    assert _decided(kubectl, ns, "f-pay")["phase"] == "Posted"
    assert _frozen(database, f"card:{ns}/c7:USD")  # issued frozen: frozen in the ledger too


def test_ttl_deletes_the_object_and_keeps_the_journal(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """ttlSecondsAfterFinished removes the finished Posting; its journal stays in the ledger."""
    ns = op_namespace
    _card(kubectl, ns, "c8")
    _apply(kubectl, ns, _posting("short", "c8", "Purchase", 300, ttlSecondsAfterFinished=1))
    assert _decided(kubectl, ns, "short")["phase"] == "Posted"

    def gone() -> bool:
        return kubectl("get", "-n", ns, "posting", "short", check=False).returncode != 0

    try:
        assert wait_for("posting deleted by its TTL", gone, timeout_seconds=30)
    except AssertionError:
        log = operator_processes.log("operator").splitlines()
        print("\n".join(line for line in log if '"short"' in line or "expire" in line))
        raise
    assert _journals(database, f"{ns}/short") == 1


def test_closed_card_takes_late_refunds_only(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """A Closed card rejects a purchase and a payment but still posts a late refund."""
    ns = op_namespace
    _card(kubectl, ns, "c9")
    kubectl("patch", "-n", ns, "card", "c9", "--type=merge", "-p", '{"spec":{"state":"Closed"}}')
    wait_for("card c9 closed", lambda: _status(kubectl, ns, "card", "c9").get("phase") == "Closed")
    _apply(kubectl, ns, _posting("late-refund", "c9", "Refund", 250))
    _apply(kubectl, ns, _posting("after-close", "c9", "Purchase", 100))
    _apply(kubectl, ns, _posting("pay-closed", "c9", "Payment", 100))
    assert _decided(kubectl, ns, "late-refund")["phase"] == "Posted"
    assert _decided(kubectl, ns, "after-close")["reason"] == "CardNotActive"
    assert _decided(kubectl, ns, "pay-closed")["reason"] == "CardNotActive"
    assert _balance(database, f"card:{ns}/c9:USD") == -250


def _entry(account: str, direction: str, amount: int) -> dict[str, Any]:
    return {"account": account, "direction": direction, "amount": amount, "currency": "USD"}


def test_explicit_entries_move_only_their_own_card_by_their_amount(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """A purchase split between settlement and fee revenue posts and earns on its amount;
    entries that touch another card, or move the card by other than spec.amount, are
    refused with no journal."""
    ns = op_namespace
    _card(kubectl, ns, "c10")
    _card(kubectl, ns, "c10-victim")
    mine, victim = f"card:{ns}/c10:USD", f"card:{ns}/c10-victim:USD"
    split = [_entry(mine, "Debit", 5_000), _entry("system:network_settlement:USD", "Credit", 4_900),
             _entry("system:fee_revenue:USD", "Credit", 100)]  # fmt: skip
    steal = [_entry(victim, "Debit", 700), _entry(mine, "Credit", 700)]
    inflate = [_entry(mine, "Debit", 1), _entry("system:network_settlement:USD", "Credit", 1)]
    _apply(kubectl, ns, _posting("split", "c10", "Purchase", 5_000, entries=split))
    _apply(kubectl, ns, _posting("steal", "c10", "Payment", 700, entries=steal))
    _apply(kubectl, ns, _posting("inflate", "c10", "Purchase", 10**9, entries=inflate))
    assert _decided(kubectl, ns, "split")["phase"] == "Posted"
    assert _decided(kubectl, ns, "steal")["reason"] == "AccountNotAllowed"
    assert _decided(kubectl, ns, "inflate")["reason"] == "InvalidSpec"
    assert (_journals(database, f"{ns}/steal"), _journals(database, f"{ns}/inflate")) == (0, 0)
    assert (_balance(database, mine), _balance(database, victim)) == (5_000, 0)

    def points() -> int | None:
        with psycopg.connect(database) as conn:
            row = conn.execute(
                "SELECT points FROM rewards_ledger WHERE card = %s", (f"{ns}/c10",)
            ).fetchone()
        return int(row[0]) if row else None

    assert wait_for("the split purchase's points", points) == 50  # 1% of what was posted


def test_a_reapplied_posting_stays_posted_after_its_card_froze(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """Argo CD re-creating a posted Posting after the card was frozen replays its journal;
    it never turns into a rejection of money that did move."""
    ns = op_namespace
    _card(kubectl, ns, "c11")
    text = _posting("before-freeze", "c11", "Purchase", 900)
    _apply(kubectl, ns, text)
    first = _decided(kubectl, ns, "before-freeze")
    kubectl("patch", "-n", ns, "card", "c11", "--type=merge", "-p", '{"spec":{"state":"Frozen"}}')
    wait_for(
        "card c11 frozen", lambda: _status(kubectl, ns, "card", "c11").get("phase") == "Frozen"
    )
    kubectl("delete", "-n", ns, "posting", "before-freeze")
    _apply(kubectl, ns, text)
    second = _decided(kubectl, ns, "before-freeze")
    assert (second["phase"], second["journalId"]) == ("Posted", first["journalId"])
    assert _journals(database, f"{ns}/before-freeze") == 1
    # The freeze is in the ledger too (the database refuses debits), and so is the unfreeze.
    assert _frozen(database, f"card:{ns}/c11:USD")
    kubectl("patch", "-n", ns, "card", "c11", "--type=merge", "-p", '{"spec":{"state":"Active"}}')
    wait_for(
        "card c11 active", lambda: _status(kubectl, ns, "card", "c11").get("phase") == "Active"
    )
    assert not _frozen(database, f"card:{ns}/c11:USD")


def _frozen(database_url: str, account: str) -> bool:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT frozen_at FROM accounts WHERE code = %s", (account,)).fetchone()
    assert row is not None, account
    return row[0] is not None


def test_reversals_must_match_their_original_and_the_cards_state(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """A partial "reversal" is refused; a posting deleted by its TTL can still be reversed;
    undoing a payment on a Frozen card charges it, so it is refused like a purchase."""
    ns = op_namespace
    _card(kubectl, ns, "c12")
    _apply(kubectl, ns, _posting("gone", "c12", "Purchase", 3_000, ttlSecondsAfterFinished=0))
    _apply(kubectl, ns, _posting("paid", "c12", "Payment", 1_000))
    assert _decided(kubectl, ns, "paid")["phase"] == "Posted"
    wait_for(
        "posting gone deleted by its TTL",
        lambda: kubectl("get", "-n", ns, "posting", "gone", check=False).returncode != 0,
        timeout_seconds=30,
    )
    _apply(kubectl, ns, _posting("part", "c12", "Purchase", 1, reverses="gone"))
    assert _decided(kubectl, ns, "part")["reason"] == "InvalidSpec"
    _apply(kubectl, ns, _posting("undo-gone", "c12", "Purchase", 3_000, reverses="gone"))
    assert _decided(kubectl, ns, "undo-gone")["phase"] == "Posted"
    kubectl("patch", "-n", ns, "card", "c12", "--type=merge", "-p", '{"spec":{"state":"Frozen"}}')
    wait_for(
        "card c12 frozen", lambda: _status(kubectl, ns, "card", "c12").get("phase") == "Frozen"
    )
    _apply(kubectl, ns, _posting("unpay", "c12", "Payment", 1_000, reverses="paid"))
    assert _decided(kubectl, ns, "unpay")["reason"] == "CardNotActive"
    assert (_journals(database, f"{ns}/part"), _journals(database, f"{ns}/unpay")) == (0, 0)
    assert _balance(database, f"card:{ns}/c12:USD") == -1_000


def test_a_deleted_cards_open_debt_can_still_be_paid(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """Deleting a card that owes money leaves its account open; a Payment still settles it,
    a Purchase is refused (CardNotActive) and writes nothing."""
    ns = op_namespace
    _card(kubectl, ns, "c13")
    _apply(kubectl, ns, _posting("owed", "c13", "Purchase", 2_500))
    assert _decided(kubectl, ns, "owed")["phase"] == "Posted"
    kubectl("delete", "-n", ns, "card", "c13", "--timeout=60s")
    _apply(kubectl, ns, _posting("settle", "c13", "Payment", 2_500))
    _apply(kubectl, ns, _posting("charge-gone", "c13", "Purchase", 100))
    assert _decided(kubectl, ns, "settle")["phase"] == "Posted"
    refused = _decided(kubectl, ns, "charge-gone")
    assert (refused["reason"], _journals(database, f"{ns}/charge-gone")) == ("CardNotActive", 0)
    assert "Deleted" in refused["message"]
    assert _balance(database, f"card:{ns}/c13:USD") == 0


def test_a_card_without_a_limit_inherits_its_products_monthly_limit(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """The product's default spendLimit guards a card that sets none: the purchase that
    would cross the Monthly limit is SpendLimitExceeded and writes nothing."""
    ns = op_namespace
    _apply(kubectl, ns, """
        apiVersion: fintech.dev/v1alpha1
        kind: CardProduct
        metadata: {name: capped}
        spec: {currency: USD, spendLimit: {amount: 5000, interval: Monthly}}
        """)  # fmt: skip
    _apply(kubectl, ns, """
        apiVersion: fintech.dev/v1alpha1
        kind: Card
        metadata: {name: c14}
        spec:
          userId: u_c14
          product: capped
          holder: {name: Ada Lovelace, country: GB, kycStatus: Accepted}
        """)  # fmt: skip
    wait_for(
        "card c14 issued", lambda: _status(kubectl, ns, "card", "c14").get("phase") == "Active"
    )
    _apply(kubectl, ns, _posting("m1", "c14", "Purchase", 4_000))
    assert _decided(kubectl, ns, "m1")["phase"] == "Posted"
    _apply(kubectl, ns, _posting("m2", "c14", "Purchase", 1_500))
    assert _decided(kubectl, ns, "m2")["reason"] == "SpendLimitExceeded"
    _apply(kubectl, ns, _posting("m3", "c14", "Purchase", 1_000))
    assert _decided(kubectl, ns, "m3")["phase"] == "Posted"  # exactly at the limit
    assert _journals(database, f"{ns}/m2") == 0
    assert _balance(database, f"card:{ns}/c14:USD") == 5_000


def test_merchant_country_velocity_amount_and_structuring_through_the_operator(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """A blocked merchant country and a velocity amount decline (RiskDeclined, recorded with
    the rule); three postings just under the AML threshold raise a Structuring alert."""
    ns = op_namespace
    _apply(kubectl, ns, """
        apiVersion: fintech.dev/v1alpha1
        kind: RiskPolicy
        metadata: {name: strict}
        spec:
          blockedMerchantCountries: {countries: [KP], action: Decline}
          velocity: [{windowSeconds: 3600, maxAmount: {amount: 300000, currency: USD},
                      action: Decline}]
        ---
        apiVersion: fintech.dev/v1alpha1
        kind: CompliancePolicy
        metadata: {name: aml}
        spec:
          aml:
            dailyThreshold: {amount: 100000, currency: USD}
            structuring: {enabled: true, minCount: 3, marginBps: 1000}
        """)  # fmt: skip
    wait_for(
        "policies ready",
        lambda: (
            _status(kubectl, ns, "riskpolicy", "strict").get("phase") == "Ready"
            and _status(kubectl, ns, "compliancepolicy", "aml").get("phase") == "Ready"
        ),
    )
    _card(kubectl, ns, "c15")
    shop = {"name": "Shop", "mcc": "5411", "country": "US"}
    plan = [("abroad", 1_000, {**shop, "country": "KP"}, "Rejected"),
            ("s1", 95_000, shop, "Posted"), ("s2", 95_000, shop, "Posted"),
            ("s3", 95_000, shop, "Posted"), ("s4", 20_000, shop, "Rejected")]  # fmt: skip
    for name, amount, merchant, phase in plan:
        _apply(kubectl, ns, _posting(name, "c15", "Purchase", amount, merchant=merchant))
        status = _decided(kubectl, ns, name)
        assert status["phase"] == phase, (name, status)
    with psycopg.connect(database) as conn:
        rules = dict(conn.execute(
            "SELECT subject, matched->0->>'rule' FROM risk_assessments"
            " WHERE subject IN (%s, %s) AND decision = 'Decline'", (f"{ns}/abroad", f"{ns}/s4"),
        ).fetchall())  # fmt: skip
    assert rules == {f"{ns}/abroad": "BlockedMerchantCountry", f"{ns}/s4": "VelocityAmount"}

    def alert_kinds() -> set[str] | None:
        with psycopg.connect(database) as conn:
            rows = conn.execute(
                "SELECT alert_kind FROM compliance_alerts WHERE card = %s", (f"{ns}/c15",)
            ).fetchall()
        kinds = {str(r[0]) for r in rows}
        return kinds if "Structuring" in kinds else None

    assert wait_for("a Structuring alert", alert_kinds) >= {"Structuring"}


def test_a_reapplied_reversal_pointed_at_another_posting_is_a_conflict(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses, database: str
) -> None:
    """A reversal deleted and re-applied unchanged replays; re-applied with `reverses` aimed
    at another posting, its key's journal reverses the first one, so it is IdempotencyConflict
    and the second posting stays unreversed (never a Posted that moved no money)."""
    ns = op_namespace
    _card(kubectl, ns, "c16")
    for name in ("p1", "p2"):
        _apply(kubectl, ns, _posting(name, "c16", "Purchase", 700))
        assert _decided(kubectl, ns, name)["phase"] == "Posted"
    undo = _posting("undo", "c16", "Purchase", 700, reverses="p1")
    _apply(kubectl, ns, undo)
    first = _decided(kubectl, ns, "undo")
    assert first["phase"] == "Posted"
    kubectl("delete", "-n", ns, "posting", "undo")
    _apply(kubectl, ns, undo)
    assert _decided(kubectl, ns, "undo")["journalId"] == first["journalId"]
    kubectl("delete", "-n", ns, "posting", "undo")
    _apply(kubectl, ns, _posting("undo", "c16", "Purchase", 700, reverses="p2"))
    assert _decided(kubectl, ns, "undo")["reason"] == "IdempotencyConflict"
    assert _balance(database, f"card:{ns}/c16:USD") == 700
