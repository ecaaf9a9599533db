"""What the real-time gateway reads, mirrored by the operator as a real process (issue 13):
a product's terms, an issued card's token and limit, a limit change, a RiskPolicy's purchase
rules, a freeze and a deletion each reach PostgreSQL, and the card's status shows held and
available."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import orjson
import psycopg
import pytest

from fintech_operator.authorizations import contract
from fintech_operator.authorizations.store import PostgresStore
from tests.conftest import Kubectl, OperatorProcesses, wait_for
from tests.e2e.test_cards_lifecycle import (
    apply,
    card,
    db_rows,
    patch_card,
    phase_in,
    risk_policy,
    wait_status,
)

pytestmark = pytest.mark.e2e


def authorize(url: str, token: str, amount: int, mcc: str = "5812") -> dict[str, Any]:
    """One authorization through the store, as the gateway makes it."""

    async def call() -> bytes:
        async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
            req = contract.AuthorizeRequest(
                id=f"auth_{uuid.uuid4().hex}",
                card=token,
                amount=amount,
                currency="USD",
                merchant=contract.Merchant(name="Cafe", mcc=mcc, country="US"),
            )
            return (await PostgresStore().authorize(conn, req)).body

    parsed = orjson.loads(asyncio.run(call()))
    assert isinstance(parsed, dict)
    return parsed


def test_the_operator_mirrors_what_an_authorization_needs(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
) -> None:
    ns, procs = op_namespace, operator_processes
    terms = {
        "currency": "USD",
        "rewardsRateBps": 100,
        "overCaptureBps": 1500,
        "authorizationTtlSeconds": 3600,
        "forcePost": True,
        "spendLimit": {"amount": 50_000, "interval": "Monthly"},
    }
    product = {"kind": "CardProduct", "metadata": {"name": "standard"}, "spec": terms}
    own_limit = card("rt")
    own_limit["spec"]["spendLimit"] = {"amount": 10_000, "interval": "Daily"}
    apply(kubectl, ns, product, own_limit)
    status = wait_status(kubectl, procs, ns, "card", "rt", "issued", phase_in("Active"))
    token, url = status["token"], operator_env["FINTECH_MIGRATION_DATABASE_URL"]
    assert db_rows(
        operator_env,
        "SELECT currency, spend_limit_minor, spend_interval, over_capture_bps,"
        " authorization_ttl_seconds, force_post FROM authorization_products WHERE product = %s",
        f"{ns}/standard",
    ) == [("USD", 50_000, "Monthly", 1500, 3600, True)]
    mirrored = (
        "SELECT token, spend_limit_minor, spend_interval FROM authorization_cards WHERE card = %s"
    )
    assert db_rows(operator_env, mirrored, f"{ns}/rt") == [(token, 10_000, "Daily")]

    # A hold shows in `kubectl get cards` as held and available.
    assert authorize(url, token, 4_000)["approved"] is True
    wait_status(
        kubectl, procs, ns, "card", "rt", "held 4000",
        lambda s: (s.get("held") or {}).get("amount") == 4_000
        and (s.get("available") or {}).get("amount") == 6_000,
    )  # fmt: skip

    # The card's own limit changes: the next authorization sees it.
    patch_card(kubectl, ns, "rt", {"spendLimit": {"amount": 5_000, "interval": "Daily"}})
    wait_for(
        "limit mirrored",
        lambda: db_rows(operator_env, mirrored, f"{ns}/rt") == [(token, 5_000, "Daily")],
        timeout_seconds=60,
    )
    assert authorize(url, token, 1_500)["reason"] == "SpendLimitExceeded"

    # A RiskPolicy's Decline rule on merchant categories applies in real time.
    apply(kubectl, ns, risk_policy("strict", blockedMccs={"codes": ["7995"]}))
    wait_for(
        "risk rules mirrored",
        lambda: (
            db_rows(
                operator_env,
                "SELECT rule, codes FROM authorization_risk_rules WHERE namespace = %s",
                ns,
            )
            == [("BlockedMcc", ["7995"])]
        ),
        timeout_seconds=60,
    )
    assert authorize(url, token, 100, mcc="7995")["reason"] == "RiskDeclined:BlockedMcc"

    # Frozen: declined; deleted: declined for good.
    patch_card(kubectl, ns, "rt", {"state": "Frozen"})
    wait_status(kubectl, procs, ns, "card", "rt", "frozen", phase_in("Frozen"))
    assert authorize(url, token, 100)["reason"] == "CardNotActive"
    kubectl("delete", "card", "rt", "-n", ns, "--wait=true", "--timeout=60s")
    retired = db_rows(
        operator_env, "SELECT retired_at IS NOT NULL FROM authorization_cards WHERE card = %s",
        f"{ns}/rt",
    )  # fmt: skip
    assert retired == [(True,)]
    assert authorize(url, token, 100)["reason"] == "CardNotActive"
