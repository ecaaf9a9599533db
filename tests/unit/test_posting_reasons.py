"""Ledger refusals become the documented Posting reasons (api.PostingReason)."""

from __future__ import annotations

import pytest

from fintech_operator import api
from fintech_operator.app import posting
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
    error: model.LedgerError, reason: str
) -> None:
    assert posting.reason_of(error) == reason
    assert reason in {r.value for r in api.PostingReason}
