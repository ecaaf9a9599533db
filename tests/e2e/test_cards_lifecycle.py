"""Every transition of the card lifecycle, through the operator as a real process.

One operator serves the module; each test works in its own namespace with a few objects:
issuance with risk and compliance (approve, review, reject through each kind of rule), manual
review with CardReview, freeze and unfreeze, a close refused while the balance is not zero and
completed once it is paid, CEL refusing a reopening, deletion with the finalizer, the product
that waits for its cards, policy status, and finally the PAN scan of everything. Each lifecycle
test also reads the card's events back from the real Kafka ``cards`` topic (in order, each
valid against its JSON Schema, no card number), and a Webhook receives them via the notifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import re
import secrets
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from fintech_operator import api, pan
from fintech_operator.events import schema
from tests.conftest import Kubectl, OperatorProcesses, wait_for
from tests.e2e.lifecycle_events import wait_events

pytestmark = pytest.mark.e2e
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT_SECONDS = 90.0
ISSUED = schema.CARD_ISSUED
CHANGED = schema.CARD_STATE_CHANGED
REJECTED = schema.CARD_REJECTED
REVIEW = schema.CARD_REVIEW_REQUESTED


# --- Helpers --------------------------------------------------------------------------------------


def apply(kubectl: Kubectl, ns: str, *objects: dict[str, Any]) -> None:
    documents = [{"apiVersion": "fintech.dev/v1alpha1", **obj} for obj in objects]
    kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump_all(documents))


def get(kubectl: Kubectl, ns: str, kind: str, name: str) -> dict[str, Any] | None:
    result = kubectl("get", "-n", ns, kind, name, "-o", "json", check=False)
    if result.returncode != 0:
        if "NotFound" in result.stderr:
            return None
        raise AssertionError(result.stderr)
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def status_of(kubectl: Kubectl, ns: str, kind: str, name: str) -> dict[str, Any]:
    obj = get(kubectl, ns, kind, name)
    return dict((obj or {}).get("status") or {})


def wait_status(
    kubectl: Kubectl,
    procs: OperatorProcesses,
    ns: str,
    kind: str,
    name: str,
    what: str,
    predicate: Any,
) -> dict[str, Any]:
    """Wait until the object's status satisfies ``predicate``; show the operator log if not."""

    def probe() -> dict[str, Any] | None:
        status = status_of(kubectl, ns, kind, name)
        return status if predicate(status) else None

    try:
        found: dict[str, Any] = wait_for(
            f"{kind}/{name} {what}", probe, timeout_seconds=TIMEOUT_SECONDS
        )
    except AssertionError:
        print(procs.log("operator")[-6000:])
        raise
    return found


def phase_in(*phases: str) -> Any:
    return lambda status: status.get("phase") in phases


def reason_is(reason: str) -> Any:
    return lambda status: status.get("reason") == reason


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


def events(kubectl: Kubectl, ns: str, name: str) -> list[tuple[str, str, str]]:
    out = kubectl(
        "get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    ).stdout
    return [(e["type"], e["reason"], e["message"]) for e in json.loads(out)["items"]]


def wait_event(kubectl: Kubectl, ns: str, name: str, type_: str, reason: str) -> str:
    """Wait for an Event (kopf posts them in the background); return its message."""

    def probe() -> str | None:
        found = [e for e in events(kubectl, ns, name) if e[:2] == (type_, reason)]
        return found[-1][2] if found else None

    message: str = wait_for(f"{type_} event {reason} on {name}", probe, timeout_seconds=30)
    return message


def product(name: str = "standard", fee: int = 0) -> dict[str, Any]:
    spec: dict[str, Any] = {"currency": "USD", "rewardsRateBps": 100}
    if fee:
        spec["issuanceFee"] = {"amount": fee}
    return {"kind": "CardProduct", "metadata": {"name": name}, "spec": spec}


def card(
    name: str,
    *,
    user: str = "u1",
    holder: str = "Ana Example",
    country: str = "US",
    kyc: str = "Accepted",
    state: str = "Active",
) -> dict[str, Any]:
    return {
        "kind": "Card",
        "metadata": {"name": name},
        "spec": {
            "userId": user,
            "product": "standard",
            "holder": {"name": holder, "country": country, "kycStatus": kyc},
            "state": state,
        },
    }


def money(name: str, card_name: str, type_: str, amount: int) -> dict[str, Any]:
    return {
        "kind": "Posting",
        "metadata": {"name": name},
        "spec": {"card": card_name, "type": type_, "amount": amount, "currency": "USD"},
    }


def risk_policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "RiskPolicy", "metadata": {"name": name}, "spec": spec}


def compliance_policy(name: str, **spec: Any) -> dict[str, Any]:
    return {"kind": "CompliancePolicy", "metadata": {"name": name}, "spec": spec}


def review(name: str, card_name: str, decision: str) -> dict[str, Any]:
    return {
        "kind": "CardReview",
        "metadata": {"name": name},
        "spec": {
            "card": card_name,
            "decision": decision,
            "reviewer": "reviewer@example.com",
            "comment": f"{decision}: documents checked against the list entry",
        },
    }


def compliance_with_list(kubectl: Kubectl, ns: str, **kyc: Any) -> None:
    """The example sanctions ConfigMap and a policy screening against it (review allowed)."""
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "04-sanctions-list.yaml"))
    apply(
        kubectl,
        ns,
        compliance_policy(
            "screening",
            kyc=kyc or {"allowReview": True},
            sanctions={"configMap": "sdn-list", "matchThresholdBps": 9000},
        ),
    )


