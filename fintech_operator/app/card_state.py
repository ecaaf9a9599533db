"""ChangeCardState: freeze, unfreeze or close a card; and what follows a card's deletion.

Each change writes its ``card.state_changed`` event in the transaction that makes it (the
account's freeze flag, its closing), with an id per generation, so a retry writes it once; the
caller shows the new state only after that commit. Closing waits while the balance is not zero
(:class:`ClosingWaits`); the namespace's batched refresh tries again. Nothing here knows kopf.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from fintech_operator import api
from fintech_operator.authorizations import mirror
from fintech_operator.cards import lifecycle
from fintech_operator.events import schema
from fintech_operator.ledger import model
from fintech_operator.observability import tracing

CLOSED_BEFORE_ISSUE_MESSAGE: Final = "closed before it was issued; no ledger account was opened"
CLOSED_MESSAGE: Final = "card closed; its ledger history is kept"


@dataclass(frozen=True)
class IssuedCard:
    """A card as its status shows it: its phase and, once issued, its account."""

    namespace: str
    name: str
    uid: str
    generation: int
    phase: str | None
    account: str | None


@dataclass(frozen=True)
class ChangeCardState:
    """``spec.state`` became ``to``; ``reason`` goes into a closing's event (CardDeleted)."""

    card: IssuedCard
    to: api.CardState
    reason: str | None = None


@dataclass(frozen=True)
class StateChanged:
    """The card is now ``phase`` (Active, Frozen or Closed); ``reason`` when Closed before issue."""

    phase: api.CardPhase
    message: str
    reason: str | None = None


@dataclass(frozen=True)
class ClosingWaits:
    """The account still holds a balance: the card stays in its phase until it is zero."""

    reason: str
    message: str


@dataclass(frozen=True)
class Unchanged:
    """Nothing to do for this change in the card's phase (or it was done before)."""


Outcome = StateChanged | ClosingWaits | Unchanged


class CardLedger(Protocol):
    """The ledger, as a card's state needs it."""

    async def set_frozen(
        self,
        code: str,
        frozen: bool,
        events: Sequence[model.OutboxEvent],
        *,
        generation: int | None = None,
    ) -> bool:
        """True when the account changed; ``events`` are written only then. ``generation``:
        the Card's, recorded with the flag; an older one than recorded changes nothing."""
        ...

    async def close_account(self, code: str, events: Sequence[model.OutboxEvent]) -> None:
        """Raises ``model.AccountNotEmpty`` (balance) or ``model.AccountNotFound``."""
        ...

    async def write_events(self, events: Sequence[model.OutboxEvent]) -> None: ...

    async def mirror_card(self, card: IssuedCard, token: str, spec: api.CardSpec) -> None:
        """What the real-time gateway needs of an issued card (token, account, limit)."""
        ...

    async def mirror_limit(self, card: IssuedCard, limit: api.SpendLimit | None) -> None:
        """The card's new spend limit, for the next real-time authorization."""
        ...

    async def retire(self, card: IssuedCard) -> None:
        """The card's token authorizes nothing from now on."""
        ...


Clock = Callable[[], datetime.datetime]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


async def change_card_state(
    command: ChangeCardState, ledger: CardLedger, clock: Clock = _now
) -> Outcome:
    """Freeze, unfreeze or close the card as its phase allows."""
    card, to = command.card, command.to
    issued = card.phase in lifecycle.ISSUED_PHASES
    if issued and to is not api.CardState.CLOSED:
        return await _freeze_or_unfreeze(card, to, ledger, clock)
    if to is api.CardState.CLOSED and issued:
        return await close(command, ledger, clock)
    if to is api.CardState.CLOSED and card.phase in lifecycle.UNDECIDED_PHASES | {
        api.CardPhase.PENDING_REVIEW.value
    }:
        reason = api.CardReason.CLOSED_BEFORE_ISSUE
        await ledger.write_events([_state_changed(card, api.CardState.CLOSED, clock(), reason)])
        return StateChanged(api.CardPhase.CLOSED, CLOSED_BEFORE_ISSUE_MESSAGE, reason)
    return Unchanged()


async def _freeze_or_unfreeze(
    card: IssuedCard, to: api.CardState, ledger: CardLedger, clock: Clock
) -> Outcome:
    """The account's freeze flag follows ``to``, with its event in the same transaction, before
    the status says so; also when the status already shows ``to``.

    The status is read from the card as kopf last saw it, which can be older than the freeze
    this handler committed: frozen, then unfrozen by the user before kopf's patch of the frozen
    status showed up (bench/RESULTS.md, "Found by CI"). The ledger knows which state it is in,
    so it decides whether anything changes; an event is written only with a change, and it says
    what the account was before it (an issued card is Active or Frozen).
    """
    changed = await _follow(card, to, ledger, clock)
    if changed or to.value != card.phase:
        return StateChanged(api.CardPhase(to.value), f"card is {to.value}")
    return Unchanged()


