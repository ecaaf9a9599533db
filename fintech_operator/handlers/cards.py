"""Card: decode the object, call the card use cases (``fintech_operator.app``), render status.

The lifecycle and what decides each step are in :mod:`fintech_operator.cards.lifecycle` and
``docs/cards.md``; the workflows are :mod:`fintech_operator.app.issuance` (assess, issue,
reject) and :mod:`fintech_operator.app.card_state` (freeze, unfreeze, close, delete). Each
decision's event is committed by the use case before it returns, so the status patched here
is always of a committed decision; a retried handler finds the recorded decision and writes
nothing twice. What this module adds is kopf's: indexes, waiting for a product, Events and
the status patch, written through ``api.CardStatus``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Final

import kopf
import psycopg
import pydantic

from fintech_operator import api
from fintech_operator.app import card_state, issuance, stores
from fintech_operator.cards import http_tokenizer, lifecycle
from fintech_operator.compliance import lists
from fintech_operator.compliance import model as compliance_model
from fintech_operator.compliance import policy as compliance_policy
from fintech_operator.handlers import indexes, report
from fintech_operator.handlers.context import OperatorMemo
from fintech_operator.risk import policy as risk_policy

if TYPE_CHECKING:
    from fintech_operator import config

log = logging.getLogger(__name__)
DECIDED_PHASES: Final = frozenset(set(api.CardPhase) - {api.CardPhase.PENDING})
# The Warning on a card whose ledger freeze was made to follow its spec again (at the
# operator's start, or by the namespace's card refresh).
LEDGER_STATE_REPAIRED: Final = "LedgerStateRepaired"
ISSUED_PHASES: Final = lifecycle.ISSUED_PHASES
TEMPORARY_DELAY_SECONDS: Final = 2.0
# How often the cards in PendingReview look for a recorded CardReview (one timer per namespace).
REVIEW_POLL_INTERVAL_SECONDS: Final = 2.0
# Deleting a card waits at most this many attempts (about a minute) for the database; then the
# finalizer is released anyway and the account is left open: the finalizer never blocks forever.
DELETE_RETRIES_MAX: Final = 6
DELETE_RETRY_DELAY_SECONDS: Final = 10.0
ALERT_EVENTS_PER_REFRESH_MAX: Final = 20
# Sanctions lists, compiled once per ConfigMap version and shared by every card and policy.
LISTS: Final = lists.ListCache(lists.fetch_configmap)
Conditions = list[dict[str, Any]]


def normal_event(body: kopf.Body, reason: str, message: str) -> None:
    """A Normal Event on the object.

    Not ``kopf.info``: the operator posts kopf's own events only from WARNING up (see runtime),
    and ``kopf.info`` obeys that level too, so a user would never see issuance or closing.
    """
    kopf.event(body, type="Normal", reason=reason, message=message[:1024])


def decided(body: kopf.Body, **_: Any) -> bool:
    """True once the card is decided (any phase but Pending): the ``when`` of every Card
    handler. kopf stores no state at all for an object none of its handlers match, so the
    undecided cards are the card queue's alone (``card_queue``), and the decided ones have a
    handler only when something changes."""
    return (body.get("status") or {}).get("phase") in DECIDED_PHASES


def _generation(body: kopf.Body) -> int:
    return int(body.metadata.get("generation") or 0)


def _ref(body: kopf.Body) -> issuance.CardRef:
    """The card a command is about, from the object's metadata."""
    meta = body.metadata
    return issuance.CardRef(
        namespace=report.namespace_of(meta.namespace),
        name=str(meta.name),
        uid=str(meta.uid),
        generation=_generation(body),
        created=api.parse_timestamp(str(meta.get("creationTimestamp"))),
    )


def issued_card(body: kopf.Body) -> card_state.IssuedCard:
    """The card as its status shows it, for the state use cases."""
    account = body.status.get("account")
    return card_state.IssuedCard(
        namespace=str(body.metadata.namespace),
        name=str(body.metadata.name),
        uid=str(body.metadata.uid),
        generation=_generation(body),
        phase=body.status.get("phase"),
        account=None if not account else str(account),
    )