def screening_ready(kubectl: Kubectl, procs: OperatorProcesses, ns: str) -> dict[str, Any]:
    """The standard product and the screening policy of :func:`compliance_with_list`, once the
    policy is Ready; its status."""
    apply(kubectl, ns, product())
    compliance_with_list(kubectl, ns)
    return wait_status(
        kubectl, procs, ns, "compliancepolicy", "screening", "ready", phase_in("Ready")
    )


def patch_card(
    kubectl: Kubectl, ns: str, name: str, spec: dict[str, Any], *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Merge ``spec`` into the card's spec, as a user's ``kubectl patch`` does."""
    body = json.dumps({"spec": spec})
    return kubectl("patch", "card", name, "-n", ns, "--type=merge", "-p", body, check=check)


def db_rows(operator_env: dict[str, str], sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(operator_env["DATABASE_URL"]) as conn:
        return conn.execute(sql, args).fetchall()


def card_events(env: dict[str, str], ns: str, name: str, *types: str) -> list[dict[str, Any]]:
    """The card's events on Kafka `cards`, checked, once there are as many as ``types``."""
    return wait_events(env, "cards", f"{ns}/{name}", list(types))


def outbox_types(env: dict[str, str], ns: str, name: str) -> list[str]:
    """The card's rows in the outbox: each event is written once, whatever was retried."""
    rows = db_rows(
        env,
        "SELECT payload->>'type' FROM outbox WHERE topic = 'cards' AND key = %s ORDER BY id",
        f"{ns}/{name}",
    )
    return [row[0] for row in rows]


# --- Issuance, freeze, close ----------------------------------------------------------------------


def test_issue_freeze_close_refused_then_paid_and_closed(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """Pending -> Active (fee charged) -> Frozen -> Active -> close refused -> paid -> Closed."""
    ns, procs = op_namespace, operator_processes
    apply(kubectl, ns, product(fee=500), card("c1"))
    status = wait_status(kubectl, procs, ns, "card", "c1", "issued", phase_in("Active", "Rejected"))
    assert status["phase"] == "Active", status
    issued_status = status
    assert status["token"].startswith("tok_")
    assert re.fullmatch(r"\d{4}", status["last4"])
    assert status["risk"]["decision"] == "Approve"
    assert status["risk"]["policy"] == "builtin/default"
    assert status["compliance"]["decision"] == "Clear"
    assert status["compliance"]["reasons"] == ["KycAccepted", "NotConfigured"]
    for type_ in ("RiskAssessed", "ComplianceCleared", "LedgerAccountOpened", "Ready"):
        assert condition(status, type_)["status"] == "True", type_
    assert status["issuedAt"]
    # The issuance fee is in the ledger and mirrored into status.
    wait_status(
        kubectl, procs, ns, "card", "c1", "balance 500", lambda s: s["balance"]["amount"] == 500
    )
    # spec.userId is immutable (CEL).
    refused = patch_card(kubectl, ns, "c1", {"userId": "u2"}, check=False)
    assert refused.returncode != 0
    assert "userId is immutable" in refused.stderr

    for state in ("Frozen", "Active"):
        patch_card(kubectl, ns, "c1", {"state": state})
        wait_status(kubectl, procs, ns, "card", "c1", state, phase_in(state))

    patch_card(kubectl, ns, "c1", {"state": "Closed"})
    status = wait_status(
        kubectl, procs, ns, "card", "c1", "close refused", reason_is("BalanceNotZero")
    )
    assert status["phase"] == "Active"
    assert "post a Payment" in status["message"]
    assert condition(status, "Ready")["reason"] == "BalanceNotZero"
    assert "post a Payment" in wait_event(kubectl, ns, "c1", "Warning", "BalanceNotZero")

    apply(kubectl, ns, money("pay-fee", "c1", "Payment", 500))
    status = wait_status(kubectl, procs, ns, "card", "c1", "closed", phase_in("Closed"))
    assert "reason" not in status
    account = status["account"]
    assert db_rows(operator_env, "SELECT status FROM accounts WHERE code = %s", account) == [
        ("closed",)
    ]
    # Closed is final: the API server refuses a reopening before the operator sees it.
    reopen = patch_card(kubectl, ns, "c1", {"state": "Active"}, check=False)
    assert reopen.returncode != 0
    assert "Closed is final" in reopen.stderr

    # Kafka `cards`: issued, frozen, unfrozen, closed, in that order under the card's key; the
    # refused close wrote nothing, and no retry wrote anything twice.
    issued, *changes = card_events(operator_env, ns, "c1", ISSUED, CHANGED, CHANGED, CHANGED)
    assert issued["data"] == {
        "card": f"{ns}/c1",
        "userId": "u1",
        "product": "standard",
        "currency": "USD",
        "account": account,
        "token": issued_status["token"],
        "last4": issued_status["last4"],
        "state": "Active",
        "issuedAt": issued["data"]["issuedAt"],
    }
    assert (
        api.format_timestamp(api.parse_timestamp(issued["data"]["issuedAt"]))
        == issued_status["issuedAt"]
    )
    assert issued["subject"] == f"namespaces/{ns}/cards/c1"
    assert issued["partitionkey"] == f"{ns}/c1"
    assert [(e["data"]["from"], e["data"]["to"], e["data"].get("reason")) for e in changes] == [
        ("Active", "Frozen", None),
        ("Frozen", "Active", None),
        ("Active", "Closed", None),
    ]
    assert outbox_types(operator_env, ns, "c1") == [ISSUED, CHANGED, CHANGED, CHANGED]


def test_a_ledger_freeze_kopf_never_handled_is_repaired_and_a_newer_one_kept(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """Migration 0072 and the namespace's card refresh. The ledger frozen while the Card's spec
    and status say Active is what a lost status patch leaves (kopf froze, its patch failed, the
    user set Active back, kopf saw nothing to handle). A freeze recorded for a generation newer
    than the card's (a handler of a newer spec, its status on its way) is kept; one recorded
    for an older generation is undone, with its event and a Warning on the card."""
    ns, procs = op_namespace, operator_processes
    apply(kubectl, ns, product(), card("c1"))
    status = wait_status(kubectl, procs, ns, "card", "c1", "issued", phase_in("Active"))
    account = status["account"]
    patch_card(kubectl, ns, "c1", {"memo": "generation 2"})
    generation = wait_for(
        "generation 2",
        lambda: (get(kubectl, ns, "card", "c1") or {})["metadata"].get("generation") == 2 or None,
        timeout_seconds=30,
    )
    assert generation is True
    freeze = "UPDATE accounts SET frozen_at = now(), state_generation = %s WHERE code = %s"
    db_write(operator_env, freeze, 3, account)
    # A refresh ran after it (it mirrors the Payment's balance into status), and kept it.
    apply(kubectl, ns, money("pay-1", "c1", "Payment", 100))
    wait_status(
        kubectl, procs, ns, "card", "c1", "balance -100", lambda s: s["balance"]["amount"] == -100
    )
    state = "SELECT frozen_at IS NOT NULL, state_generation FROM accounts WHERE code = %s"
    assert db_rows(operator_env, state, account) == [(True, 3)]

    db_write(operator_env, "UPDATE accounts SET state_generation = 1 WHERE code = %s", account)
    wait_for(
        "the ledger unfrozen",
        lambda: db_rows(operator_env, state, account) == [(False, 2)] or None,
        timeout_seconds=30,
    )
    message = wait_event(kubectl, ns, "c1", "Warning", "LedgerStateRepaired")
    assert "spec.state and status.phase are Active" in message
    assert (get(kubectl, ns, "card", "c1") or {})["status"]["phase"] == "Active"
    [repair] = [
        row[0]
        for row in db_rows(
            operator_env,
            "SELECT payload FROM outbox WHERE topic = 'cards' AND key = %s"
            " AND payload->>'type' = %s",
            f"{ns}/c1",
            CHANGED,
        )
    ]
    assert (repair["data"]["from"], repair["data"]["to"]) == ("Frozen", "Active")


def db_write(operator_env: dict[str, str], sql: str, *args: Any) -> None:
    """A change made behind the operator's back, as the runtime role may make it."""
    with psycopg.connect(operator_env["DATABASE_URL"]) as conn:
        assert conn.execute(sql, args).rowcount == 1


# --- Risk and compliance at issuance --------------------------------------------------------------


def test_risk_rules_review_and_decline_and_default_kyc_rejects(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """A blocked holder country declines, too many cards reviews, KYC Pending is rejected."""
    ns, procs = op_namespace, operator_processes
    apply(
        kubectl,
        ns,
        product(),
        risk_policy(
            "strict",
            blockedHolderCountries={"countries": ["KP"]},
            maxCardsPerUser={"maxCards": 1, "action": "Review"},
        ),
    )
    wait_status(kubectl, procs, ns, "riskpolicy", "strict", "ready", lambda s: s.get("inUse"))
    apply(kubectl, ns, card("first", user="u9"))
    wait_status(kubectl, procs, ns, "card", "first", "issued", phase_in("Active"))
    apply(
        kubectl,
        ns,
        card("second", user="u9"),
        card("abroad", user="u8", country="KP"),
        card("no-kyc", user="u7", kyc="Pending"),
    )
    second = wait_status(kubectl, procs, ns, "card", "second", "held", phase_in("PendingReview"))
    assert second["reason"] == "RiskReview"
    assert second["risk"]["reasons"] == ["MaxCardsPerUser"]
    assert second["risk"]["score"] == 500
    assert second["risk"]["policy"] == f"{ns}/strict"
    assert "account" not in second
    abroad = wait_status(kubectl, procs, ns, "card", "abroad", "declined", phase_in("Rejected"))
    assert abroad["reason"] == "RiskDeclined"
    assert abroad["risk"]["decision"] == "Decline"
    assert abroad["risk"]["details"] == ["BlockedHolderCountry: holder country KP is blocked"]
    assert condition(abroad, "Ready")["status"] == "False"
    no_kyc = wait_status(kubectl, procs, ns, "card", "no-kyc", "rejected", phase_in("Rejected"))
    assert no_kyc["reason"] == "KycNotAccepted"
    assert condition(no_kyc, "ComplianceCleared")["status"] == "False"
    rows = db_rows(
        operator_env,
        "SELECT subject, decision, matched->0->>'rule' FROM risk_assessments"
        " WHERE subject LIKE %s ORDER BY subject",
        f"{ns}/%",
    )
    assert rows == [
        (f"{ns}/abroad", "Decline", "BlockedHolderCountry"),
        (f"{ns}/first", "Approve", None),
        (f"{ns}/no-kyc", "Approve", None),
        (f"{ns}/second", "Review", "MaxCardsPerUser"),
    ]
    checks = db_rows(
        operator_env,
        "SELECT check_kind, outcome, reason FROM compliance_checks WHERE subject = %s ORDER BY id",
        f"{ns}/no-kyc",
    )
    assert checks == [("Kyc", "Reject", "KycNotAccepted"), ("Sanctions", "Clear", "NotConfigured")]
    # A card waiting for review can still be closed: it never gets an account.
    patch_card(kubectl, ns, "second", {"state": "Closed"})
    closed = wait_status(kubectl, procs, ns, "card", "second", "closed", phase_in("Closed"))
    assert closed["reason"] == "ClosedBeforeIssue"
    # A card applied Frozen is issued Frozen.
    apply(kubectl, ns, card("cold", user="u6", state="Frozen"))
    cold = wait_status(kubectl, procs, ns, "card", "cold", "issued", phase_in("Frozen", "Active"))
    assert cold["phase"] == "Frozen"
    assert cold["account"]
    # Their events: each rejection once with its reason, the review request then the close of
    # a card never issued, and an issuance in the Frozen state.
    [declined] = card_events(operator_env, ns, "abroad", REJECTED)
    assert declined["data"]["reason"] == "RiskDeclined"
    assert (declined["data"]["userId"], declined["data"]["product"]) == ("u8", "standard")
    [refused] = card_events(operator_env, ns, "no-kyc", REJECTED)
    assert refused["data"]["reason"] == "KycNotAccepted"
    assert refused["data"]["message"] == no_kyc["message"]
    held, closed_early = card_events(operator_env, ns, "second", REVIEW, CHANGED)
    assert held["data"]["reason"] == "RiskReview"
    assert (closed_early["data"]["from"], closed_early["data"]["to"]) == ("PendingReview", "Closed")
    assert closed_early["data"]["reason"] == "ClosedBeforeIssue"
    [frozen] = card_events(operator_env, ns, "cold", ISSUED)
    assert (frozen["data"]["state"], frozen["data"]["token"]) == ("Frozen", cold["token"])


def test_sanctions_exact_rejects_and_fuzzy_reviews_then_reviewer_rejects(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """An exact listed name is Rejected; a close one waits for review and a reviewer rejects it."""
    ns, procs = op_namespace, operator_processes
    policy = screening_ready(kubectl, procs, ns)
    assert policy["sanctionsList"]["entries"] == 13
    assert policy["inUse"] is True
    apply(
        kubectl,
        ns,
        card("exact", holder="Ivan Demo Petrov"),
        card("close", user="u2", holder="Ivan Demo Petrow"),
    )
    exact = wait_status(kubectl, procs, ns, "card", "exact", "rejected", phase_in("Rejected"))
    assert exact["reason"] == "ExactMatch"
    assert exact["compliance"]["match"]["entryId"] == "90001"
    assert exact["compliance"]["match"]["exact"] is True
    close = wait_status(kubectl, procs, ns, "card", "close", "held", phase_in("PendingReview"))
    assert close["reason"] == "PossibleMatch"
    assert close["compliance"]["match"]["name"] == "PETROV, Ivan Demo"
    assert close["compliance"]["match"]["scoreBps"] >= 9000
    assert "CardReview" in wait_event(kubectl, ns, "close", "Warning", "PendingReview")

    apply(kubectl, ns, review("close-no", "close", "Reject"))
    wait_status(kubectl, procs, ns, "cardreview", "close-no", "recorded", phase_in("Recorded"))
    close = wait_status(kubectl, procs, ns, "card", "close", "rejected", phase_in("Rejected"))
    assert close["reason"] == "ReviewRejected"
    assert close["review"]["decision"] == "Reject"
    assert close["review"]["reviewer"] == "reviewer@example.com"
    assert close["review"]["cardReview"] == "close-no"
    # A review of a card that is not waiting is refused with a reason.
    apply(kubectl, ns, review("too-late", "close", "Approve"))
    late = wait_status(kubectl, procs, ns, "cardreview", "too-late", "refused", phase_in("Refused"))
    assert late["reason"] == "CardNotPendingReview"
    [exact_rejected] = card_events(operator_env, ns, "exact", REJECTED)
    assert exact_rejected["data"]["reason"] == "ExactMatch"
    held, rejected = card_events(operator_env, ns, "close", REVIEW, REJECTED)
    assert held["data"]["reason"] == "PossibleMatch"
    assert rejected["data"]["reason"] == "ReviewRejected"
    assert "reviewer@example.com" in rejected["data"]["message"]
    rows = db_rows(
        operator_env,
        "SELECT check_kind, outcome, reason, result->'hit'->>'entryId' FROM compliance_checks"
        " WHERE subject IN (%s, %s) AND check_kind = 'Sanctions' ORDER BY subject",
        f"{ns}/close",
        f"{ns}/exact",
    )
    assert rows == [
        ("Sanctions", "Review", "PossibleMatch", "90001"),
        ("Sanctions", "Reject", "ExactMatch", "90001"),
    ]


def test_kyc_pending_reviewed_and_approved(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """PendingReview -> CardReview Approve -> Active; the decision is recorded once."""
    ns, procs = op_namespace, operator_processes
    screening_ready(kubectl, procs, ns)
    apply(kubectl, ns, card("waiting", kyc="Pending"))
    held = wait_status(kubectl, procs, ns, "card", "waiting", "held", phase_in("PendingReview"))
    assert held["reason"] == "KycPending"
    # The review may be applied in the same batch as another: the first one recorded wins.
    apply(kubectl, ns, review("yes", "waiting", "Approve"))
    recorded = wait_status(
        kubectl, procs, ns, "cardreview", "yes", "recorded", phase_in("Recorded", "Refused")
    )
    assert recorded["phase"] == "Recorded", recorded
    status = wait_status(kubectl, procs, ns, "card", "waiting", "issued", phase_in("Active"))
    assert status["review"]["decision"] == "Approve"
    assert condition(status, "ComplianceCleared")["reason"] == "ReviewApproved"
    assert status["last4"]
    assert "reviewer@example.com" in wait_event(kubectl, ns, "waiting", "Normal", "ReviewApproved")
    assert "last 4" in wait_event(kubectl, ns, "waiting", "Normal", "Issued")
    rows = db_rows(
        operator_env,
        "SELECT decision, reviewer, review FROM card_reviews WHERE card = %s",
        f"{ns}/waiting",
    )
    assert rows == [("Approve", "reviewer@example.com", f"{ns}/yes")]
    # KYC completed while waiting: the card is assessed again and issued without a review.
    apply(kubectl, ns, card("kyc-later", user="u3", kyc="Pending"))
    wait_status(kubectl, procs, ns, "card", "kyc-later", "held", phase_in("PendingReview"))
    patch_card(kubectl, ns, "kyc-later", {"holder": {"kycStatus": "Accepted"}})
    later = wait_status(kubectl, procs, ns, "card", "kyc-later", "issued", phase_in("Active"))
    assert "review" not in later
    assert later["compliance"]["reasons"] == ["KycAccepted", "NoMatch"]
    generations = db_rows(
        operator_env,
        "SELECT outcome FROM compliance_checks WHERE subject = %s AND check_kind = 'Kyc'"
        " ORDER BY id",
        f"{ns}/kyc-later",
    )
    assert generations == [("Review",), ("Clear",)]
    held, approved = card_events(operator_env, ns, "waiting", REVIEW, ISSUED)
    assert held["data"]["reason"] == "KycPending"
    assert approved["data"]["token"] == status["token"]
    # One review request per generation assessed; the approving one issues it.
    held, issued = card_events(operator_env, ns, "kyc-later", REVIEW, ISSUED)
    assert issued["data"]["last4"] == later["last4"]


# --- Deletion -------------------------------------------------------------------------------------


def test_delete_closes_the_account_and_product_waits_for_its_cards(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """A product in use waits, saying why; deleting cards closes or keeps their accounts."""
    ns, procs = op_namespace, operator_processes
    apply(kubectl, ns, product(fee=0), card("empty"), card("owing", user="u2"))
    empty = wait_status(kubectl, procs, ns, "card", "empty", "issued", phase_in("Active"))
    owing = wait_status(kubectl, procs, ns, "card", "owing", "issued", phase_in("Active"))
    apply(kubectl, ns, money("buy", "owing", "Purchase", 700))
    wait_status(kubectl, procs, ns, "posting", "buy", "posted", phase_in("Posted", "Rejected"))

    kubectl("delete", "cardproduct", "standard", "-n", ns, "--wait=false")
    blocked = wait_status(
        kubectl, procs, ns, "cardproduct", "standard", "blocked", reason_is("InUse")
    )
    assert "2 card(s) still use this product (empty, owing)" in blocked["message"]
    assert "close or delete them" in wait_event(
        kubectl, ns, "standard", "Warning", "DeletionBlocked"
    )
    assert get(kubectl, ns, "cardproduct", "standard") is not None

    kubectl("delete", "card", "empty", "owing", "-n", ns, "--timeout=60s")
    assert get(kubectl, ns, "card", "empty") is None
    accounts = dict(
        db_rows(
            operator_env,
            "SELECT code, status FROM accounts WHERE code IN (%s, %s)",
            empty["account"],
            owing["account"],
        )
    )
    assert accounts == {empty["account"]: "closed", owing["account"]: "open"}
    kept = db_rows(
        operator_env,
        "SELECT count(*) FROM entries e JOIN accounts a ON a.id = e.account_id WHERE a.code = %s",
        owing["account"],
    )
    assert kept == [(1,)]
    assert "stays open" in wait_event(kubectl, ns, "owing", "Warning", "AccountLeftOpen")
    assert "closed" in wait_event(kubectl, ns, "empty", "Normal", "AccountClosed")
    # Deleting a card closes it (one state_changed, written with the account's closing); a
    # card whose account stays open was not closed, so it has no such event.
    _, deleted = card_events(operator_env, ns, "empty", ISSUED, CHANGED)
    assert (deleted["data"]["to"], deleted["data"]["reason"]) == ("Closed", "CardDeleted")
    assert outbox_types(operator_env, ns, "owing") == [ISSUED]
    wait_for(
        "the product to be deleted once its cards are gone",
        lambda: get(kubectl, ns, "cardproduct", "standard") is None,
        timeout_seconds=TIMEOUT_SECONDS,
    )


def test_a_close_the_deleted_product_waits_for_completes_once_paid(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """The product's DeletionBlocked says "close or delete them first"; a card with a balance
    set Closed waits for a Payment, and the namespace's refresh completes the close. kopf stops
    the timers of the product being deleted, the namespace's only one, so the close never
    completed and the product waited forever; its deletion handler now stands in for them.
    The wait logs at INFO, not as an ERROR every 10 s."""
    ns, procs = op_namespace, operator_processes
    apply(kubectl, ns, product(fee=0), card("owing"))
    wait_status(kubectl, procs, ns, "card", "owing", "issued", phase_in("Active"))
    apply(kubectl, ns, money("buy", "owing", "Purchase", 700))
    wait_status(kubectl, procs, ns, "posting", "buy", "posted", phase_in("Posted"))

    kubectl("delete", "cardproduct", "standard", "-n", ns, "--wait=false")
    wait_status(kubectl, procs, ns, "cardproduct", "standard", "blocked", reason_is("InUse"))
    patch_card(kubectl, ns, "owing", {"state": "Closed"})
    wait_status(kubectl, procs, ns, "card", "owing", "close refused", reason_is("BalanceNotZero"))
    apply(kubectl, ns, money("pay", "owing", "Payment", 700))
    wait_status(kubectl, procs, ns, "posting", "pay", "posted", phase_in("Posted"))
    closed = wait_status(kubectl, procs, ns, "card", "owing", "closed", phase_in("Closed"))
    assert closed.get("reason") is None
    wait_for(
        "the product to be deleted once its card is closed",
        lambda: get(kubectl, ns, "cardproduct", "standard") is None,
        timeout_seconds=TIMEOUT_SECONDS,
    )
    waits = [
        json.loads(line)
        for line in procs.log("operator").splitlines()
        if line.startswith("{") and "still use this product (owing)" in line
    ]
    assert waits, "the product's wait is logged"
    assert {line["level"] for line in waits} == {"info"}, waits


def test_a_card_recreated_under_a_deleted_cards_name_is_rejected_name_reused(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """Delete a card (paid to zero and closed; or left owing) and apply a new card of another
    user under its name: Rejected NameReused (final, Warning Event, card.rejected), no ledger
    row written, and the old account's status, entries and balance untouched."""
    ns, procs = op_namespace, operator_processes
    apply(kubectl, ns, product(fee=0), card("paid", user="u1"), card("owing", user="u2"))
    for name in ("paid", "owing"):
        wait_status(kubectl, procs, ns, "card", name, "issued", phase_in("Active"))
    apply(
        kubectl,
        ns,
        money("buy-paid", "paid", "Purchase", 500),
        money("pay-paid", "paid", "Payment", 500),
        money("buy-owing", "owing", "Purchase", 700),
    )
    for name in ("buy-paid", "pay-paid", "buy-owing"):
        posted = wait_status(kubectl, procs, ns, "posting", name, "posted", phase_in("Posted"))
        assert posted["phase"] == "Posted", posted
    patch_card(kubectl, ns, "paid", {"state": "Closed"})
    wait_status(kubectl, procs, ns, "card", "paid", "closed", phase_in("Closed"))
    old = {name: get(kubectl, ns, "card", name) or {} for name in ("paid", "owing")}
    ledger_sql = (
        "SELECT a.code, a.status, a.metadata->>'uid', b.debits_minor, b.credits_minor,"
        " b.entry_count FROM accounts a JOIN account_balances b ON b.account_id = a.id"
        " WHERE a.metadata->>'card' = %s ORDER BY a.id"
    )
    before = {name: db_rows(operator_env, ledger_sql, f"{ns}/{name}") for name in old}
    assert [row[1:] for row in before["paid"]] == [
        ("closed", old["paid"]["metadata"]["uid"], 500, 500, 2)
    ]
    assert [row[1:] for row in before["owing"]] == [
        ("open", old["owing"]["metadata"]["uid"], 700, 0, 1)
    ]
    kubectl("delete", "card", "paid", "owing", "-n", ns, "--timeout=60s")
    wait_event(kubectl, ns, "owing", "Warning", "AccountLeftOpen")
    journals_before = db_rows(operator_env, "SELECT count(*) FROM journals")

    # Argo CD prune + re-sync, or a person: the same names, another user.
    expected = {"paid": (ISSUED, CHANGED, REJECTED), "owing": (ISSUED, REJECTED)}
    apply(kubectl, ns, card("paid", user="u7"), card("owing", user="u8"))
    for name, user in (("paid", "u7"), ("owing", "u8")):
        new = get(kubectl, ns, "card", name) or {}
        assert new["spec"]["userId"] == user
        assert new["metadata"]["uid"] != old[name]["metadata"]["uid"]
        status = wait_status(kubectl, procs, ns, "card", name, "refused", phase_in("Rejected"))
        assert status["reason"] == "NameReused", status
        account = before[name][0][0]
        assert f"card uid {old[name]['metadata']['uid']}" in status["message"]
        assert f"ledger account {account} and history are kept" in status["message"]
        assert "new name" in status["message"]
        assert condition(status, "Ready")["reason"] == "NameReused"
        for field in ("account", "token", "last4", "balance", "rewardsPoints"):
            assert field not in status, (field, status)
        assert f"card uid {old[name]['metadata']['uid']}" in wait_event(
            kubectl, ns, name, "Warning", "NameReused"
        )
        # Nothing written to the ledger; the old account exactly as it was.
        assert db_rows(operator_env, ledger_sql, f"{ns}/{name}") == before[name]
        *_, rejected = card_events(operator_env, ns, name, *expected[name])
        assert rejected["data"]["reason"] == "NameReused"
        assert (rejected["data"]["userId"], rejected["data"]["message"]) == (
            user,
            status["message"],
        )
    assert db_rows(operator_env, "SELECT count(*) FROM journals") == journals_before
    for name, types in expected.items():
        assert outbox_types(operator_env, ns, name) == list(types)
    assert db_rows(
        operator_env,
        "SELECT count(*) FROM risk_assessments WHERE subject = %s AND subject_uid = %s",
        f"{ns}/paid",
        (get(kubectl, ns, "card", "paid") or {})["metadata"]["uid"],
    ) == [(0,)]
    # The rejection is final: a later change of the card is not an issuance retry.
    patch_card(kubectl, ns, "paid", {"memo": "x"})
    time.sleep(3)
    assert status_of(kubectl, ns, "card", "paid")["phase"] == "Rejected"
    assert db_rows(operator_env, ledger_sql, f"{ns}/paid") == before["paid"]
    # Deleting the refused card leaves the old account alone (it never had one of its own).
    kubectl("delete", "card", "paid", "owing", "-n", ns, "--timeout=60s")
    for name in ("paid", "owing"):
        assert db_rows(operator_env, ledger_sql, f"{ns}/{name}") == before[name]


# --- Postings: risk and AML -----------------------------------------------------------------------


def posting(name: str, amount: int, mcc: str = "5814") -> dict[str, Any]:
    return {
        "kind": "Posting",
        "metadata": {"name": name},
        "spec": {
            "card": "spender",
            "type": "Purchase",
            "amount": amount,
            "currency": "USD",
            "merchant": {"name": "Shop", "mcc": mcc, "country": "US"},
        },
    }


def test_posting_risk_rules_and_aml_alert(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """Amount and velocity decline (RiskDeclined), an MCC reviews but posts, AML alerts once."""
    ns, procs = op_namespace, operator_processes
    apply(
        kubectl,
        ns,
        product(),
        risk_policy(
            "limits",
            maxAmountPerTransaction={"amount": 100_000, "currency": "USD"},
            blockedMccs={"codes": ["7995"], "action": "Review"},
            velocity=[{"windowSeconds": 3600, "maxCount": 4, "action": "Decline"}],
        ),
        compliance_policy(
            "aml",
            aml={
                "dailyThreshold": {"amount": 150_000, "currency": "USD"},
                "structuring": {"enabled": False},
            },
        ),
    )
    wait_status(kubectl, procs, ns, "riskpolicy", "limits", "ready", lambda s: s.get("inUse"))
    wait_status(kubectl, procs, ns, "compliancepolicy", "aml", "ready", phase_in("Ready"))
    apply(kubectl, ns, card("spender"))
    wait_status(kubectl, procs, ns, "card", "spender", "issued", phase_in("Active"))
    # (posting, amount, merchant category, phase, risk decision, rule that fired)
    expected = [
        ("too-big", 200_000, "5814", "Rejected", "Decline", "MaxAmountPerTransaction"),
        ("casino", 90_000, "7995", "Posted", "Review", "BlockedMcc"),
        ("groceries", 70_000, "5814", "Posted", "Approve", None),  # 160,000 today: AML alert
        ("coffee-1", 1_000, "5814", "Posted", "Approve", None),
        ("coffee-2", 1_000, "5814", "Posted", "Approve", None),  # the 4th purchase this hour
        ("coffee-3", 1_000, "5814", "Rejected", "Decline", "VelocityCount"),  # the 5th
    ]
    for name, amount, mcc, phase, decision, _ in expected:
        apply(kubectl, ns, posting(name, amount, mcc))
        status = wait_status(
            kubectl, procs, ns, "posting", name, "decided", phase_in("Posted", "Rejected")
        )
        assert status["phase"] == phase, (name, status)
        # The decision is shown on the Posting too, a Review included (it still posts).
        assert status["risk"]["decision"] == decision, (name, status)
        if phase == "Rejected":
            assert status["reason"] == "RiskDeclined", status
    decisions = db_rows(
        operator_env,
        "SELECT subject, decision, matched->0->>'rule' FROM risk_assessments"
        " WHERE subject_kind = 'Posting' AND subject LIKE %s ORDER BY id",
        f"{ns}/%",
    )
    assert decisions == [(f"{ns}/{row[0]}", row[4], row[5]) for row in expected]
    status = wait_status(
        kubectl, procs, ns, "card", "spender", "alert announced", lambda s: s.get("aml")
    )
    assert status["aml"]["alerts"] == 1
    assert status["aml"]["lastAlert"].startswith("DailyThreshold on ")
    assert "160000 USD" in wait_event(kubectl, ns, "spender", "Warning", "ComplianceAlert")
    alerts = db_rows(
        operator_env,
        "SELECT a.alert_kind, a.total_minor, a.posting_count, o.topic"
        " FROM compliance_alerts a JOIN outbox o ON o.event_id = a.event_id WHERE a.card = %s",
        f"{ns}/spender",
    )
    assert alerts == [("DailyThreshold", 160_000, 2, "compliance")]
    wait_for(
        "the alert event to be published to Kafka",
        lambda: db_rows(
            operator_env,
            "SELECT 1 FROM outbox o JOIN compliance_alerts a ON a.event_id = o.event_id"
            " WHERE a.card = %s AND o.published_at IS NOT NULL",
            f"{ns}/spender",
        ),
        timeout_seconds=TIMEOUT_SECONDS,
    )


# --- Policies -------------------------------------------------------------------------------------


def test_policy_status_in_use_and_missing_list(
    kubectl: Kubectl, op_namespace: str, operator_processes: OperatorProcesses
) -> None:
    """The first policy by name is in use; a missing sanctions list degrades until it exists."""
    ns, procs = op_namespace, operator_processes
    apply(
        kubectl,
        ns,
        risk_policy("a"),
        risk_policy("b"),
        compliance_policy("screening", sanctions={"configMap": "sdn-list"}),
    )
    a = wait_status(kubectl, procs, ns, "riskpolicy", "a", "ready", phase_in("Ready"))
    b = wait_status(kubectl, procs, ns, "riskpolicy", "b", "ready", phase_in("Ready"))
    assert (a["inUse"], b["inUse"]) == (True, False)
    degraded = wait_status(
        kubectl, procs, ns, "compliancepolicy", "screening", "degraded", phase_in("Degraded")
    )
    assert degraded["reason"] == "SanctionsListNotFound"
    kubectl("apply", "-n", ns, "-f", str(EXAMPLES / "04-sanctions-list.yaml"))
    ready = wait_status(
        kubectl, procs, ns, "compliancepolicy", "screening", "list loaded", phase_in("Ready")
    )
    assert ready["sanctionsList"]["entries"] == 13
    kubectl("delete", "riskpolicy", "a", "-n", ns)
    wait_status(kubectl, procs, ns, "riskpolicy", "b", "in use", lambda s: s.get("inUse"))


# --- Webhooks of card events ---------------------------------------------------------------------

HOOK_SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


class Hooks:
    """A loopback receiver: records each POST per path with its Standard Webhooks signature
    checked by its own few lines of HMAC (not the product's code), and answers 200."""

    def __init__(self) -> None:
        self.key = base64.b64decode(HOOK_SECRET.removeprefix("whsec_"))
        self.seen: list[tuple[str, dict[str, str], bytes]] = []
        self.lock = threading.Lock()
        hooks = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                headers = {k.lower(): v for k, v in self.headers.items()}
                with hooks.lock:
                    hooks.seen.append((self.path, headers, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def verified(self, headers: dict[str, str], body: bytes) -> bool:
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        expected = base64.b64encode(hmac.new(self.key, signed, hashlib.sha256).digest()).decode()
        offered = [s.removeprefix("v1,") for s in headers["webhook-signature"].split(" ")]
        fresh = abs(time.time() - int(headers["webhook-timestamp"])) < 300
        return fresh and any(hmac.compare_digest(expected, sig) for sig in offered)

    def bodies(self, path: str) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return [(headers, body) for p, headers, body in self.seen if p == path]


@pytest.fixture
def hooks() -> Iterator[Hooks]:
    receiver = Hooks()
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def webhook(name: str, url: str, *event_types: str) -> dict[str, Any]:
    return {
        "kind": "Webhook",
        "metadata": {"name": name},
        "spec": {
            "url": url,
            "eventTypes": list(event_types),
            "secretRef": {"name": "hook-secret", "key": "secret"},
        },
    }


def test_webhooks_subscribed_to_card_events_receive_card_issued(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
    operator_prefix: str,
    hooks: Hooks,
    tmp_path: Path,
) -> None:
    """Through the real notifier: a Webhook on `dev.fintech.card.*` and one on the exact type
    each get the card's card.issued once, signed, byte for byte what Kafka carries; a Webhook
    on postings gets nothing."""
    ns, procs = op_namespace, operator_processes
    kubectl(
        "create", "secret", "generic", "hook-secret", "-n", ns,
        f"--from-literal=secret={HOOK_SECRET}",
    )  # fmt: skip
    apply(
        kubectl,
        ns,
        webhook("all-cards", f"{hooks.url}/cards", "dev.fintech.card.*"),
        webhook("issued-only", f"{hooks.url}/issued", ISSUED),
        webhook("postings", f"{hooks.url}/postings", "dev.fintech.posting.*"),
    )
    notifier = OperatorProcesses(
        {
            **operator_env,
            "FINTECH_NOTIFIER_REFRESH_INTERVAL_SECONDS": "1",
            "FINTECH_NOTIFIER_POLL_INTERVAL_MS": "200",
            "FINTECH_WEBHOOK_ALLOWED_CIDRS": "127.0.0.1/32",
        },
        tmp_path,
    )
    group = f"notifier-{operator_prefix}-{uuid.uuid4().hex[:6]}"
    notifier.start("notifier", "notifier", "--namespace", ns, "--group", group)
    try:
        wait_for(
            "the notifier to serve the three Webhooks",
            lambda: (
                db_rows(
                    operator_env,
                    "SELECT count(*) FROM webhook_endpoints"
                    " WHERE namespace = %s AND owner IS NOT NULL AND problem IS NULL",
                    ns,
                )
                == [(3,)]
            ),
            timeout_seconds=TIMEOUT_SECONDS,
        )
        apply(kubectl, ns, product(), card("hooked"))
        status = wait_status(kubectl, procs, ns, "card", "hooked", "issued", phase_in("Active"))
        [issued] = card_events(operator_env, ns, "hooked", ISSUED)
        for path in ("/cards", "/issued"):
            got = wait_for(
                f"card.issued at {path}",
                lambda path=path: hooks.bodies(path),
                timeout_seconds=TIMEOUT_SECONDS,
            )
            time.sleep(0.5)  # Room for a wrong second delivery to show up.
            [(headers, body)] = hooks.bodies(path)
            assert got
            assert hooks.verified(headers, body), headers
            assert headers["webhook-id"] == issued["id"]
            assert body.decode() == issued["_raw"]
            assert json.loads(body)["data"]["token"] == status["token"]
        assert hooks.bodies("/postings") == []
    except AssertionError:
        print(notifier.log("notifier")[-4000:])
        raise
    finally:
        notifier.stop()


# --- No card number anywhere ----------------------------------------------------------------------

FINTECH_KINDS = "cards,cardproducts,postings,riskpolicies,compliancepolicies,cardreviews"


def test_no_card_number_in_database_logs_or_resources(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    """Invariant 7: no Luhn-valid 13-19 digit number in a pg_dump, the logs or any resource.

    A fresh card is issued first, so the scan covers at least one issuance by the built-in
    tokenizer (which does create a number in memory), on top of everything earlier tests made.
    """
    ns, procs = op_namespace, operator_processes
    apply(kubectl, ns, product(), card(f"pan-{uuid.uuid4().hex[:6]}"))
    wait_for(
        "a card issued for the scan",
        lambda: any(
            item.get("status", {}).get("phase") == "Active"
            for item in json.loads(kubectl("get", "cards", "-n", ns, "-o", "json").stdout)["items"]
        ),
        timeout_seconds=TIMEOUT_SECONDS,
    )
    dump = subprocess.run(
        ["pg_dump", "--no-owner", operator_env["DATABASE_URL"]],
        env=operator_env,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    assert "risk_assessments" in dump
    assert "tok_" in dump or "card:" in dump
    resources = kubectl("get", f"{FINTECH_KINDS},events,configmaps", "-A", "-o", "json").stdout
    assert "tok_" in resources
    sources = {
        "database dump": dump,
        "operator log": procs.log("operator"),
        "rewards log": procs.log("rewards"),
        "resources": resources,
    }
    leaks = {where: pan.find_pans(text) for where, text in sources.items()}
    assert {where: found for where, found in leaks.items() if found} == {}, leaks
