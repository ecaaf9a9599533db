"""Post and Reverse: one posting, decided exactly once, in one ledger transaction.

A posting is ``Posted`` with its journal, ``Replayed`` (its idempotency key already posted the
same request: the first journal), or ``Rejected`` with a reason from the fixed set of
``api.PostingReason``; while its card is not there yet it is :class:`WaitingForCard`, then
``CardNotFound``; a reversal whose original is not decided yet is :class:`WaitingForOriginal`,
then ``JournalNotFound``. The idempotency key (default ``namespace/name``) is unique within the
posting's namespace (DESIGN.md invariant 10), and a replay is recognised by the ledger's own
request hash (invariant 3 has one fingerprint). Risk rules and AML monitoring run inside the
posting's transaction (``risk.store.PostingCheck``). Nothing here knows kopf: the caller says
what it knows of the card, its product and the reversed posting, and renders the outcome.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from fintech_operator import api, posting_rules
from fintech_operator.cards import lifecycle
from fintech_operator.compliance import model as compliance_model
from fintech_operator.events import schema
from fintech_operator.ledger import model, rules
from fintech_operator.observability import tracing
from fintech_operator.risk import model as risk_model
from fintech_operator.risk import store as risk_store

# A posting whose card is not there yet is tried again this often, ``attempts_max`` times.
CARD_WAIT_DELAY_SECONDS: Final = 2.0


# --- Commands -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostingRef:
    """Which posting: its object's namespace, name, uid and creation time."""

    namespace: str
    name: str
    uid: str | None
    created: datetime.datetime  # the journal's time when the spec gives none (stable on replay)


@dataclass(frozen=True)
class CardView:
    """What the caller knows of the posting's card (the kopf index, or the gateway's mirror)."""

    phase: str | None
    account: str
    currency: str | None
    spend_limit: Mapping[str, Any] | None = None  # the card's own {amount, interval}


@dataclass(frozen=True)
class ProductView:
    """The terms of the card's product a posting needs (an empty product: no rewards)."""

    rewards_rate_bps: int = 0
    earn_on: tuple[str, ...] = ("Purchase",)
    spend_limit: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class Target:
    """What the caller knows of the posting a reversal names: whether its object exists, its
    phase and, if its status shows it posted, its journal id, and its ``spec.idempotencyKey``.
    When the status shows no journal (yet), or the object is gone (a TTL deleted it), the
    journal is looked up in the ledger under that posting's key."""

    exists: bool
    journal_id: int | None = None
    phase: str | None = None
    key: str | None = None

    @property
    def decided(self) -> bool:
        return self.phase in (api.PostingPhase.POSTED, api.PostingPhase.REJECTED)


@dataclass(frozen=True)
class Post:
    """Post ``spec`` (``spec.reverses`` unset). ``card`` is None when no such card is known."""

    posting: PostingRef
    spec: api.PostingSpec
    card: CardView | None
    product: ProductView
    risk_policy: risk_model.Policy
    compliance_policy: compliance_model.Policy
    attempt: int
    attempts_max: int  # tries while the card is missing or Pending, then CardNotFound


@dataclass(frozen=True)
class Reverse:
    """Reverse the journal of the posting ``spec.reverses`` names, as ``target`` describes it."""

    posting: PostingRef
    spec: api.PostingSpec
    card: CardView | None
    target: Target
    attempt: int
    attempts_max: int


# --- Outcomes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Posted:
    """A new journal; ``risk`` is the risk decision shown on the posting (a Review still posts)."""

    journal: model.Journal
    risk: api.Decision | None = None


@dataclass(frozen=True)
class Replayed:
    """The idempotency key already posted this request: its first journal, nothing new."""

    journal: model.Journal


@dataclass(frozen=True)
class Rejected:
    """A final refusal; nothing was written but the risk decision of a RiskDeclined."""

    reason: str
    message: str
    risk: api.Decision | None = None


@dataclass(frozen=True)
class WaitingForCard:
    """The card does not exist or is not issued yet: try again after ``delay_seconds``."""

    message: str
    attempt: str  # "3 of 30", for the log line
    delay_seconds: float = CARD_WAIT_DELAY_SECONDS


@dataclass(frozen=True)
class WaitingForOriginal:
    """A reversal whose original posting has no journal yet: not decided (applied in the same
    ``kubectl apply``, or still waiting for its card) or not seen yet (applied after the
    reversal): try again after ``delay_seconds``."""

    message: str
    attempt: str  # "3 of 30", for the log line
    delay_seconds: float = CARD_WAIT_DELAY_SECONDS