def _ports(memo: OperatorMemo) -> issuance.Ports:
    return issuance.Ports(
        store=stores.Cards(memo.pool),
        tokenizer=lambda: http_tokenizer.from_settings(memo.settings),
        sanctions_lists=LISTS,
    )


# --- Indexes --------------------------------------------------------------------------------------


def cards_by_user(
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    **_: Any,
) -> dict[Any, Any]:
    """(namespace, userId) -> (name, phase, created) of each of the user's cards, for the
    MaxCardsPerUser rule; a tuple, not a dict: kopf keeps one per card (issue 14)."""
    created = str(meta.get("creationTimestamp") or "")
    return {(namespace, spec.get("userId")): (name, status.get("phase"), created)}


# --- Issuance -------------------------------------------------------------------------------------


def _product_or_retry(
    body: kopf.Body,
    patch: kopf.Patch,
    products: kopf.Index[Any, Any],
    key: tuple[str, str],
    retry: int,
    limit: int,
) -> api.CardProductSpec | None:
    """The product's terms; a miss is a wait shown on the card (the product may be applied in
    the same batch), then, after ``limit`` retries, None: the caller rejects the card."""
    namespace, name = key
    raw = indexes.first(products, key)
    if raw is None:
        if retry < limit:
            message = (
                f"waiting for card product {name!r} in {namespace}: it does not exist; the card "
                f"is rejected (ProductNotFound) if it does not appear within about "
                f"{limit * TEMPORARY_DELAY_SECONDS:.0f} s"
            )
            attempt = f"{retry + 1} of {limit}"
            wait = report.Wait(
                report.WAITING_FOR_PRODUCT, message, attempt, TEMPORARY_DELAY_SECONDS
            )
            raise report.waiting(body, patch, wait)
        return None
    return api.CardProductSpec.model_validate(raw)


async def issue(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    retry: int,
    memo: OperatorMemo,
    **kwargs: Any,
) -> None:
    """Assess a new card and issue it, hold it for review, or reject it.

    Called by the card queue's workers (``card_queue``) as kopf called a handler: the status
    goes into ``patch``, a wait is raised as ``kopf.TemporaryError``; ``kwargs`` are the
    indexes kopf hands to handlers.
    """
    ref, ports = _ref(body), _ports(memo)
    card = await _spec_or_reject(body, spec, patch, ports)
    if card is None:
        return
    if card.state is api.CardState.CLOSED:
        await _change_state(body, patch, memo, api.CardState.CLOSED)
        return
    reused = await issuance.refuse_reused_name(ref, card, ports)
    if reused is not None:
        _render_issuance(body, patch, reused, None)
        return
    limit = memo.settings.cards.missing_retries_max
    product = _product_or_retry(
        body, patch, kwargs["cardproducts"], (ref.namespace, card.product), retry, limit
    )
    if product is None:
        message = f"card product {card.product!r} does not exist in {ref.namespace}"
        reason = api.CardReason.PRODUCT_NOT_FOUND
        await _reject(body, patch, ports, issuance.RejectCard(ref, reason, message, card))
        return
    await _assess(body, patch, ports, issuance.OpenCard(ref, card, product, retry), kwargs)


async def resume(body: kopf.Body, spec: kopf.Spec, memo: OperatorMemo) -> None:
    """A decided card seen again (at start): an issued one's freeze follows it when its status
    shows its spec's state, and its mirror follows it. The card queue calls it for each issued
    card kopf lists at start."""
    if body.status.get("phase") not in ISSUED_PHASES:
        return  # a Rejected card's spec may not even parse: nothing to follow
    token = body.status.get("token")
    outcome = await card_state.resume_card(
        issued_card(body),
        None if not token else str(token),
        _spec_or_warning(body, spec) if token else None,
        stores.Cards(memo.pool),
        spec_state=spec.get("state"),
    )
    if isinstance(outcome, card_state.AccountMissing):
        kopf.warn(body, reason="AccountMissing", message=outcome.message)
    elif isinstance(outcome, card_state.FreezeRepaired):
        announce_freeze_repaired(body, outcome.message)


