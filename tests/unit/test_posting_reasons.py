"""Ledger refusals become the documented Posting reasons (api.PostingReason)."""

from __future__ import annotations

import importlib

import pytest

from fintech_operator import api
from fintech_operator.ledger import model


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (model.AccountFrozen("card:ns/c:USD is frozen"), "CardNotActive"),
        (model.Unbalanced("debits 1 credits 2"), "Unbalanced"),
        (model.InvalidRequest("bad"), "InvalidSpec"),
        (model.AccountClosed("closed"), "AccountClosed"),
        (
            model.SpendLimitExceeded("over", limit_minor=1, spent_minor=1, requested_minor=1),
            "SpendLimitExceeded",
        ),
    ],
)
def test_every_ledger_refusal_maps_to_a_documented_reason(
    error: model.LedgerError, reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The handlers read their timer intervals from settings when imported (kopf's decorators
    # take them then); nothing here connects anywhere.
    monkeypatch.setenv("DATABASE_URL", "postgresql://unused@127.0.0.1/unused")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")
    postings = importlib.import_module("fintech_operator.handlers.postings")
    assert postings._reason(error) == reason
    assert reason in {r.value for r in api.PostingReason}