Outcome = Posted | Replayed | Rejected | WaitingForCard | WaitingForOriginal


# --- Ports ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reversal:
    """What :meth:`PostingLedger.reverse` posts: the opposite of ``journal_id``, once."""

    idempotency_key: str
    journal_id: int
    reason: str
    events: tuple[model.OutboxEvent, ...]
    namespace: str


class PostingLedger(Protocol):
    """The ledger, as a posting needs it. Refusals raise ``model.LedgerError`` subclasses."""

    async def journal_by_key(self, key: str, namespace: str) -> model.Journal | None: ...

    async def journal(self, journal_id: int) -> model.Journal:
        """Raises ``model.JournalNotFound``."""
        ...

    async def open_account(self, code: str) -> model.Account | None:
        """The account if it exists and is open, else None."""
        ...

    async def posted_event(self, journal_id: int) -> dict[str, Any] | None:
        """The journal's ``posting.posted`` event as published, None if it has none."""
        ...

    async def post(
        self, request: model.PostingRequest, check: risk_store.PostingCheck
    ) -> model.PostResult:
        """One transaction, ``check`` inside it; a RiskDeclined is recorded, then raised."""
        ...

    async def reverse(self, reversal: Reversal) -> model.PostResult: ...


Clock = Callable[[], datetime.datetime]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0)


class _OriginalUndecided(Exception):
    """The original of a reversal is not decided yet: the reversal waits (a retry)."""

    def __init__(self, wait: WaitingForOriginal) -> None:
        super().__init__(wait.message)
        self.wait = wait


class Refused(Exception):
    """A final, user-visible refusal inside a use case: becomes :class:`Rejected`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


# --- Use cases ------------------------------------------------------------------------------------


async def post(command: Post, ledger: PostingLedger, clock: Clock = _now) -> Outcome:
    """Replay, wait for the card, or post with the namespace's risk and AML rules."""
    try:
        # A key that already posted is a replay whatever happened to the card since: an
        # object deleted and re-applied (Argo CD) after a freeze still shows its journal.
        replayed = await _replay(command, ledger)
        if replayed is not None:
            return replayed
        card = await _card_or_wait(command, ledger)
        if isinstance(card, WaitingForCard):
            return card
        _check_card_accepts(card, command.spec, command.spec.type.value)
        request = build_request(command.posting, command.spec, card, command.product, clock())
        return await _post_with_risk(command, card, request, ledger, clock)
    except Refused as exc:
        return Rejected(exc.reason, exc.message)
    except risk_model.RiskDeclined as exc:
        risk = None
        if exc.record_id is not None:
            risk = lifecycle.risk_decision(exc.decision, exc.record_id, clock())
        return Rejected(exc.reason, exc.message, risk)
    except model.LedgerError as exc:
        return Rejected(reason_of(exc), exc.message)


async def reverse(command: Reverse, ledger: PostingLedger, clock: Clock = _now) -> Outcome:
    """Replay, wait for the card, or post the opposite of the named posting's journal."""
    try:
        replayed = await _replay(command, ledger)
        if replayed is not None:
            return replayed
        card = await _card_or_wait(command, ledger)
        if isinstance(card, WaitingForCard):
            return card
        result = await _reverse(command, card, ledger, clock)
        return Replayed(result.journal) if result.replayed else Posted(result.journal)
    except _OriginalUndecided as exc:
        return exc.wait
    except Refused as exc:
        return Rejected(exc.reason, exc.message)
    except model.LedgerError as exc:
        return Rejected(reason_of(exc), exc.message)


Command = Post | Reverse


async def decide(command: Command, ledger: PostingLedger, clock: Clock = _now) -> Outcome:
    """The one decision of a posting, whichever it is: :func:`post` or :func:`reverse`. The
    handler's queue (``app.posting_queue``) calls it for each posting of a batch, with a ledger
    whose writes share the batch's transaction, each posting under its own savepoint."""
    if isinstance(command, Reverse):
        return await reverse(command, ledger, clock)
    return await post(command, ledger, clock)