def announce_freeze_repaired(body: kopf.Body, message: str) -> None:
    """A repair of the card's ledger freeze (at start, or by the namespace's card refresh):
    a log line and a Warning on the card."""
    log.warning("card %s/%s: %s", body.metadata.namespace, body.metadata.name, message)
    kopf.warn(body, reason=LEDGER_STATE_REPAIRED, message=message)


async def _reject(
    body: kopf.Body, patch: kopf.Patch, ports: issuance.Ports, command: issuance.RejectCard
) -> None:
    _render_issuance(body, patch, await issuance.reject_card(command, ports), None)


# A card stored before a schema rule it now breaks (an upgrade's stricter CEL rule: the API
# server keeps such objects, and with validation ratcheting even lets them be edited) would make
# every handler that parses its spec raise, and kopf would retry it forever with a traceback.
# Instead, one that is not issued yet ends Rejected InvalidSpec, as a new one would; an issued
# one, which has an account and money, keeps its phase and says what to fix in a Warning.


async def _spec_or_reject(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, ports: issuance.Ports
) -> api.CardSpec | None:
    """The card's spec, or None once the card is Rejected InvalidSpec naming the field."""
    try:
        return api.CardSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        reason, message = api.CardReason.INVALID_SPEC, api.format_validation_error(exc)
        await _reject(body, patch, ports, issuance.RejectCard(_ref(body), reason, message, None))
        return None


def _spec_or_warning(body: kopf.Body, spec: kopf.Spec) -> api.CardSpec | None:
    """An issued card's spec, or None with a Warning ``InvalidSpec`` naming the field (the
    message never repeats the value: it may be the card number the rule keeps out)."""
    try:
        return api.CardSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        message = api.format_validation_error(exc)
        kopf.warn(body, reason=api.CardReason.INVALID_SPEC, message=message[:1024])
        log.warning(
            "an issued card's spec does not parse: left as it is",
            extra={"card": f"{body.metadata.namespace}/{body.metadata.name}", "error": message},
        )
        return None


async def _assess(
    body: kopf.Body,
    patch: kopf.Patch,
    ports: issuance.Ports,
    card: issuance.OpenCard,
    indexes_: dict[str, Any],
) -> None:
    """Decode what the indexes know (policies, the user's cards), then issue the card."""
    namespace, name = card.card.namespace, card.card.name
    owned = [
        {"name": other, "phase": phase, "created": created}
        for other, phase, created in indexes_["cards_by_user"].get((namespace, card.spec.user_id))
        or ()
    ]
    command = issuance.IssueCard(
        card=card.card,
        spec=card.spec,
        product=card.product,
        risk_policy=risk_policy.select(indexes_["riskpolicies"], namespace),
        compliance_policy=compliance_policy.select(indexes_["compliancepolicies"], namespace),
        user_cards=lifecycle.user_cards(
            owned, name, str(body.metadata.get("creationTimestamp") or "")
        ),
        attempt=card.attempt,
    )
    _render_issuance(body, patch, await issuance.issue_card(command, ports), None)


