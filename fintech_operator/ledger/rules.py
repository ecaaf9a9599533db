"""Pure posting rules: which lines each posting kind writes, spend windows, request hashes.

No I/O and no clock: ``now`` is always passed in, so every rule is tested without a server.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from fintech_operator.ledger import model

# For each kind: the card account's side, and the system account on the other side. The card
# account is the cardholder's receivable (debit-normal), so a debit raises what they owe.
#
# - Purchase: debit card, credit network_settlement (the issuer owes the network).
# - Refund: the reverse of a purchase.
# - Payment: debit cash, credit card (the cardholder paid down their balance).
# - Fee: debit card, credit fee_revenue.
# - Adjustment: debit card, credit adjustments. An adjustment in the cardholder's favour (a credit
#   to the card) is posted as explicit lines: ``validate_explicit`` accepts any balanced set.
_RULES: Final[Mapping[model.PostingKind, tuple[model.Direction, model.SystemAccount]]] = {
    model.PostingKind.PURCHASE: (model.Direction.DEBIT, model.SystemAccount.NETWORK_SETTLEMENT),
    model.PostingKind.REFUND: (model.Direction.CREDIT, model.SystemAccount.NETWORK_SETTLEMENT),
    model.PostingKind.PAYMENT: (model.Direction.CREDIT, model.SystemAccount.CASH),
    model.PostingKind.FEE: (model.Direction.DEBIT, model.SystemAccount.FEE_REVENUE),
    model.PostingKind.ADJUSTMENT: (model.Direction.DEBIT, model.SystemAccount.ADJUSTMENTS),
}

# Journal kinds whose debits to the guarded account count as spend against a limit. The running
# spend windows of migration 0054 count exactly these (Purchase): changing it needs a migration.
SPEND_KINDS: Final = frozenset({model.PostingKind.PURCHASE})

# Bumped whenever the canonical form below changes, so that old hashes never collide with new ones.
_HASH_VERSION: Final = 1


def lines_for(
    kind: model.PostingKind, card_account_code: str, amount_minor: int, currency: str
) -> tuple[model.Line, ...]:
    """The two lines a simple posting of ``kind`` writes against a card account."""
    rule = _RULES.get(model.as_enum(model.PostingKind, kind, "kind"))
    if rule is None:
        raise model.InvalidRequest(f"{kind} has no simple rule; reversals use reversal_lines")
    card_side, counterpart = rule
    system_code = model.system_account_code(counterpart, currency)
    return (
        model.Line(card_account_code, card_side, amount_minor, currency),
        model.Line(system_code, card_side.opposite(), amount_minor, currency),
    )


def validate_explicit(lines: Sequence[model.Line]) -> tuple[model.Line, ...]:
    """Check user-written lines (``Posting.spec.entries``): each line valid, all balanced."""
    if not all(isinstance(line, model.Line) for line in lines):
        raise model.InvalidRequest("explicit entries must be Line objects")
    checked = tuple(lines)
    model.check_balanced(checked)
    return checked


def reversal_lines(lines: Sequence[model.Line]) -> tuple[model.Line, ...]:
    """The same lines with every direction swapped: posted together they net to zero."""
    return tuple(
        model.Line(line.account_code, line.direction.opposite(), line.amount_minor, line.currency)
        for line in lines
    )


def spend_window_start(interval: model.SpendInterval, now: datetime) -> datetime | None:
    """Start of the spend window containing ``now``, in UTC; ``None`` means since the beginning.

    ``PerTransaction`` returns ``now``: nothing posted before this request counts.
    """
    moment = model.check_aware(now, "now").astimezone(UTC)
    match model.as_enum(model.SpendInterval, interval, "interval"):
        case model.SpendInterval.PER_TRANSACTION:
            return moment
        case model.SpendInterval.DAILY:
            return moment.replace(hour=0, minute=0, second=0, microsecond=0)
        case model.SpendInterval.MONTHLY:
            return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        case model.SpendInterval.LIFETIME:
            return None


def requested_spend(request: model.PostingRequest, account_code: str) -> int:
    """What this request adds to ``account_code``'s spend: its debits, for spend kinds only."""
    if request.kind not in SPEND_KINDS:
        return 0
    return sum(
        line.amount_minor
        for line in request.lines
        if line.account_code == account_code and line.direction is model.Direction.DEBIT
    )


def check_spend(guard: model.SpendGuard, spent_minor: int, requested_minor: int) -> None:
    """Raise :class:`model.SpendLimitExceeded` when spent + requested would pass the limit.

    ``spent_minor`` is what the window already counts: the Purchase debits posted in it plus
    what the card's pending real-time authorizations hold, so the message says "spent or held"
    (a card with nothing posted but a large hold would otherwise read as overspent).
    """
    if spent_minor + requested_minor <= guard.limit_minor:
        return
    raise model.SpendLimitExceeded(
        f"{guard.interval} limit {guard.limit_minor} of {guard.account_code}: "
        f"{spent_minor} spent or held, {requested_minor} requested",
        limit_minor=guard.limit_minor,
        spent_minor=spent_minor,
        requested_minor=requested_minor,
    )


def request_hash(request: model.PostingRequest) -> str:
    """SHA-256 of the canonical JSON of what the journal records.

    Lines are sorted, so their order does not change the hash; times are normalised to UTC with
    microseconds (PostgreSQL's precision). ``events`` and ``guard`` are left out on purpose: see
    :class:`model.PostingRequest`.
    """
    return _sha256_json(
        {
            "v": _HASH_VERSION,
            "kind": request.kind.value,
            "lines": sorted(_line_json(line) for line in request.lines),
            "reference": request.reference,
            "occurred_at": _utc_iso(request.occurred_at),
            "metadata": request.metadata,
        }
    )


def reversal_request_hash(journal_id: int, reason: str) -> str:
    """The hash of a reversal request: which journal, and why."""
    return _sha256_json({"v": _HASH_VERSION, "reverses": journal_id, "reason": reason})


def _line_json(line: model.Line) -> list[object]:
    return [line.account_code, line.direction.value, line.currency, line.amount_minor]


def _utc_iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def _sha256_json(value: object) -> str:
    canonical = json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )
    return hashlib.sha256(canonical.encode()).hexdigest()