def reason_of(exc: model.LedgerError) -> str:
    """The documented reason for a ledger refusal; malformed requests are InvalidSpec."""
    if isinstance(exc, model.Unbalanced):
        return str(api.PostingReason.UNBALANCED)
    if isinstance(exc, model.InvalidRequest):
        return str(api.PostingReason.INVALID_SPEC)
    if isinstance(exc, model.AccountFrozen):
        # The ledger saw the freeze before the caller's view of the Card did: same answer.
        return str(api.PostingReason.CARD_NOT_ACTIVE)
    return exc.reason


# --- The request ----------------------------------------------------------------------------------


def key_of(posting: PostingRef, spec: api.PostingSpec) -> str:
    return spec.idempotency_key or f"{posting.namespace}/{posting.name}"


def build_request(
    posting: PostingRef,
    spec: api.PostingSpec,
    card: CardView,
    product: ProductView,
    now: datetime.datetime,
) -> model.PostingRequest:
    """Translate a posting into a ledger request (no I/O)."""
    if spec.currency != card.currency:
        raise Refused(
            api.PostingReason.CURRENCY_MISMATCH,
            f"posting is in {spec.currency}, card account is in {card.currency}",
        )
    occurred_at = spec.occurred_at or posting.created
    return model.PostingRequest(
        idempotency_key=key_of(posting, spec),
        kind=model.PostingKind(spec.type.value),
        lines=_lines(spec, card.account),
        occurred_at=occurred_at,
        reference=spec.reference,
        metadata=_metadata(spec, posting),
        events=(_event(spec, posting, product, occurred_at),),
        guard=_guard(spec, card, product, now),
        namespace=posting.namespace,
    )


def same_request(posting: PostingRef, spec: api.PostingSpec, journal: model.Journal) -> bool:
    """True when this posting asks for what ``journal`` recorded, by the ledger's own request
    hash: the request is rebuilt as it was posted. A deleted and re-applied object has a new
    creation time, so without ``spec.occurredAt`` the journal's time stands in for it;
    everything else (type, amount, card, entries, reference, merchant, name) must match.
    Journals posted before this scheme carry a ``specHash`` in their metadata, which was part
    of their hash: it is recomputed from the spec for them."""
    account = model.card_account_code(posting.namespace, spec.card, spec.currency)
    metadata = _metadata(spec, posting)
    if "specHash" in journal.metadata:
        metadata["specHash"] = posting_rules.spec_hash(api.to_api(spec))
    try:
        request = model.PostingRequest(
            idempotency_key=journal.idempotency_key,
            kind=model.PostingKind(spec.type.value),
            lines=_lines(spec, account),
            occurred_at=spec.occurred_at or journal.occurred_at,
            reference=spec.reference,
            metadata=metadata,
        )
    except (Refused, model.LedgerError):
        return False  # a request the ledger would refuse cannot be the one it recorded
    return rules.request_hash(request) == journal.request_hash


def _lines(spec: api.PostingSpec, account: str) -> tuple[model.Line, ...]:
    if spec.entries:
        explicit = [
            model.Line(
                e.account, model.Direction(e.direction.value.lower()), e.amount_minor, e.currency
            )
            for e in spec.entries
        ]
        checked = rules.validate_explicit(explicit)  # Unbalanced first: the ledger's own rule
        try:
            posting_rules.check_explicit_entries(
                checked, account, spec.type.value, spec.amount_minor, spec.currency
            )
        except posting_rules.SpecRefused as exc:
            raise Refused(exc.reason, exc.message) from exc
        return checked
    return rules.lines_for(
        model.PostingKind(spec.type.value), account, spec.amount_minor, spec.currency
    )


def _guard(
    spec: api.PostingSpec, card: CardView, product: ProductView, now: datetime.datetime
) -> model.SpendGuard | None:
    # The card's own limit wins; a card without one inherits its product's default.
    limit = card.spend_limit or product.spend_limit
    if not limit or spec.type is not api.PostingType.PURCHASE:
        return None
    return model.SpendGuard(
        card.account, int(limit["amount"]), model.SpendInterval(limit["interval"]), now
    )


def _event(
    spec: api.PostingSpec,
    posting: PostingRef,
    product: ProductView,
    occurred_at: datetime.datetime,
) -> model.OutboxEvent:
    """The ``dev.fintech.posting.posted.v1`` event; the relay adds the journal id."""
    merchant = spec.merchant.model_dump(mode="json", exclude_none=True) if spec.merchant else None
    return schema.PostingPosted(
        namespace=posting.namespace,
        name=posting.name,
        card=spec.card,
        posting_type=spec.type.value,
        amount_minor=spec.amount_minor,
        currency=spec.currency,
        rewards_rate_bps=product.rewards_rate_bps,
        earn_on=list(product.earn_on),
        occurred_at=occurred_at,
        now=datetime.datetime.now(datetime.UTC),  # the event's time, to the millisecond
        reference=spec.reference,
        merchant=merchant,
        headers=tracing.context_headers(),
    ).outbox()