def _render_issuance(
    body: kopf.Body, patch: kopf.Patch, outcome: issuance.Outcome, conditions: Conditions | None
) -> None:
    """The status (and Events) of an issuance's outcome; ``conditions`` are laid under it."""
    if outcome.assessment is not None:
        conditions = _show_assessment(body, patch, outcome.assessment)
    if isinstance(outcome, issuance.Issued):
        _show_issued(body, patch, outcome, conditions or [])
    elif isinstance(outcome, issuance.Rejected):
        report.reject(body, patch, outcome.reason, outcome.message)
        if conditions is not None:
            merged = _merge(conditions, patch.status["conditions"])
            report.write_status(
                patch, api.CardStatus(conditions=api.conditions_from_status(merged))
            )
    elif isinstance(outcome, issuance.HeldForReview):
        _hold_for_review(body, patch, outcome, conditions or [])
    elif outcome.reason is None:
        raise kopf.TemporaryError(outcome.why, delay=outcome.delay_seconds)
    else:
        if conditions is not None:  # the assessment's, shown while it waits
            report.write_status(
                patch, api.CardStatus(conditions=api.conditions_from_status(conditions))
            )
        # A reviewed card keeps its phase: its review timer runs only while it is PendingReview.
        review = body.status.get("phase") == api.CardPhase.PENDING_REVIEW
        phase = api.CardPhase.PENDING_REVIEW if review else api.CardPhase.PENDING
        wait = report.Wait(
            outcome.reason, outcome.why, str(outcome.attempt), outcome.delay_seconds, phase
        )
        raise report.waiting(body, patch, wait)


def _show_assessment(
    body: kopf.Body, patch: kopf.Patch, assessment: issuance.Assessment
) -> Conditions:
    """``status.risk`` and ``status.compliance``; returns the assessment's conditions."""
    now = report.now()
    checks = [check for _, check in assessment.checks]
    report.write_status(
        patch,
        api.CardStatus(
            risk=lifecycle.risk_decision(assessment.risk, assessment.risk_record_id, now),
            compliance=lifecycle.compliance_decision(assessment.policy_ref, assessment.checks, now),
        ),
    )
    # A card that waits after its assessment (for the card processor, say) is tried again and
    # shows the same recorded assessment at each try: its Event is posted when the status does
    # not show that record yet, so the card gets one per assessment, not one per try.
    if (body.status.get("risk") or {}).get("recordId") != str(assessment.risk_record_id):
        normal_event(body, reason="RiskAssessed", message=assessment.risk.summary()[:1024])
    generation = _generation(body)
    conditions = report.condition(
        body.status,
        api.ConditionType.RISK_ASSESSED,
        True,
        assessment.risk.action.value,
        assessment.risk.summary(),
        generation,
    )
    worst = compliance_model.worst(checks)
    cleared = worst is None or worst.outcome is compliance_model.Outcome.CLEAR
    return report.condition(
        {"conditions": conditions},
        api.ConditionType.COMPLIANCE_CLEARED,
        cleared,
        api.CardReason.CLEARED if cleared or worst is None else worst.reason,
        "; ".join(f"{check.kind.value}: {check.detail}" for check in checks),
        generation,
    )


def _merge(base: Conditions, extra: Conditions) -> Conditions:
    """``base`` with the conditions of ``extra`` laid over it by type."""
    merged = {condition["type"]: condition for condition in base}
    merged.update({condition["type"]: condition for condition in extra})
    return list(merged.values())


def _hold_for_review(
    body: kopf.Body, patch: kopf.Patch, held: issuance.HeldForReview, conditions: Conditions
) -> None:
    generation = _generation(body)
    why = f"{held.message}; a reviewer decides with a CardReview (see docs/cards.md)"
    report.write_status(
        patch,
        api.CardStatus(
            phase=api.CardPhase.PENDING_REVIEW,
            reason=held.reason,
            message=why[:1024],
            conditions=report.conditions(
                {"conditions": conditions}, api.READY, False, held.reason, why, generation
            ),
            observed_generation=generation,
        ),
    )
    kopf.warn(body, reason="PendingReview", message=why[:1024])


