"""Posting: decode the object, call ``app.posting`` (Post or Reverse), render the status.

A posting is decided exactly once: ``Posted`` with its journal, or ``Rejected`` with a
reason from the fixed set documented on ``PostingStatus.reason``; the workflow and its
idempotency (one key per namespace, the ledger's request hash) are in
:mod:`fintech_operator.app.posting`. What this module adds is kopf's: the postings index,
what the card and product indexes know, waiting for a card, Events and the status patch,
written through ``api.PostingStatus``.

The decision itself is queued (issue 14, :mod:`fintech_operator.app.posting_queue`): the
handler submits its command behind the earlier postings of the same card and waits for the
outcome, which a worker decides in a batch with other postings (one transaction, a savepoint
each). The handler then renders it as before, so a posting still gets one status patch, the
one kopf writes when the handler returns, and one Event.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any, Final

import kopf
import pydantic

from fintech_operator import api, kube, posting_rules
from fintech_operator.app import posting as use_case
from fintech_operator.app import posting_queue
from fintech_operator.compliance import policy as compliance_policy
from fintech_operator.handlers import indexes, report, wiring
from fintech_operator.handlers.context import OperatorMemo
from fintech_operator.observability import metrics
from fintech_operator.risk import policy as risk_policy

if TYPE_CHECKING:
    from fintech_operator import config

DECIDED_PHASES: Final = frozenset({api.PostingPhase.POSTED, api.PostingPhase.REJECTED})
# A posting refused by a full queue (FINTECH_POSTING_QUEUE_MAX) is retried after this long.
QUEUE_FULL_DELAY_SECONDS: Final = 5.0


def postings(
    namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[Any, Any]:
    """What a reversal needs of the posting it names: its journal, phase and explicit key."""
    entry = {"journalId": status.get("journalId"), "phase": status.get("phase")}
    key = spec.get("idempotencyKey")
    if key:
        entry["key"] = key
    return {(namespace, name): entry}


def _ref(body: kopf.Body) -> use_case.PostingRef:
    meta = body.metadata
    return use_case.PostingRef(
        namespace=report.namespace_of(meta.namespace),
        name=str(meta.name),
        uid=None if meta.uid is None else str(meta.uid),
        created=api.parse_timestamp(str(meta.get("creationTimestamp"))),
    )


def _card(cards: kopf.Index[Any, Any], namespace: str, name: str) -> use_case.CardView | None:
    """What the cards index knows of the posting's card; None when it knows no such card."""
    card: dict[str, Any] | None = indexes.first(cards, (namespace, name))
    if card is None:
        return None
    return use_case.CardView(
        phase=card.get("phase"),
        account=str(card.get("account")),
        currency=card.get("currency"),
        spend_limit=card.get("spendLimit"),
    )


def _product(
    cards: kopf.Index[Any, Any], products: kopf.Index[Any, Any], namespace: str, card: str
) -> use_case.ProductView:
    """The card's product's terms (an unknown product: none, as before it was indexed)."""
    entry: dict[str, Any] = indexes.first(cards, (namespace, card)) or {}
    key = (str(entry.get("namespace")), str(entry.get("product")))
    found: dict[str, Any] = indexes.first(products, key) or {}
    return use_case.ProductView(
        rewards_rate_bps=int(found.get("rewardsRateBps", 0)),
        earn_on=tuple(found.get("earnOn") or ["Purchase"]),
        spend_limit=found.get("spendLimit"),
    )


def _target(postings_: kopf.Index[Any, Any], namespace: str, name: str) -> use_case.Target:
    entry = indexes.first(postings_, (namespace, name))
    if entry is None:
        return use_case.Target(exists=False)
    found, key = entry.get("journalId"), entry.get("key")
    return use_case.Target(
        exists=True,
        journal_id=int(found) if found else None,
        phase=entry.get("phase"),
        key=str(key) if key else None,
    )


def _command(
    body: kopf.Body, spec: api.PostingSpec, retry: int, memo: OperatorMemo, indexes_: dict[str, Any]
) -> use_case.Post | use_case.Reverse:
    """The use case's command from the object and what kopf's indexes know."""
    ref, cards = _ref(body), indexes_["cards"]
    card, limit = _card(cards, ref.namespace, spec.card), memo.settings.cards.missing_retries_max
    if spec.reverses:
        target = _target(indexes_["postings"], ref.namespace, spec.reverses)
        return use_case.Reverse(ref, spec, card, target, retry, limit)
    return use_case.Post(
        posting=ref,
        spec=spec,
        card=card,
        product=_product(cards, indexes_["cardproducts"], ref.namespace, spec.card),
        risk_policy=risk_policy.select(indexes_["riskpolicies"], ref.namespace),
        compliance_policy=compliance_policy.select(indexes_["compliancepolicies"], ref.namespace),
        attempt=retry,
        attempts_max=limit,
    )