async def _follow(card: IssuedCard, to: api.CardState, ledger: CardLedger, clock: Clock) -> bool:
    """Make the account's freeze flag follow ``to`` for the card's generation (the ledger
    refuses to go back to an older generation's state); True when the account changed."""
    frozen = to is api.CardState.FROZEN
    before = api.CardState.ACTIVE if frozen else api.CardState.FROZEN
    event = _state_changed(card, to.value, clock(), None, from_phase=before.value)
    generation = card.generation if card.generation > 0 else None
    return await ledger.set_frozen(str(card.account), frozen, [event], generation=generation)


def freeze_drift(
    card: IssuedCard, spec_state: str | None, frozen: bool, recorded_generation: int | None
) -> api.CardState | None:
    """The state to apply again when an issued card's ledger account does not follow it: its
    status already shows its spec's state (kopf handled it, or believes so), yet the account is
    frozen when that state is Active or open when it is Frozen. None when there is nothing to
    repair, also when what is known of the card (``card`` and ``spec_state``, possibly an older
    copy) is of a generation older than the one the account's flag follows
    (``recorded_generation``): a newer spec's state is in place and its status is on its way.

    How the two part (migration 0072): kopf lost the status patch after a freeze or unfreeze,
    and the user set the state back before kopf tried again, so kopf saw nothing to handle.
    """
    if spec_state not in (api.CardState.ACTIVE, api.CardState.FROZEN) or not card.account:
        return None
    if card.phase != spec_state or frozen == (spec_state == api.CardState.FROZEN):
        return None
    if recorded_generation is not None and card.generation < recorded_generation:
        return None
    return api.CardState(spec_state)


async def repair_freeze(
    card: IssuedCard, to: api.CardState, ledger: CardLedger, clock: Clock = _now
) -> bool:
    """Apply ``to`` (from :func:`freeze_drift`) to the account, with its ``card.state_changed``
    event; False when the ledger had meanwhile moved to a newer generation's state or already
    followed ``to``."""
    if to not in (api.CardState.ACTIVE, api.CardState.FROZEN):
        raise ValueError(f"only Active or Frozen is repaired, got {to}")
    return await _follow(card, to, ledger, clock)


async def close(command: ChangeCardState, ledger: CardLedger, clock: Clock = _now) -> Outcome:
    """Close the card's account with its event; while its balance is not zero, say why."""
    card = command.card
    try:
        await ledger.close_account(
            str(card.account), [_state_changed(card, api.CardState.CLOSED, clock(), command.reason)]
        )
    except model.AccountNotEmpty as exc:
        why = (
            f"closing waits: {exc.message}; post a Payment (or Refund) that brings the "
            "balance to zero and closing completes by itself"
        )
        return ClosingWaits(api.CardReason.BALANCE_NOT_ZERO, why)
    return StateChanged(api.CardPhase.CLOSED, CLOSED_MESSAGE)


def _state_changed(
    card: IssuedCard,
    to_state: str,
    now: datetime.datetime,
    reason: str | None,
    *,
    from_phase: str | None = None,
) -> model.OutboxEvent:
    """``card.state_changed`` from ``from_phase`` (default: the card's phase); before issue
    its ``from`` is Pending or PendingReview."""
    from_phase = from_phase or card.phase
    if from_phase not in lifecycle.ISSUED_PHASES and from_phase != api.CardPhase.PENDING_REVIEW:
        from_phase = api.CardPhase.PENDING
    return schema.CardStateChanged(
        namespace=card.namespace,
        name=card.name,
        uid=card.uid,
        generation=card.generation,
        from_phase=str(from_phase),
        to_state=to_state,
        reason=reason,
        now=now,
        headers=tracing.context_headers(),
    ).outbox()


# --- Resuming and deleting a card -----------------------------------------------------------------


@dataclass(frozen=True)
class AccountMissing:
    """The status names an account the ledger does not have."""

    message: str


@dataclass(frozen=True)
class FreezeRepaired:
    """The account did not follow the state its card's status and spec show; now it does."""

    state: api.CardState
    message: str


async def resume_card(
    card: IssuedCard,
    token: str | None,
    spec: api.CardSpec | None,
    ledger: CardLedger,
    *,
    spec_state: str | None = None,
    clock: Clock = _now,
) -> Unchanged | AccountMissing | FreezeRepaired:
    """An issued card seen again (operator restart): the ledger's freeze follows the card when
    its status shows its spec's state (``spec_state``; an upgrade from before migration 0041,
    or a freeze or unfreeze whose status patch was lost and then set back), with its event when
    the account changes, and the authorization mirror has it.

    Only then: while the status still shows an older state, kopf's ``spec.state`` handler runs
    next and makes the change; following the older status here could undo a freeze that
    handler had just committed (the card queue reads the card, then a handler freezes it, then
    this would unfreeze it: seen in the fault campaign, bench/RESULTS.md). The Card generation
    fences it as it fences the refresh's repair.
    """
    if card.phase not in lifecycle.ISSUED_PHASES or not card.account:
        return Unchanged()
    repaired = False
    try:
        if spec_state == card.phase:
            repaired = await _follow(card, api.CardState(spec_state), ledger, clock)
    except model.AccountNotFound as exc:
        return AccountMissing(exc.message)
    if token and spec is not None:
        await ledger.mirror_card(card, token, spec)
    if repaired:
        return FreezeRepaired(
            api.CardState(card.phase), repaired_message(api.CardState(card.phase))
        )
    return Unchanged()