def _metadata(spec: api.PostingSpec, posting: PostingRef) -> dict[str, Any]:
    """What the journal records about the posting besides its lines (part of its hash)."""
    return {
        "posting": f"{posting.namespace}/{posting.name}",
        "merchant": spec.merchant.model_dump(mode="json") if spec.merchant else None,
    }


# --- Steps ----------------------------------------------------------------------------------------


# A card in these phases may still be issued (its product, its processor or a reviewer is
# awaited), so a posting naming it waits like one naming a card not seen yet.
_NOT_ISSUED_YET = (None, api.CardPhase.PENDING, api.CardPhase.PENDING_REVIEW)


async def _card_or_wait(
    command: Post | Reverse, ledger: PostingLedger
) -> CardView | WaitingForCard:
    """The card if it exists (or its deleted card's open account); a card not yet seen or not
    yet issued (Pending, or waiting for its review) is a wait, then ``CardNotFound`` (or
    CardNotActive for a card still not issued), as docs/ledger.md says."""
    spec, namespace, limit = command.spec, command.posting.namespace, command.attempts_max
    card = command.card
    if card is None:
        card = await _deleted_card(namespace, spec, ledger)
    pending = card is None or card.phase in _NOT_ISSUED_YET
    if pending and command.attempt < limit:
        what = (
            "does not exist"
            if card is None
            else f"is not issued yet (its phase is {card.phase or api.CardPhase.PENDING.value})"
        )
        return WaitingForCard(
            f"waiting for card {spec.card!r} in {namespace}: it {what}; the posting is "
            f"rejected (CardNotFound or CardNotActive) if that lasts about "
            f"{limit * CARD_WAIT_DELAY_SECONDS:.0f} s",
            f"{command.attempt + 1} of {limit}",
        )
    if card is None:
        raise Refused(
            api.PostingReason.CARD_NOT_FOUND, f"card {spec.card!r} does not exist in {namespace}"
        )
    return card


async def _deleted_card(
    namespace: str, spec: api.PostingSpec, ledger: PostingLedger
) -> CardView | None:
    """A card whose object was deleted while its account stayed open (it had a balance):
    its account, in phase ``Deleted``, so the debt can still be paid down. None otherwise."""
    code = model.card_account_code(namespace, spec.card, spec.currency)
    account = await ledger.open_account(code)
    if account is None:
        return None  # Not issued yet (or never): the caller retries, then CardNotFound.
    return CardView(phase="Deleted", account=code, currency=account.currency)


def _check_card_accepts(card: CardView, spec: api.PostingSpec, acts_as: str) -> None:
    if not posting_rules.card_accepts(card.phase, acts_as):
        what = spec.type.value if acts_as == spec.type.value else f"a reversal (as {acts_as})"
        raise Refused(
            api.PostingReason.CARD_NOT_ACTIVE,
            f"card {spec.card!r} is {card.phase or 'Pending'}: {what} refused",
        )


async def _post_with_risk(
    command: Post,
    card: CardView,
    request: model.PostingRequest,
    ledger: PostingLedger,
    clock: Clock,
) -> Posted | Replayed:
    """The posting with the namespace's risk rules and AML monitoring in its transaction.

    A decline raises ``risk_model.RiskDeclined`` (a LedgerError, reason RiskDeclined).
    """
    posting, spec, merchant = command.posting, command.spec, command.spec.merchant
    check = risk_store.PostingCheck(
        command.risk_policy,
        risk_model.PostingFacts(
            card=f"{posting.namespace}/{spec.card}",
            account_code=card.account,
            kind=spec.type.value,
            amount_minor=spec.amount_minor,
            currency=spec.currency,
            merchant_mcc=merchant.mcc if merchant else None,
            merchant_country=merchant.country if merchant else None,
        ),
        subject=f"{posting.namespace}/{posting.name}",
        subject_uid=posting.uid,
        compliance_policy=command.compliance_policy,
    )
    result = await ledger.post(request, check)
    if result.replayed:
        return Replayed(result.journal)
    risk = None
    if check.decision is not None and check.record_id is not None:
        # Shown on the posting as well as stored: a Review still posts, and says so there.
        risk = lifecycle.risk_decision(check.decision, check.record_id, clock())
    return Posted(result.journal, risk)