async def post(
    body: kopf.Body,
    spec: kopf.Spec,
    patch: kopf.Patch,
    retry: int,
    memo: OperatorMemo,
    **kwargs: Any,
) -> None:
    if body.status.get("phase") in DECIDED_PHASES:
        return
    try:
        posting = api.PostingSpec.model_validate(dict(spec))
    except pydantic.ValidationError as exc:
        report.reject(body, patch, api.PostingReason.INVALID_SPEC, api.format_validation_error(exc))
        return
    command = _command(body, posting, retry, memo, kwargs)
    queue: posting_queue.PostingQueue = memo.posting_queue
    try:
        outcome = await queue.submit((command.posting.namespace, posting.card), command)
    except posting_queue.QueueFull as exc:
        raise kopf.TemporaryError(
            f"{report.WAIT_PREFIX}{exc}; retrying in {QUEUE_FULL_DELAY_SECONDS:.0f} s",
            delay=QUEUE_FULL_DELAY_SECONDS,
        ) from exc
    except posting_queue.Stopped as exc:
        raise kopf.TemporaryError(f"{report.WAIT_PREFIX}{exc}", delay=1) from exc
    _render(body, patch, outcome)


def _render(body: kopf.Body, patch: kopf.Patch, outcome: use_case.Outcome) -> None:
    if isinstance(outcome, use_case.WaitingForCard):
        wait = report.Wait(
            report.WAITING_FOR_CARD, outcome.message, outcome.attempt, outcome.delay_seconds
        )
        raise report.waiting(body, patch, wait)
    if isinstance(outcome, use_case.WaitingForOriginal):
        wait = report.Wait(
            report.WAITING_FOR_ORIGINAL, outcome.message, outcome.attempt, outcome.delay_seconds
        )
        raise report.waiting(body, patch, wait)
    if isinstance(outcome, use_case.Rejected):
        if outcome.risk is not None:
            report.write_status(patch, api.PostingStatus(risk=outcome.risk))
        report.reject(body, patch, outcome.reason, outcome.message)
        return
    journal, replayed = outcome.journal, isinstance(outcome, use_case.Replayed)
    generation = int(body.metadata.get("generation") or 0)
    replay = " (replayed: the idempotency key had already posted)" if replayed else ""
    message = f"journal {journal.id}{replay}"
    status = api.PostingStatus(
        phase=api.PostingPhase.POSTED,
        journal_id=str(journal.id),
        posted_at=journal.posted_at,
        reason=None,  # a wait for the card, shown before, is over
        message=None,
        conditions=report.conditions(
            body.status, api.READY, True, api.PostingPhase.POSTED, message, generation
        ),
        observed_generation=generation,
    )
    if isinstance(outcome, use_case.Posted) and outcome.risk is not None:
        status = status.model_copy(update={"risk": outcome.risk})
    report.write_status(patch, status)
    kopf.info(body, reason="Posted", message=message)
    risk = outcome.risk if isinstance(outcome, use_case.Posted) else None
    if risk is not None and risk.decision == RISK_REVIEW:
        # Posted (the merchant already has it) but flagged: docs/cards.md promises the record
        # and an Event make it visible, and a Normal "journal N" said nothing of the review.
        why = "; ".join(risk.details) or ", ".join(risk.reasons) or "the risk policy asked"
        kopf.warn(
            body, reason="RiskReview", message=f"{message} posted, flagged for review: {why}"[:1024]
        )
    metrics.posting_decided(body.get("spec"), "replayed" if replayed else "posted")


# The risk decision of a posting that is posted but flagged (docs/cards.md, "RiskPolicy").
RISK_REVIEW = "Review"
# Long TTLs are re-checked at least this often, so a clock step cannot strand an object.
TTL_RECHECK_MAX_SECONDS = 3600.0


def _finished_at(status: kopf.Status) -> datetime.datetime | None:
    ready = api.find_condition(api.conditions_from_status(status.get("conditions")), api.READY)
    return None if ready is None else ready.last_transition_time


def _has_ttl(spec: kopf.Spec, **_: Any) -> bool:
    return spec.get("ttlSecondsAfterFinished") is not None


# A creation handler that retries until the TTL runs out, rather than a timer: kopf
# persists its retry schedule in status.kopf (it survives restarts), and it runs right
# after `post` on the same object, so no per-object timer has to be spawned and kept.
async def expire(
    body: kopf.Body, spec: kopf.Spec, namespace: str | None, name: str, uid: str, **_: Any
) -> None:
    """Delete a finished posting after its TTL, like a Job; the ledger keeps the journal."""
    if body.status.get("phase") not in DECIDED_PHASES:
        # `post` decided it in this same cycle; its status arrives with the next event.
        raise kopf.TemporaryError(f"{report.WAIT_PREFIX}not finished yet; TTL starts when it is",
                                  delay=1)  # fmt: skip
    remaining = posting_rules.ttl_remaining_seconds(
        _finished_at(body.status), spec.get("ttlSecondsAfterFinished"), report.now()
    )
    if remaining > 0:
        raise kopf.TemporaryError(f"{report.WAIT_PREFIX}expires in {remaining:.0f}s "
                                  "(ttlSecondsAfterFinished)",
                                  delay=min(remaining, TTL_RECHECK_MAX_SECONDS))  # fmt: skip
    await kube.delete("postings", report.namespace_of(namespace), name, uid)


def register(registry: kopf.OperatorRegistry, settings: config.Settings) -> None:
    """Add the Posting index and handlers to ``registry`` (see ``handlers.register``)."""
    kopf.index(api.GROUP, api.VERSION, "postings", registry=registry)(postings)
    wiring.on_new(registry, "postings", post)
    wiring.on_new(registry, "postings", expire, when=_has_ttl)
