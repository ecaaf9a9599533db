"""IssueCard: assess a new card (risk and compliance), then issue it, hold it or reject it.

Two commands share one workflow. :class:`IssueCard` assesses the card's current generation,
records the decisions, and acts on the recorded verdict; :class:`OpenCard` issues a card a
reviewer approved. Issuing asks the card processor for a token (under a key derived from the
card's uid, so a retry gets the first answer), then writes everything in ONE ledger
transaction (``engine.issue_card``): the account, the fee, the freeze, the ``card.issued``
event and the authorization mirror. A retry after that commit reports the token the event
already carries instead of asking the processor again.

Every refusal writes its ``card.rejected`` event before the outcome is returned, so the caller
renders a decision that is already committed. Nothing here knows kopf: the ports are
Protocols, the outcomes plain values (see docs/architecture.md).
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from fintech_operator import api
from fintech_operator.cards import http_tokenizer, lifecycle
from fintech_operator.cards import store as card_store
from fintech_operator.cards import tokenizer as tokenizers
from fintech_operator.compliance import lists, rules
from fintech_operator.compliance import model as compliance_model
from fintech_operator.events import schema
from fintech_operator.ledger import engine, model
from fintech_operator.ledger import rules as ledger_rules
from fintech_operator.observability import tracing
from fintech_operator.risk import engine as risk_engine
from fintech_operator.risk import model as risk_model

# A sanctions list that cannot be read is retried this often before the card is held for review.
SCREENING_RETRIES_MAX: Final = 3
SCREENING_RETRY_DELAY_SECONDS: Final = 2.0
# The card processor being down is retried with exponential backoff, capped: a card waits in
# Pending (reason WaitingForProcessor) and is issued once it answers again.
TOKENIZER_BACKOFF_BASE_SECONDS: Final = 2.0
TOKENIZER_BACKOFF_MAX_SECONDS: Final = 60.0
WAITING_FOR_PROCESSOR: Final = "WaitingForProcessor"


# --- Commands -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardRef:
    """Which card, and which generation of its spec, a command is about."""

    namespace: str
    name: str
    uid: str
    generation: int
    created: datetime.datetime  # metadata.creationTimestamp: the fee's time, stable on retry

    @property
    def subject(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class IssueCard:
    """Assess a card and act on the verdict. ``user_cards`` is how many cards its user
    already holds (``lifecycle.user_cards``); ``attempt`` counts earlier tries (0 first)."""

    card: CardRef
    spec: api.CardSpec
    product: api.CardProductSpec
    risk_policy: risk_model.Policy
    compliance_policy: compliance_model.Policy
    user_cards: int
    attempt: int


@dataclass(frozen=True)
class OpenCard:
    """Issue a card without assessing it again (a reviewer approved it)."""

    card: CardRef
    spec: api.CardSpec
    product: api.CardProductSpec
    attempt: int


@dataclass(frozen=True)
class RejectCard:
    """Refuse a card before anything was assessed; ``spec`` is None when it did not parse."""

    card: CardRef
    reason: str
    message: str
    spec: api.CardSpec | None


# --- Outcomes -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Assessment:
    """The recorded risk decision and compliance checks (a replay's are the first run's)."""

    risk: risk_model.Decision
    risk_record_id: int
    policy_ref: str
    checks: tuple[tuple[int, compliance_model.CheckResult], ...]


@dataclass(frozen=True)
class Issued:
    """The card is issued: what its committed ``card.issued`` event says."""

    account: str
    currency: str
    token: str
    last4: str
    issued_at: datetime.datetime
    phase: api.CardPhase  # Active or Frozen
    holds: tuple[int, int | None] | None  # (held, available) from the authorization mirror
    assessment: Assessment | None = None


@dataclass(frozen=True)
class Rejected:
    """A final refusal; its ``card.rejected`` event is committed."""

    reason: str
    message: str
    assessment: Assessment | None = None


@dataclass(frozen=True)
class HeldForReview:
    """A reviewer decides (CardReview); the ``card.review_requested`` event is committed."""

    reason: str
    message: str
    assessment: Assessment


@dataclass(frozen=True)
class Retry:
    """Try again after ``delay_seconds``. With a ``reason`` the wait is shown on the card
    (WaitingForProcessor); without one it is a short, silent retry (a sanctions list)."""

    delay_seconds: float
    why: str
    reason: str | None = None
    attempt: int = 1  # which try this was, for the log line (1 first)
    assessment: Assessment | None = None


Outcome = Issued | Rejected | HeldForReview | Retry


# --- Ports ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AssessmentRecord:
    """What :meth:`IssuanceStore.record_assessment` stores in one transaction: the risk
    assessment, each compliance check under its key, and ``events_of(verdict)``, the events
    of the verdict that follows from the RECORDED decisions."""

    risk: risk_model.Assessment
    policy_ref: str
    checks: tuple[tuple[str, compliance_model.CheckResult], ...]
    events_of: Callable[[lifecycle.Verdict], Sequence[model.OutboxEvent]]


@dataclass(frozen=True)
class CardIssuance:
    """The ledger's part (``engine.CardIssuance``) and what the authorization mirror keeps."""

    ledger: engine.CardIssuance
    event_id: uuid.UUID
    spec: api.CardSpec