async def _replay(command: Post | Reverse, ledger: PostingLedger) -> Replayed | None:
    """The first result of this posting's idempotency key, or None if it never posted.

    The same request (see :func:`same_request`; a reversal: the journal it reversed, which
    must be the one ``spec.reverses`` names now) is a replay; another is IdempotencyConflict.
    """
    posting, spec = command.posting, command.spec
    key = key_of(posting, spec)
    # Keys are unique per namespace: another namespace's key is never replayed here.
    journal = await ledger.journal_by_key(key, posting.namespace)
    if journal is None:
        return None
    if isinstance(command, Reverse) and journal.reverses_journal_id is not None:
        target = await _target_journal(command, ledger)
        if journal.reverses_journal_id == target.id:
            return Replayed(journal)
    elif isinstance(command, Post) and same_request(posting, spec, journal):
        return Replayed(journal)
    raise Refused(
        api.PostingReason.IDEMPOTENCY_CONFLICT,
        f"idempotency key {key!r} already posted journal {journal.id} with another spec",
    )


async def _reverse(
    command: Reverse, card: CardView, ledger: PostingLedger, clock: Clock
) -> model.PostResult:
    posting, spec = command.posting, command.spec
    target = await _target_journal(command, ledger)
    try:
        acts_as = posting_rules.check_reversal(
            target, card.account, spec.amount_minor, spec.currency
        )
    except posting_rules.SpecRefused as exc:
        raise Refused(exc.reason, exc.message) from exc
    _check_card_accepts(card, spec, acts_as)
    original = await ledger.posted_event(target.id)
    key = key_of(posting, spec)
    reason = f"reversed by {key}"
    # The reversal's event carries the original's terms, so consumers take back exactly
    # what the original gave. Every posting's journal has one; journals written by other
    # means (the engine used directly) may not, and then there is nothing to take back.
    events = []
    if original is not None:
        events.append(
            schema.PostingReversed(
                original, reverses_journal_id=target.id, namespace=posting.namespace,
                name=posting.name, reason=reason, now=clock(), headers=tracing.context_headers(),
            ).outbox()
        )  # fmt: skip
    return await ledger.reverse(Reversal(key, target.id, reason, tuple(events), posting.namespace))


async def _target_journal(command: Reverse, ledger: PostingLedger) -> model.Journal:
    """The journal of the posting ``spec.reverses`` names: from its status, else from the
    ledger under its key, if that journal was posted by it. The status can lag the ledger: an
    original applied together with its reversal is decided just before it (earlier in the
    card's queue, or in the same batch) while its status patch is still on its way. An original
    not decided yet, or not seen yet (applied after its reversal), is waited for,
    ``attempts_max`` times, as a posting waits for its card; a deleted one (its TTL) is found
    in the ledger under its default key."""
    namespace, name = command.posting.namespace, str(command.spec.reverses)
    target = command.target
    if target.exists and target.journal_id:
        return await ledger.journal(target.journal_id)
    journal: model.Journal | None = None
    # A deleted object's explicit key is not known any more: only its default key is.
    key = (target.key if target.exists else None) or f"{namespace}/{name}"
    by_key = await ledger.journal_by_key(key, namespace)
    # Another posting may have chosen that key explicitly: only its own journal counts.
    if by_key is not None and by_key.metadata.get("posting") == f"{namespace}/{name}":
        journal = by_key
    if journal is None and not target.decided and command.attempt < command.attempts_max:
        what = "is not decided yet" if target.exists else "does not exist"
        raise _OriginalUndecided(
            WaitingForOriginal(
                f"waiting for posting {name!r} in {namespace}, which this one reverses: it "
                f"{what}; the reversal is rejected (JournalNotFound) if that lasts about "
                f"{command.attempts_max * CARD_WAIT_DELAY_SECONDS:.0f} s",
                f"{command.attempt + 1} of {command.attempts_max}",
            )
        )
    if journal is None:
        raise Refused(
            api.PostingReason.JOURNAL_NOT_FOUND, f"posting {name!r} has no journal to reverse"
        )
    return journal
