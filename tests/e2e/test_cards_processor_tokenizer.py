"""Cards issued through a card processor's tokenizer over HTTP, by the operator as a process.

The module's operator runs with ``FINTECH_TOKENIZER_URL`` pointing at a fake processor on
127.0.0.1 (tests/integration/test_http_tokenizer.py): a card takes the processor's token and
last 4 under a key derived from its uid; a processor outage is retried with the same key until
the card is issued; a refusal ends the card Rejected ``TokenizerRefused`` with nothing in the
ledger.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fintech_operator.cards import http_tokenizer
from tests.conftest import Kubectl, OperatorProcesses
from tests.e2e.test_cards_lifecycle import (
    REJECTED,
    apply,
    card,
    card_events,
    condition,
    db_rows,
    events,
    get,
    outbox_types,
    phase_in,
    product,
    wait_event,
    wait_status,
)
from tests.integration.test_http_tokenizer import Processor, serving

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def processor() -> Iterator[Processor]:
    with serving(Processor()) as state:
        yield state


@pytest.fixture(scope="module")
def operator_env(
    operator_env: dict[str, str], processor: Processor, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """The conftest's environment, plus the processor's URL and a mounted credential, minus the
    development opt-in (the operator refuses both at once)."""
    secret = Path(tmp_path_factory.mktemp("processor")) / "token"
    secret.write_text("pk_e2e_s3cr3t\n")
    return {
        **{k: v for k, v in operator_env.items() if k != "FINTECH_TOKENIZER"},
        "FINTECH_TOKENIZER_URL": processor.url,
        "FINTECH_TOKENIZER_TOKEN_FILE": str(secret),
        "FINTECH_TOKENIZER_TIMEOUT_SECONDS": "3",
    }


def requests_for(processor: Processor, ref: str) -> list[dict[str, str]]:
    with processor.lock:
        return [r["headers"] for r in processor.requests if r["body"]["cardRef"] == ref]


def test_processor_token_outage_retried_with_the_same_key_and_refusal_rejects(
    kubectl: Kubectl,
    op_namespace: str,
    operator_processes: OperatorProcesses,
    operator_env: dict[str, str],
    processor: Processor,
) -> None:
    """Active with the processor's token; 503 then success under one key; 422 -> Rejected."""
    ns, procs = op_namespace, operator_processes
    refusal = {"error": {"code": "user_blocked", "message": "this user may not hold cards"}}
    processor.replies_for[f"{ns}/flaky"] = [(503, b'{"error": "maintenance"}', 0.0)]
    processor.replies_for[f"{ns}/blocked"] = [(422, json.dumps(refusal).encode(), 0.0)]
    apply(
        kubectl,
        ns,
        product(),
        card("plain", user="u1"),
        card("flaky", user="u2"),
        card("blocked", user="u3"),
    )
    for name in ("plain", "flaky"):
        status = wait_status(kubectl, procs, ns, "card", name, "issued", phase_in("Active"))
        uid = (get(kubectl, ns, "card", name) or {})["metadata"]["uid"]
        key = http_tokenizer.idempotency_key(uid)
        sent = requests_for(processor, f"{ns}/{name}")
        assert {h["idempotency-key"] for h in sent} == {key}
        assert {h["authorization"] for h in sent} == {"Bearer pk_e2e_s3cr3t"}
        with processor.lock:
            assert (status["token"], status["last4"]) == (
                processor.cards[key]["token"],
                processor.cards[key]["last4"],
            )
    # The outage was retried (same key, above), not turned into a rejection.
    assert len(requests_for(processor, f"{ns}/flaky")) == 2
    assert len(requests_for(processor, f"{ns}/plain")) == 1
    # The card was assessed once (docs/cards.md, "Crash safety") and shows it once: each try
    # after the outage shows the recorded assessment again, but posts no second Event for it.
    # kopf posts Events in order, so once Issued is there every RiskAssessed before it is too.
    wait_event(kubectl, ns, "flaky", "Normal", "Issued")
    assessed = [e for e in events(kubectl, ns, "flaky") if e[:2] == ("Normal", "RiskAssessed")]
    assert len(assessed) == 1, assessed

    blocked = wait_status(kubectl, procs, ns, "card", "blocked", "refused", phase_in("Rejected"))
    expected = (
        "the card processor refused the card (HTTP 422): user_blocked: this user may not hold cards"
    )
    assert (blocked["reason"], blocked["message"]) == ("TokenizerRefused", expected)
    assert condition(blocked, "Ready")["reason"] == "TokenizerRefused"
    assert condition(blocked, "RiskAssessed")["status"] == "True"
    assert "account" not in blocked
    assert "token" not in blocked
    assert wait_event(kubectl, ns, "blocked", "Warning", "TokenizerRefused") == expected
    assert len(requests_for(processor, f"{ns}/blocked")) == 1  # Final: not retried.
    accounts = db_rows(
        operator_env, "SELECT count(*) FROM accounts WHERE metadata->>'card' = %s", f"{ns}/blocked"
    )
    assert accounts == [(0,)]
    assert outbox_types(operator_env, ns, "blocked") == [REJECTED]
    [rejected] = card_events(operator_env, ns, "blocked", REJECTED)
    assert (rejected["data"]["reason"], rejected["data"]["message"]) == (
        "TokenizerRefused",
        expected,
    )