@dataclass(frozen=True)
class Committed:
    """What the issuance's transaction committed: the event's token and the mirror's holds."""

    issued: card_store.Issued
    holds: tuple[int, int | None] | None


class IssuanceStore(Protocol):
    """The database, as issuance needs it."""

    async def account_owners(self, namespace: str, name: str) -> list[tuple[str, str | None]]:
        """(account code, owner uid) of every card account opened under the name."""
        ...

    async def recorded_issuance(self, event_id: uuid.UUID) -> card_store.Issued | None:
        """What the committed ``card.issued`` event says, or None before it."""
        ...

    async def record_assessment(
        self, record: AssessmentRecord
    ) -> tuple[Assessment, lifecycle.Verdict]: ...

    async def issue(self, issuance: CardIssuance) -> Committed:
        """One transaction; raises ``engine.AccountOwnedByAnotherCard`` when the name is taken."""
        ...

    async def write_events(self, events: Sequence[model.OutboxEvent]) -> None: ...


class SanctionsLists(Protocol):
    """Compiled sanctions lists (``compliance.lists.ListCache``)."""

    async def get(self, namespace: str, config_map: str, key: str) -> lists.Loaded: ...


@dataclass(frozen=True)
class Ports:
    store: IssuanceStore
    tokenizer: Callable[[], tokenizers.Tokenizer]  # built when first needed
    sanctions_lists: SanctionsLists
    clock: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.UTC)


# --- Use cases ------------------------------------------------------------------------------------


async def issue_card(command: IssueCard, ports: Ports) -> Outcome:
    """Risk and compliance for the card's current generation, recorded, then acted on."""
    card = command.card
    facts = risk_model.IssuanceFacts(
        holder_country=command.spec.holder.country, user_cards=command.user_cards
    )
    decision = risk_engine.assess_issuance(command.risk_policy, facts)
    screened = await _screen(command, ports.sanctions_lists)
    if isinstance(screened, Retry):
        return screened
    checks = [
        rules.check_kyc(command.compliance_policy, command.spec.holder.kyc_status.value),
        screened,
    ]
    base = f"card-issuance/{card.subject}/{card.uid}/g{card.generation}"
    record = AssessmentRecord(
        risk=risk_model.Assessment(
            idempotency_key=f"{base}/risk",
            subject_kind="CardIssuance",
            subject=card.subject,
            subject_uid=card.uid,
            decision=decision,
            inputs={"issuance": facts.to_json(), "userId": command.spec.user_id},
        ),
        policy_ref=command.compliance_policy.ref,
        checks=tuple((f"{base}/{check.kind.value}", check) for check in checks),
        events_of=lambda verdict: _verdict_events(command, verdict, ports.clock()),
    )
    assessment, verdict = await ports.store.record_assessment(record)
    if verdict.phase == api.CardPhase.REJECTED:
        return Rejected(verdict.reason, verdict.message, assessment)
    if verdict.phase == api.CardPhase.PENDING_REVIEW:
        return HeldForReview(verdict.reason, verdict.message, assessment)
    opened = await open_card(OpenCard(card, command.spec, command.product, command.attempt), ports)
    return dataclasses.replace(opened, assessment=assessment)


