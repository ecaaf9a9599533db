"""A card re-created under a deleted card's name never inherits that card's ledger account."""

from __future__ import annotations

import pytest

from fintech_operator.cards import lifecycle

OLD = "5f0c6a2e-0000-4000-8000-000000000001"
NEW = "5f0c6a2e-0000-4000-8000-000000000002"


def test_a_name_without_accounts_is_free() -> None:
    """No account was ever opened under the name: nothing to refuse."""
    assert lifecycle.name_reused("shop", "alice", NEW, []) is None


def test_the_cards_own_account_is_no_obstacle() -> None:
    """A retried or resumed handler of the same card (same uid) finds its own account."""
    owners = [("card:shop/alice:USD", NEW)]
    assert lifecycle.name_reused("shop", "alice", NEW, owners) is None


@pytest.mark.parametrize(
    "owners",
    [
        [("card:shop/alice:USD", OLD)],
        # Another currency's account still carries the name's rewards and history.
        [("card:shop/alice:USD", NEW), ("card:shop/alice:EUR", OLD)],
    ],
)
def test_an_account_of_another_uid_refuses_for_good(owners: list[tuple[str, str | None]]) -> None:
    """Another card's account: Rejected NameReused, naming the old uid and asking for a new name."""
    verdict = lifecycle.name_reused("shop", "alice", NEW, owners)
    assert verdict is not None
    assert (verdict.phase, verdict.reason) == ("Rejected", "NameReused")
    assert f"card uid {OLD}" in verdict.message
    assert "ledger account card:shop/alice:" in verdict.message
    assert "history are kept" in verdict.message
    assert "new name" in verdict.message
    assert NEW not in verdict.message


def test_an_account_without_a_recorded_uid_fails_closed() -> None:
    """An account whose owner is unknown cannot be proven to be this card's: refused."""
    verdict = lifecycle.name_reused("shop", "alice", NEW, [("card:shop/alice:USD", None)])
    assert verdict is not None
    assert verdict.reason == "NameReused"
    assert "uid was not recorded" in verdict.message