def _show_issued(
    body: kopf.Body, patch: kopf.Patch, issued: issuance.Issued, conditions: Conditions
) -> None:
    generation = _generation(body)
    conditions = report.condition(
        {"conditions": conditions},
        api.ConditionType.LEDGER_ACCOUNT_OPENED,
        True,
        api.CardReason.OPENED,
        issued.account,
        generation,
    )
    conditions = report.condition(
        {"conditions": conditions},
        api.READY,
        True,
        api.CardReason.ISSUED,
        f"issued, last 4 {issued.last4}",
        generation,
    )
    report.write_status(
        patch,
        api.CardStatus(
            phase=issued.phase,
            token=issued.token,
            last4=issued.last4,
            account=issued.account,
            balance=api.Money(amount_minor=0, currency=issued.currency),
            rewards_points=0,
            issued_at=issued.issued_at.replace(microsecond=0),
            reason=None,
            message=None,
            conditions=api.conditions_from_status(conditions),
            observed_generation=generation,
        ),
    )
    if issued.holds is not None:  # in the same patch: the first refresh then has nothing to change
        show_holds(body, patch, issued.holds, issued.currency)
    normal_event(
        body, reason="Issued", message=f"card issued on {issued.account}, last 4 {issued.last4}"
    )


# --- Re-assessment and manual review --------------------------------------------------------------


async def holder_changed(
    body: kopf.Body, old: Any, spec: kopf.Spec, patch: kopf.Patch, memo: OperatorMemo, **kwargs: Any
) -> None:
    """A card waiting for review is assessed again when its holder changes (e.g. KYC done).

    A recorded review wins: once a reviewer decided, the new holder data changes nothing.
    """
    if old is None or body.status.get("phase") != api.CardPhase.PENDING_REVIEW:
        return
    ref, ports = _ref(body), _ports(memo)
    if await stores.Cards(memo.pool).find_review(ref.uid) is not None:
        return
    card = await _spec_or_reject(body, spec, patch, ports)
    if card is None:
        return
    product = indexes.first(kwargs["cardproducts"], (ref.namespace, card.product))
    if product is None:
        message, reason = f"card product {card.product!r} is gone", api.CardReason.PRODUCT_NOT_FOUND
        await _reject(body, patch, ports, issuance.RejectCard(ref, reason, message, card))
        return
    parsed = api.CardProductSpec.model_validate(product)
    await _assess(body, patch, ports, issuance.OpenCard(ref, card, parsed, kwargs["retry"]), kwargs)


async def apply_review(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, memo: OperatorMemo, **kwargs: Any
) -> None:
    """Apply the recorded CardReview of a card in PendingReview: issue it or reject it.

    Called for each card waiting for review by the namespace's timer
    (``card_refresh.apply_reviews``), not by a timer per card: kopf keeps the whole last-seen
    body of every object of a kind that has a timer, about 90 KiB of memory per card (issue 14).
    """
    ref, ports = _ref(body), _ports(memo)
    review = await stores.Cards(memo.pool).find_review(ref.uid)
    if review is None:
        return
    report.write_status(
        patch,
        api.CardStatus(
            review=api.ReviewRecord(
                decision=review.decision,
                reviewer=review.reviewer,
                comment=review.comment,
                card_review=review.review.split("/", 1)[1],
                reviewed_at=review.created_at.replace(microsecond=0),
            )
        ),
    )
    who = f"{review.decision} by {review.reviewer} (CardReview {review.review}): {review.comment}"
    card = await _spec_or_reject(body, spec, patch, ports)
    if card is None:
        return
    if review.decision != api.ReviewDecision.APPROVE.value:
        reason = api.CardReason.REVIEW_REJECTED
        await _reject(body, patch, ports, issuance.RejectCard(ref, reason, who, card))
        return
    normal_event(body, reason="ReviewApproved", message=who[:1024])
    product = indexes.first(kwargs["cardproducts"], (ref.namespace, card.product))
    if product is None:
        message, reason = f"card product {card.product!r} is gone", api.CardReason.PRODUCT_NOT_FOUND
        await _reject(body, patch, ports, issuance.RejectCard(ref, reason, message, card))
        return
    conditions = report.condition(
        body.status,
        api.ConditionType.COMPLIANCE_CLEARED,
        True,
        api.CardReason.REVIEW_APPROVED,
        who,
        ref.generation,
    )
    command = issuance.OpenCard(
        ref, card, api.CardProductSpec.model_validate(product), int(kwargs.get("retry") or 0)
    )
    _render_issuance(body, patch, await issuance.open_card(command, ports), conditions)


