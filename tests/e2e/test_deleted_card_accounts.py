"""A card deleted before its account could be closed: the namespace's refresh closes it.

The card queue closes the account of a card deleted while it was issued, and the deletion
handler that of a deleted card; if the operator stops in between, or the database is down
for all of the deletion's retries, the Card is gone and nothing retried it (docs/cards.md).
Its token kept authorizing. Here such accounts are made behind the operator's back, as an
issuance leaves them, and the real operator's sweep (FINTECH_CARD_ORPHAN_SWEEP_INTERVAL_SECONDS,
2 s in the tests) retires their tokens and closes them, leaves a debt open and a live card
alone.
"""

from __future__ import annotations

import asyncio
import datetime
import re
import uuid
from collections.abc import Iterator

import httpx
import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool

from fintech_operator import api
from fintech_operator.authorizations import mirror
from fintech_operator.events import schema
from fintech_operator.ledger import engine, model, rules
from tests.conftest import Kubectl, OperatorProcesses, wait_for
from tests.e2e.test_cards_lifecycle import apply, card, db_rows, phase_in, product, wait_status
from tests.faults.processes import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def operator_processes(
    operator_env: dict[str, str],
    crds_installed: None,
    operator_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcesses]:
    """The module's operator alone (no consumer shares its port), serving /metrics to count
    what its sweep did."""
    env = {**operator_env, "FINTECH_METRICS_PORT": str(free_port())}
    procs = OperatorProcesses(env, tmp_path_factory.mktemp("operator"))
    procs.start_operator(operator_prefix)
    yield procs
    procs.stop()


def _swept(env: dict[str, str]) -> dict[str, float]:
    """fintech_deleted_card_accounts_total by outcome, from the operator's /metrics."""
    text = httpx.get(f"http://127.0.0.1:{env['FINTECH_METRICS_PORT']}/metrics", timeout=10).text
    found = re.findall(
        r'^fintech_deleted_card_accounts_total\{outcome="(\w+)"\} (\S+)$', text, re.M
    )
    return {outcome: float(value) for outcome, value in found}


SPEC = api.CardSpec.model_validate(
    {"userId": "u1", "product": "standard", "holder": {"name": "A", "country": "US"}}
)
ACCOUNT_STATE = (
    "SELECT a.status, c.retired_at IS NOT NULL FROM accounts a"
    " JOIN authorization_cards c ON c.account_id = a.id WHERE a.code = %s"
)


async def _leave_account(owner_url: str, ns: str, name: str, *, purchase: int = 0) -> str:
    """What an issuance leaves for a card deleted before its account was closed: the account
    of the card's uid, its token mirrored, and a purchase on it if ``purchase``."""
    async with await psycopg.AsyncConnection.connect(owner_url, autocommit=True) as conn:
        account = await engine.open_card_account(conn, ns, name, "USD", card_uid=str(uuid.uuid4()))
        assert await mirror.put_card(
            conn, namespace=ns, name=name, account=account.code,
            token=f"tok_{uuid.uuid4().hex}", spec=SPEC,
        )  # fmt: skip
    if purchase:
        lines = rules.lines_for(model.PostingKind.PURCHASE, account.code, purchase, "USD")
        request = model.PostingRequest(
            idempotency_key=f"k-{uuid.uuid4()}",
            kind=model.PostingKind.PURCHASE,
            lines=lines,
            occurred_at=datetime.datetime.now(datetime.UTC),
            reference=None,
        )
        async with AsyncConnectionPool(owner_url, min_size=1, max_size=1, open=False) as pool:
            await engine.post(pool, request)
    return account.code


def _authorize(owner_url: str, token: str) -> str:
    with psycopg.connect(owner_url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT convert_from(answer, 'UTF8') FROM authorization_authorize("
            "%s, %s, 100, 'USD', 'Cafe', '5812', 'US')",
            (f"auth-{uuid.uuid4().hex}", token),
        ).fetchone()
    assert row is not None
    return str(row[0])


def test_a_deleted_cards_account_is_closed_and_its_token_retired_by_the_refresh(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
    migrated_database_url: str,
) -> None:
    ns, procs = op_namespace, operator_processes
    owner = migrated_database_url
    ghost = asyncio.run(_leave_account(owner, ns, "ghost"))
    debt = asyncio.run(_leave_account(owner, ns, "debt", purchase=2_500))
    [(ghost_token,)] = db_rows(
        operator_env,
        "SELECT c.token FROM authorization_cards c JOIN accounts a ON a.id = c.account_id"
        " WHERE a.code = %s",
        ghost,
    )
    # The namespace's refresh starts with its product; a live card beside the orphans.
    apply(kubectl, ns, product(), card("c1"))
    live = wait_status(kubectl, procs, ns, "card", "c1", "issued", phase_in("Active"))["account"]

    wait_for(
        "the deleted card's account closed",
        lambda: db_rows(operator_env, ACCOUNT_STATE, ghost) == [("closed", True)] or None,
        timeout_seconds=60,
    )
    assert db_rows(operator_env, ACCOUNT_STATE, debt) == [("open", True)]  # a debt stays open
    assert db_rows(operator_env, ACCOUNT_STATE, live) == [("open", False)]
    closed = db_rows(
        operator_env,
        "SELECT payload FROM outbox WHERE topic = 'cards' AND key = %s AND payload->>'type' = %s",
        f"{ns}/ghost",
        schema.CARD_STATE_CHANGED,
    )
    assert [(p["data"]["from"], p["data"]["to"], p["data"]["reason"]) for (p,) in closed] == [
        ("Active", "Closed", "CardDeleted")
    ]
    assert '"reason": "CardNotActive"' in _authorize(owner, ghost_token)
    log = procs.log("operator")
    assert f"card {ns}/ghost (uid " in log
    assert "is gone: its token retired and its account closed; history kept" in log
    assert '"reason": "DeletedCardAccountClosed"' in log
    assert f"card {ns}/debt (uid " in log
    assert "has balance 2500" in log
    assert _swept(procs.env) == {"closed": 1.0, "left_open": 1.0}

    # Later ones too, every sweep interval: one left while the operator runs.
    later = asyncio.run(_leave_account(owner, ns, "ghost-2"))
    wait_for(
        "the second deleted card's account closed",
        lambda: db_rows(operator_env, ACCOUNT_STATE, later) == [("closed", True)] or None,
        timeout_seconds=60,
    )
    assert db_rows(operator_env, ACCOUNT_STATE, live) == [("open", False)]
    assert _swept(procs.env) == {"closed": 2.0, "left_open": 1.0}