def repaired_message(state: api.CardState) -> str:
    """What a repair of the account's freeze says (log line and Warning)."""
    was = "open" if state is api.CardState.FROZEN else "frozen"
    return (
        f"the ledger account was {was} while spec.state and status.phase are {state.value};"
        f" it is {state.value} again"
    )


async def change_spend_limit(
    card: IssuedCard, limit: api.SpendLimit | None, ledger: CardLedger
) -> Unchanged:
    """A new ``spec.spendLimit`` of an issued card reaches the authorization mirror; a card not
    issued yet gets its limit with its issuance."""
    if card.phase in lifecycle.ISSUED_PHASES:
        await ledger.mirror_limit(card, limit)
    return Unchanged()


@dataclass(frozen=True)
class AccountClosed:
    """The deleted card's account is closed; its history is kept."""

    account: str


@dataclass(frozen=True)
class AccountLeftOpen:
    """The deleted card's account keeps a balance: it stays open with its history."""

    message: str


async def delete_card(
    card: IssuedCard, ledger: CardLedger, clock: Clock = _now
) -> AccountClosed | AccountLeftOpen | Unchanged:
    """A deleted card: its token retired first (it authorizes nothing, even if its account has
    to stay open), then its account closed with the same ``card.state_changed`` as a close.

    A database error propagates: the caller retries a bounded number of times.
    """
    if not card.account or card.phase == api.CardPhase.CLOSED:
        return Unchanged()
    issued = card.phase in lifecycle.ISSUED_PHASES
    if issued:
        await ledger.retire(card)
    closed = [_state_changed(card, api.CardState.CLOSED, clock(), "CardDeleted")] if issued else []
    try:
        await ledger.close_account(card.account, closed)
    except model.AccountNotEmpty as exc:
        return AccountLeftOpen(
            f"{exc.message}: the card is deleted but its account stays open with its "
            "balance and history in the ledger"
        )
    except model.AccountNotFound:
        return Unchanged()
    return AccountClosed(card.account)


# --- Accounts of deleted cards ------------------------------------------------------------------
# A card deleted while its issuance ran, or in the moment after its status said issued and before
# its finalizer was on it, has its account closed by the card queue; if the operator stops in
# those seconds, or a deletion's closing gave up during a database outage, nothing else would:
# the Card is gone. The namespace's refresh therefore looks, every
# FINTECH_CARD_ORPHAN_SWEEP_INTERVAL_SECONDS, for card accounts that can still spend but whose
# Card the operator's index does not show, asks the API server, and treats each one whose Card
# is gone as that card's deletion (delete_card): the token retired, the account closed.


def orphan_suspects(
    accounts: Sequence[mirror.LiveAccount], cards: Mapping[str, str]
) -> list[mirror.LiveAccount]:
    """The accounts whose Card the index (``cards``: name -> uid) does not show: none of that
    name, or one of another uid than the account recorded. Each is only a suspect: the index
    lags the API server (a card being issued has no status yet and is not indexed)."""
    return [
        account
        for account in accounts
        if account.name not in cards or is_orphan(account, cards[account.name])
    ]


def is_orphan(account: mirror.LiveAccount, card_uid: str | None) -> bool:
    """Whether the account's Card is gone: the API server has no Card of its name
    (``card_uid`` None) or has one of another uid (deleted and created again; the new one is
    refused as NameReused and never uses this account). An account that recorded no uid
    (opened before uids were) is an orphan only when no Card of its name exists."""
    if card_uid is None:
        return True
    return account.uid is not None and card_uid != account.uid


async def close_orphan(
    namespace: str, account: mirror.LiveAccount, ledger: CardLedger, clock: Clock = _now
) -> AccountClosed | AccountLeftOpen | Unchanged:
    """What the deleted card's deletion would have done (:func:`delete_card`): its token
    retired, then its account closed with ``card.state_changed`` (CardDeleted, from the state
    the account shows), or left open with its balance."""
    phase = api.CardPhase.FROZEN if account.frozen else api.CardPhase.ACTIVE
    card = IssuedCard(namespace, account.name, account.uid or account.code, 0, phase, account.code)
    return await delete_card(card, ledger, clock)