# --- State: freeze, unfreeze, close ---------------------------------------------------------------


async def state_changed(
    body: kopf.Body, old: Any, new: Any, patch: kopf.Patch, memo: OperatorMemo, **_: Any
) -> None:
    """Freeze, unfreeze or close a card when ``spec.state`` changes (creation is issue's job)."""
    phase = body.status.get("phase")
    if old is None or (phase not in ISSUED_PHASES and phase != api.CardPhase.PENDING_REVIEW):
        return  # a Pending card is issue's: it sees spec.state on its next try
    await _change_state(body, patch, memo, api.CardState(new))


async def _change_state(
    body: kopf.Body, patch: kopf.Patch, memo: OperatorMemo, to: api.CardState
) -> None:
    command = card_state.ChangeCardState(issued_card(body), to)
    outcome = await card_state.change_card_state(command, stores.Cards(memo.pool))
    _render_state(body, patch, outcome, announce=True)


async def spend_limit_changed(
    body: kopf.Body, spec: kopf.Spec, memo: OperatorMemo, **_: Any
) -> None:
    """A new spend limit reaches the real-time gateway's mirror (issue 13)."""
    if body.status.get("phase") not in ISSUED_PHASES:
        return  # not issued: its limit is mirrored with its issuance
    card = _spec_or_warning(body, spec)
    if card is None:
        return  # the mirror keeps the last limit that parsed
    await card_state.change_spend_limit(
        issued_card(body), card.spend_limit, stores.Cards(memo.pool)
    )


async def close(body: kopf.Body, patch: kopf.Patch, memo: OperatorMemo, *, announce: bool) -> None:
    """Close the card's account; while its balance is not zero, say why and keep the phase.

    The namespace's batched refresh (``card_refresh``) tries again, so closing completes by
    itself once the balance is zero.
    """
    command = card_state.ChangeCardState(issued_card(body), api.CardState.CLOSED)
    outcome = await card_state.close(command, stores.Cards(memo.pool))
    _render_state(body, patch, outcome, announce=announce)


def _render_state(
    body: kopf.Body, patch: kopf.Patch, outcome: card_state.Outcome, *, announce: bool
) -> None:
    generation = _generation(body)
    if isinstance(outcome, card_state.ClosingWaits):
        if announce or body.status.get("reason") != outcome.reason:
            kopf.warn(body, reason=outcome.reason, message=outcome.message)
        ready = report.conditions(
            body.status, api.READY, False, outcome.reason, outcome.message, generation
        )
        report.write_status(
            patch,
            api.CardStatus(reason=outcome.reason, message=outcome.message, conditions=ready),
        )
        return
    if isinstance(outcome, card_state.Unchanged):
        return
    closed = outcome.phase is api.CardPhase.CLOSED
    ready_reason = outcome.reason or outcome.phase.value
    status = api.CardStatus(
        phase=outcome.phase,
        observed_generation=generation,
        conditions=report.conditions(
            body.status, api.READY, not closed, ready_reason, outcome.message, generation
        ),
    )
    if closed:  # the phase's reason and message: ClosedBeforeIssue, or none
        reason, message = outcome.reason, None if outcome.reason is None else outcome.message
        status = status.model_copy(update={"reason": reason, "message": message})
        shown = body.status.get("balance")
        if isinstance(shown, dict) and shown.get("currency"):
            # A close needs a zero balance, and a Closed card is no longer refreshed: without
            # this, a card paid off just before its close kept showing the debt it no longer has.
            zero = api.Money(amount_minor=0, currency=str(shown["currency"]))
            status = status.model_copy(update={"balance": zero})
    report.write_status(patch, status)
    frozen, active = api.CardPhase.FROZEN, api.CardPhase.ACTIVE
    event = {frozen: "Frozen", active: "Unfrozen"}.get(outcome.phase, "Closed")
    what = f"card is now {outcome.phase.value}" if not closed else outcome.message
    normal_event(body, reason=event, message=what)