async def open_card(command: OpenCard, ports: Ports) -> Issued | Rejected | Retry:
    """Tokenize the card and write its issuance in one transaction.

    The processor refusing the card rejects it (``TokenizerRefused``, final); the processor
    being unavailable is a :class:`Retry` with backoff under the same idempotency key.
    """
    card = command.card
    reused = await refuse_reused_name(card, command.spec, ports)
    if reused is not None:
        return reused
    event_id = schema.lifecycle_event_id(schema.CARD_ISSUED, card.uid)
    try:
        token = await _token(command, ports, event_id)
    except http_tokenizer.TokenizerRefused as exc:
        return await _refuse(ports, card, command.spec, exc.reason, exc.message)
    except http_tokenizer.TokenizerUnavailable as exc:
        delay = min(
            TOKENIZER_BACKOFF_BASE_SECONDS * 2 ** min(command.attempt, 10),
            TOKENIZER_BACKOFF_MAX_SECONDS,
        )
        why = f"waiting for the card processor: {exc.message}"
        return Retry(delay, why, WAITING_FOR_PROCESSOR, command.attempt + 1)
    issuance = _issuance(command, token, event_id)
    try:
        committed = await ports.store.issue(issuance)
    except engine.AccountOwnedByAnotherCard as exc:
        taken = lifecycle.name_reused(
            card.namespace, card.name, card.uid, [(exc.code, exc.owner_uid)]
        )
        reason = lifecycle.NAME_REUSED if taken is None else taken.reason
        message = exc.message if taken is None else taken.message
        return await _refuse(ports, card, command.spec, reason, message)
    # What committed is what the outcome shows (house rule 6): the event's token.
    return Issued(
        account=issuance.ledger.account_code,
        currency=command.product.currency,
        token=committed.issued.token.token,
        last4=committed.issued.token.last4,
        issued_at=committed.issued.issued_at,
        phase=_phase(command.spec),
        holds=committed.holds,
    )


async def refuse_reused_name(card: CardRef, spec: api.CardSpec, ports: Ports) -> Rejected | None:
    """A refusal when the card's name already has a ledger account of another card.

    Checked before anything is assessed or tokenized; the issuance's transaction checks again
    (``engine.issue_card``), so nothing can slip between the two.
    """
    owners = await ports.store.account_owners(card.namespace, card.name)
    reused = lifecycle.name_reused(card.namespace, card.name, card.uid, owners)
    if reused is None:
        return None
    return await _refuse(ports, card, spec, reused.reason, reused.message)


async def reject_card(command: RejectCard, ports: Ports) -> Rejected:
    """Refuse a card before its assessment (InvalidSpec, ProductNotFound, a name reused)."""
    return await _refuse(ports, command.card, command.spec, command.reason, command.message)


# --- Steps ----------------------------------------------------------------------------------------


async def _screen(
    command: IssueCard, sanctions_lists: SanctionsLists
) -> compliance_model.CheckResult | Retry:
    """Screen the holder's name against the policy's list, failing closed to Review."""
    sanctions = command.compliance_policy.spec.sanctions
    if sanctions is None:
        return rules.sanctions_not_configured()
    namespace = command.card.namespace
    ref = f"configmap {namespace}/{sanctions.config_map}[{sanctions.key}]"
    try:
        loaded = await sanctions_lists.get(namespace, sanctions.config_map, sanctions.key)
    except lists.ListUnavailable as exc:
        if command.attempt < SCREENING_RETRIES_MAX:
            return Retry(SCREENING_RETRY_DELAY_SECONDS, exc.message, None, command.attempt + 1)
        return rules.sanctions_unavailable(exc.message, ref)
    return rules.check_sanctions(
        loaded.screener, command.spec.holder.name, sanctions.match_threshold_bps, loaded.ref
    )