def show_holds(
    body: kopf.Body, patch: kopf.Patch, holds: tuple[int, int | None], currency: str
) -> None:
    """``status.held`` and ``status.available`` from the real-time mirror; only a change."""
    held, available = holds
    if (body.status.get("held") or {}).get("amount") != held:
        shown_held = api.Money(amount_minor=held, currency=currency)
        report.write_status(patch, api.CardStatus(held=shown_held))
    shown = (body.status.get("available") or {}).get("amount")
    if shown != available:
        left = None if available is None else api.Money(amount_minor=available, currency=currency)
        report.write_status(patch, api.CardStatus(available=left))


def announce_alerts(
    body: kopf.Body,
    patch: kopf.Patch,
    aml: dict[str, Any],
    alerts: list[compliance_model.Alert],
) -> None:
    """One warning Event per new AML alert; status.aml remembers the last one announced."""
    for alert in alerts:
        kopf.warn(
            body,
            reason="ComplianceAlert",
            message=(
                f"{alert.kind.value} on {alert.business_day}: {alert.posting_count} posting(s) "
                f"totalling {alert.total_minor} {alert.currency} (threshold "
                f"{alert.threshold_minor}, policy {alert.policy}); the posting was not blocked"
            ),
        )
    last = alerts[-1]
    report.write_status(
        patch,
        api.CardStatus(
            aml=api.card.AmlStatus(
                alerts=int(aml.get("alerts") or 0) + len(alerts),
                last_alert_id=str(last.id),
                last_alert=f"{last.kind.value} on {last.business_day}",
            )
        ),
    )


# --- Deletion -------------------------------------------------------------------------------------


async def delete(body: kopf.Body, retry: int, memo: OperatorMemo, **_: Any) -> None:
    """Close the card's ledger account, keeping its history; never block deletion for long.

    A balance that is not zero is a debt: the account stays open with its full history and the
    deletion goes ahead (the Event says so). A database outage is retried a bounded number of
    times, then the finalizer is released with a warning.
    """
    card = issued_card(body)
    try:
        outcome = await card_state.delete_card(card, stores.Cards(memo.pool))
    except (psycopg.Error, OSError) as exc:
        if retry < DELETE_RETRIES_MAX:
            raise kopf.TemporaryError(
                f"closing {card.account} failed: {exc}", delay=DELETE_RETRY_DELAY_SECONDS
            ) from exc
        kopf.warn(
            body,
            reason="AccountLeftOpen",
            message=f"gave up closing {card.account} after {retry} attempts ({exc}); the card "
            "is deleted and its account left open",
        )
        return
    if isinstance(outcome, card_state.AccountLeftOpen):
        kopf.warn(body, reason="AccountLeftOpen", message=outcome.message)
    elif isinstance(outcome, card_state.AccountClosed):
        message = f"account {outcome.account} closed; history kept"
        normal_event(body, reason="AccountClosed", message=message)


# --- Registration ---------------------------------------------------------------------------------


def register(registry: kopf.OperatorRegistry, settings: config.Settings) -> None:
    """Add the Card handlers to ``registry`` (see ``handlers.register``).

    Every one is for decided cards only (``when=decided``): a new card is the card queue's.
    """
    kopf.index(api.GROUP, api.VERSION, "cards", registry=registry)(cards_by_user)
    for field, fn in (
        ("spec.holder", holder_changed),
        ("spec.state", state_changed),
        ("spec.spendLimit", spend_limit_changed),
    ):
        kopf.on.field(
            api.GROUP, api.VERSION, "cards", field=field, when=decided, registry=registry
        )(fn)
    kopf.on.delete(api.GROUP, api.VERSION, "cards", when=decided, registry=registry)(delete)


__all__ = [
    "announce_alerts",
    "apply_review",
    "cards_by_user",
    "close",
    "decided",
    "delete",
    "holder_changed",
    "issue",
    "issued_card",
    "normal_event",
    "register",
    "resume",
    "show_holds",
    "spend_limit_changed",
    "state_changed",
]