async def _token(command: OpenCard, ports: Ports, event_id: uuid.UUID) -> card_store.Issued:
    """The token a committed ``card.issued`` event carries when an earlier attempt got that
    far (a retry must not issue a second card), else the processor's."""
    earlier = await ports.store.recorded_issuance(event_id)
    if earlier is not None:
        return earlier
    key = http_tokenizer.idempotency_key(command.card.uid)
    token = await ports.tokenizer().issue(command.card.subject, idempotency_key=key)
    return card_store.Issued(token=token, issued_at=ports.clock())


def _phase(spec: api.CardSpec) -> api.CardPhase:
    return api.CardPhase.FROZEN if spec.state is api.CardState.FROZEN else api.CardPhase.ACTIVE


def _issuance(command: OpenCard, token: card_store.Issued, event_id: uuid.UUID) -> CardIssuance:
    card, currency = command.card, command.product.currency
    event = schema.CardIssued(
        namespace=card.namespace,
        name=card.name,
        uid=card.uid,
        user_id=command.spec.user_id,
        product=command.spec.product,
        currency=currency,
        token=token.token.token,
        last4=token.token.last4,
        state=_phase(command.spec),
        issued_at=token.issued_at,
        headers=tracing.context_headers(),
    ).outbox()
    if event.event_id != event_id:
        raise model.InvariantViolation("card.issued event id is not the card's derived id")
    fee = command.product.issuance_fee
    return CardIssuance(
        ledger=engine.CardIssuance(
            namespace=card.namespace,
            card=card.name,
            card_uid=card.uid,
            currency=currency,
            frozen=_phase(command.spec) is api.CardPhase.FROZEN,
            fee=None if fee is None or fee.amount_minor <= 0 else _fee(card, fee, currency),
            events=(event,),
        ),
        event_id=event_id,
        spec=command.spec,
    )


def _fee(card: CardRef, fee: api.FeeAmount, currency: str) -> model.PostingRequest:
    """The product's issuance fee, keyed by the card's uid so it is charged once."""
    code = model.card_account_code(card.namespace, card.name, currency)
    return model.PostingRequest(
        idempotency_key=f"card-issuance-fee/{card.uid}",
        kind=model.PostingKind.FEE,
        lines=ledger_rules.lines_for(model.PostingKind.FEE, code, fee.amount_minor, currency),
        occurred_at=card.created,
        reference=f"issuance-fee/{card.namespace}/{card.name}",
        namespace=card.namespace,
    )


def _verdict_events(
    command: IssueCard, verdict: lifecycle.Verdict, now: datetime.datetime
) -> list[model.OutboxEvent]:
    """The event of an assessment's verdict; issuance writes its own with the account."""
    card, spec = command.card, command.spec
    if verdict.phase == api.CardPhase.REJECTED:
        return [_rejected_event(card, verdict.reason, verdict.message, spec, now)]
    if verdict.phase == api.CardPhase.PENDING_REVIEW:
        return [
            schema.CardReviewRequested(
                namespace=card.namespace, name=card.name, uid=card.uid,
                generation=card.generation, reason=verdict.reason, message=verdict.message,
                user_id=spec.user_id, product=spec.product, now=now,
                headers=tracing.context_headers(),
            ).outbox()
        ]  # fmt: skip
    return []


def _rejected_event(
    card: CardRef, reason: str, message: str, spec: api.CardSpec | None, now: datetime.datetime
) -> model.OutboxEvent:
    return schema.CardRejected(
        namespace=card.namespace,
        name=card.name,
        uid=card.uid,
        reason=reason,
        message=message,
        now=now,
        user_id=None if spec is None else spec.user_id,
        product=None if spec is None else spec.product,
        headers=tracing.context_headers(),
    ).outbox()


async def _refuse(
    ports: Ports, card: CardRef, spec: api.CardSpec | None, reason: str, message: str
) -> Rejected:
    """A final refusal: its ``card.rejected`` event first, then the outcome."""
    await ports.store.write_events([_rejected_event(card, reason, message, spec, ports.clock())])
    return Rejected(reason, message)
