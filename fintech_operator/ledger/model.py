"""Pure types of the double-entry ledger: no I/O, no clock, no database.

Every money-carrying type checks its own invariants when it is built (Invariant 4: amounts are
``int`` minor units with an ISO 4217 currency), and a :class:`PostingRequest` refuses to exist
unless its lines balance per currency (Invariant 1). These checks are always on: they raise a
:class:`LedgerError` subclass and never use ``assert``, which ``python -O`` strips.

Errors carry a stable, CamelCase ``reason`` (shaped like a Kubernetes condition reason) that the
handlers copy into ``status.reason``. Every :class:`LedgerError` is a permanent decision about the
request: retrying the same request gives the same answer. Transient failures (connection loss,
timeouts, retries exhausted) are never a ``LedgerError``; they surface as ``psycopg.Error``.
"""

from __future__ import annotations

import enum
import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import ClassVar, Final, TypeVar

# Limits on everything (house rule 5). They bound what one request can make the database do.
AMOUNT_MINOR_MAX: Final = 10**15  # 10 trillion major units: far above any card amount.
LINES_MAX: Final = 64
EVENTS_MAX: Final = 16
# Idempotency keys, references, account codes, topics, reasons. A default key is
# ``<namespace>/<name>`` (63 + 1 + 253 characters) and a card code adds ``card:`` and ``:USD``.
KEY_LENGTH_MAX: Final = 512
METADATA_BYTES_MAX: Final = 16 * 1024

_CURRENCY_RE: Final = re.compile(r"[A-Z]{3}")
_NAME_RE: Final = re.compile(r"[^\s:/]+")
_CODE_PART_RE: Final = re.compile(r"[^\s:]+(?::[^\s:]+)*")


# --- Errors -------------------------------------------------------------------------------------


class LedgerError(Exception):
    """A permanent refusal of a ledger request; ``reason`` is stable and machine-readable."""

    reason: ClassVar[str] = "LedgerError"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(LedgerError):
    """The request is malformed: wrong types, out-of-range values, bad names."""

    reason = "InvalidRequest"


class InvalidAmount(InvalidRequest):
    """An amount is not a positive ``int`` of minor units within :data:`AMOUNT_MINOR_MAX`."""

    reason = "InvalidAmount"


class InvalidCurrency(InvalidRequest):
    """A currency is not three upper-case ASCII letters (ISO 4217 shape)."""

    reason = "InvalidCurrency"


class Unbalanced(InvalidRequest):
    """The lines do not balance per currency, or there are fewer than two."""

    reason = "Unbalanced"


class CurrencyMismatch(LedgerError):
    """A line's currency differs from its account's currency."""

    reason = "CurrencyMismatch"


class AccountNotFound(LedgerError):
    reason = "AccountNotFound"


class AccountClosed(LedgerError):
    reason = "AccountClosed"


class AccountFrozen(LedgerError):
    """A debit to a frozen card's account; a Posting shows it as CardNotActive."""

    reason = "AccountFrozen"


class AccountConflict(LedgerError):
    """An account code already exists with another currency, kind or normal balance."""

    reason = "AccountConflict"


class AccountNotEmpty(LedgerError):
    """An account cannot be closed while its balance is not zero."""

    reason = "AccountNotEmpty"


class IdempotencyConflict(LedgerError):
    """The idempotency key was already used by a different request (Invariant 3)."""

    reason = "IdempotencyConflict"


class JournalNotFound(LedgerError):
    reason = "JournalNotFound"


class AlreadyReversed(LedgerError):
    """A journal is reversed at most once; post a new journal to correct a reversal."""

    reason = "AlreadyReversed"


class NotReversible(LedgerError):
    """A reversal journal cannot itself be reversed: post the original again instead."""

    reason = "NotReversible"


class SpendLimitExceeded(LedgerError):
    reason = "SpendLimitExceeded"

    def __init__(self, message: str, *, limit_minor: int, spent_minor: int, requested_minor: int):
        super().__init__(message)
        self.limit_minor = limit_minor
        self.spent_minor = spent_minor
        self.requested_minor = requested_minor


class InvariantViolation(Exception):
    """The read-back after a write disagreed with what was written: a bug, never bad input.

    Deliberately not a :class:`LedgerError`: the request is not at fault, so it must not be
    rejected; the transaction was rolled back and the caller should fail loudly and retry.
    """

    reason: ClassVar[str] = "InvariantViolation"


# --- Enumerations -------------------------------------------------------------------------------


class Direction(enum.StrEnum):
    DEBIT = "debit"
    CREDIT = "credit"

    def opposite(self) -> Direction:
        return Direction.CREDIT if self is Direction.DEBIT else Direction.DEBIT


class PostingKind(enum.StrEnum):
    """Journal kinds; the values are the ``Posting.spec.type`` names of the API."""

    PURCHASE = "Purchase"
    REFUND = "Refund"
    PAYMENT = "Payment"
    FEE = "Fee"
    ADJUSTMENT = "Adjustment"
    REVERSAL = "Reversal"  # Made only by ``engine.reverse``; never requested directly.


class SpendInterval(enum.StrEnum):
    """The values are the ``Card.spec.spendLimit.interval`` names of the API."""

    PER_TRANSACTION = "PerTransaction"
    DAILY = "Daily"
    MONTHLY = "Monthly"
    LIFETIME = "Lifetime"


class AccountKind(enum.StrEnum):
    CARD = "card"
    SYSTEM = "system"


class AccountStatus(enum.StrEnum):
    OPEN = "open"
    CLOSED = "closed"


class SystemAccount(enum.StrEnum):
    """The issuer's own accounts, one per currency, opened on demand.

    Seen from the issuer's books:

    - ``network_settlement`` (credit-normal, liability): what the issuer owes the card network
      for purchases it cleared; refunds reduce it.
    - ``cash`` (debit-normal, asset): the issuer's bank cash; cardholder payments increase it.
    - ``fee_revenue`` (credit-normal, income): fees charged to cardholders.
    - ``rewards_expense`` (debit-normal, expense): the cost of rewards granted.
    - ``rewards_liability`` (credit-normal, liability): rewards owed to cardholders, not yet
      redeemed. An accrual debits ``rewards_expense`` and credits ``rewards_liability``.
    - ``adjustments`` (credit-normal): the counterpart of manual corrections. A credit balance is
      the net amount added to cardholders' debt by adjustments.
    """

    NETWORK_SETTLEMENT = "network_settlement"
    CASH = "cash"
    FEE_REVENUE = "fee_revenue"
    REWARDS_EXPENSE = "rewards_expense"
    REWARDS_LIABILITY = "rewards_liability"
    ADJUSTMENTS = "adjustments"


SYSTEM_NORMAL_BALANCE: Final[Mapping[SystemAccount, Direction]] = {
    SystemAccount.NETWORK_SETTLEMENT: Direction.CREDIT,
    SystemAccount.CASH: Direction.DEBIT,
    SystemAccount.FEE_REVENUE: Direction.CREDIT,
    SystemAccount.REWARDS_EXPENSE: Direction.DEBIT,
    SystemAccount.REWARDS_LIABILITY: Direction.CREDIT,
    SystemAccount.ADJUSTMENTS: Direction.CREDIT,
}

_SYSTEM_NAMES: Final = frozenset(account.value for account in SystemAccount)

# A card account is the cardholder's receivable: debit-normal, so its balance (debits - credits)
# is what the cardholder owes the issuer.
CARD_NORMAL_BALANCE: Final = Direction.DEBIT


# --- Leaf checks --------------------------------------------------------------------------------


def check_amount(amount_minor: object, what: str = "amount_minor") -> int:
    """Return ``amount_minor`` if it is a positive ``int`` of minor units, else raise.

    ``type(...) is int`` on purpose: ``bool`` is an ``int`` subclass, and floats, ``Decimal`` and
    numeric strings must never be accepted as money (Invariant 4).
    """
    if type(amount_minor) is not int:
        got = type(amount_minor).__name__
        raise InvalidAmount(f"{what} must be an int of minor units, got {got}")
    if not 0 < amount_minor <= AMOUNT_MINOR_MAX:
        raise InvalidAmount(f"{what} must be in 1..{AMOUNT_MINOR_MAX}, got {amount_minor}")
    return amount_minor


def check_currency(currency: object) -> str:
    if not isinstance(currency, str) or _CURRENCY_RE.fullmatch(currency) is None:
        raise InvalidCurrency(f"currency must be three upper-case letters, got {currency!r}")
    return currency


def check_text(value: object, what: str, *, length_max: int = KEY_LENGTH_MAX) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= length_max:
        raise InvalidRequest(f"{what} must be a non-empty string of at most {length_max} chars")
    if not value.isprintable():
        raise InvalidRequest(f"{what} must not contain control characters")
    return value


def check_aware(moment: object, what: str) -> datetime:
    """Naive datetimes are refused: a ledger must never guess a time zone."""
    if not isinstance(moment, datetime) or moment.utcoffset() is None:
        raise InvalidRequest(f"{what} must be a timezone-aware datetime")
    return moment


def check_json_object(value: object, what: str) -> Mapping[str, object]:
    """Refuse what cannot be stored as a JSON object (and so hashed canonically)."""
    if not isinstance(value, Mapping):
        raise InvalidRequest(f"{what} must be a mapping")
    try:
        encoded = json.dumps(value, sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidRequest(f"{what} is not JSON-serialisable: {exc}") from exc
    if len(encoded.encode()) > METADATA_BYTES_MAX:
        raise InvalidRequest(f"{what} is larger than {METADATA_BYTES_MAX} bytes")
    return value


def check_balanced(lines: Sequence[Line]) -> None:
    """Invariant 1: at least two lines, and debits equal credits in every currency."""
    if not 2 <= len(lines) <= LINES_MAX:
        raise Unbalanced(f"a journal needs 2..{LINES_MAX} lines, got {len(lines)}")
    net_by_currency: dict[str, int] = {}
    for line in lines:
        signed = line.amount_minor if line.direction is Direction.DEBIT else -line.amount_minor
        net_by_currency[line.currency] = net_by_currency.get(line.currency, 0) + signed
    unbalanced = {cur: net for cur, net in net_by_currency.items() if net != 0}
    if unbalanced:
        raise Unbalanced(f"debits minus credits must be 0 per currency, got {unbalanced}")


_E = TypeVar("_E", bound=enum.StrEnum)


def as_enum(kind: type[_E], value: object, what: str) -> _E:
    """Accept the enum or its string value (handlers pass API strings); else InvalidRequest."""
    if isinstance(value, str) and value in _values(kind):
        return kind(value)
    allowed = ", ".join(sorted(_values(kind)))
    raise InvalidRequest(f"{what} must be one of {allowed}, got {value!r}")


def _values(kind: type[enum.StrEnum]) -> frozenset[str]:
    return frozenset(member.value for member in kind)


# --- Account codes ------------------------------------------------------------------------------


def card_account_code(namespace: str, card: str, currency: str) -> str:
    """``card:<namespace>/<card>:<CUR>``: one receivable account per card and currency."""
    for part in (namespace, card):
        if not isinstance(part, str) or _NAME_RE.fullmatch(part) is None:
            raise InvalidRequest(f"card namespace and name must be non-empty names, got {part!r}")
    return account_code(AccountKind.CARD, f"{namespace}/{card}", currency)


def system_account_code(account: SystemAccount, currency: str) -> str:
    """``system:<name>:<CUR>``, for example ``system:network_settlement:USD``."""
    return account_code(AccountKind.SYSTEM, account.value, currency)


def account_code(kind: AccountKind, name: str, currency: str) -> str:
    if _CODE_PART_RE.fullmatch(name) is None:
        raise InvalidRequest(f"account name must have no spaces or empty parts, got {name!r}")
    return check_account_code(f"{kind.value}:{name}:{check_currency(currency)}", kind, currency)


def check_account_code(code: object, kind: AccountKind, currency: str) -> str:
    """An account code names its kind and currency: ``<kind>:<name>:<CUR>`` (checked in SQL too).

    Making the code self-describing means a code can never be reused for another currency.
    """
    text = check_text(code, "account code")
    prefix, suffix = f"{kind.value}:", f":{currency}"
    middle = text[len(prefix) : -len(suffix)]
    shaped = text.startswith(prefix) and text.endswith(suffix) and middle
    if not shaped or _CODE_PART_RE.fullmatch(middle) is None:
        raise InvalidRequest(f"account code must look like {prefix}<name>{suffix}, got {text!r}")
    return text


def card_namespace(code: str) -> str | None:
    """The namespace of a card account code (``card:<namespace>/<card>:<CUR>``), else None.

    Migration 0045 derives ``accounts.namespace`` from the code with the same rule.
    """
    parts = code.split(":")
    if len(parts) < 3 or parts[0] != AccountKind.CARD.value:
        return None
    namespace, slash, _card = parts[1].partition("/")
    return namespace if slash and namespace else None


def journal_namespace(declared: str | None, lines: Sequence[Line]) -> str | None:
    """Whose money a journal moves (DESIGN.md invariant 10): the one namespace of its card
    accounts, which must be ``declared`` when the caller names one. None: no card account
    and nothing declared (a journal between system accounts only)."""
    found = {ns for line in lines if (ns := card_namespace(line.account_code)) is not None}
    if declared is not None:
        if not isinstance(declared, str) or _NAME_RE.fullmatch(declared) is None:
            raise InvalidRequest(f"namespace must be a non-empty name, got {declared!r}")
        found.add(declared)
    if len(found) > 1:
        raise InvalidRequest(
            f"a journal moves one namespace's money, not that of {', '.join(sorted(found))}"
        )
    return next(iter(found), None)


def parse_system_code(code: str) -> tuple[SystemAccount, str] | None:
    """Return (account, currency) when ``code`` names a well-known system account."""
    parts = code.split(":")
    if len(parts) != 3 or parts[0] != AccountKind.SYSTEM.value:
        return None
    if parts[1] not in _SYSTEM_NAMES or _CURRENCY_RE.fullmatch(parts[2]) is None:
        return None
    return SystemAccount(parts[1]), parts[2]


# --- Requests -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One side of a journal: ``amount_minor`` of ``currency`` debited or credited to an account."""

    account_code: str
    direction: Direction
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        check_text(self.account_code, "account_code")
        object.__setattr__(self, "direction", as_enum(Direction, self.direction, "direction"))
        check_amount(self.amount_minor)
        check_currency(self.currency)


@dataclass(frozen=True)
class SpendGuard:
    """Refuse the posting when the guarded account's spend in the window would exceed the limit.

    Spend counts the debits of ``Purchase`` journals to ``account_code`` posted since the window
    start and not reversed (see ``rules.SPEND_KINDS``). Refunds do not restore the limit, as with
    most issuers; a reversal does, because the reversed purchase never happened.
    ``now`` fixes the window (``rules.spend_window_start``); windows are in UTC.
    """

    account_code: str
    limit_minor: int
    interval: SpendInterval
    now: datetime

    def __post_init__(self) -> None:
        check_text(self.account_code, "guard account_code")
        if type(self.limit_minor) is not int or not 0 <= self.limit_minor <= AMOUNT_MINOR_MAX:
            raise InvalidAmount(f"limit_minor must be an int in 0..{AMOUNT_MINOR_MAX}")
        object.__setattr__(self, "interval", as_enum(SpendInterval, self.interval, "interval"))
        check_aware(self.now, "guard now")


@dataclass(frozen=True)
class OutboxEvent:
    """An event written to the outbox in the posting's transaction (Invariant 5).

    ``event_id`` must be unique forever: consumers de-duplicate on it. The outbox row also records
    the journal id, which the caller cannot know when it builds the event.
    """

    event_id: uuid.UUID
    topic: str
    key: str | None
    payload: Mapping[str, object]
    headers: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.event_id, uuid.UUID):
            raise InvalidRequest("event_id must be a uuid.UUID")
        check_text(self.topic, "topic")
        if self.key is not None:
            check_text(self.key, "event key")
        check_json_object(self.payload, "event payload")
        headers = check_json_object(self.headers, "event headers")
        if not all(isinstance(v, str) for v in headers.values()):
            raise InvalidRequest("event headers must map strings to strings")


@dataclass(frozen=True)
class ReversalRequest:
    """Everything ``engine.reverse`` needs: reverse journal ``journal_id`` at most once.

    ``idempotency_key`` reverses at most once; the request hash covers ``journal_id`` and
    ``reason``. ``events`` commit with the reversal. With ``namespace``, a journal of another
    namespace is :class:`JournalNotFound`.
    """

    idempotency_key: str
    journal_id: int
    reason: str
    events: Sequence[OutboxEvent] = ()
    namespace: str | None = None


@dataclass(frozen=True)
class PostingRequest:
    """Everything ``engine.post`` needs, already validated.

    ``idempotency_key`` posts at most once (Invariant 3). The request hash covers what the journal
    records (kind, lines, reference, occurred_at, metadata), so those must be derived
    deterministically from the resource: a retry with a fresh ``occurred_at`` is a conflict.
    ``events`` and ``guard`` are not part of the hash: they travel with the request, they are not
    what it records. ``namespace`` is whose money it moves (default: the namespace of its card
    accounts); the idempotency key is unique within that namespace only.
    """

    idempotency_key: str
    kind: PostingKind
    lines: Sequence[Line]
    occurred_at: datetime
    reference: str | None = None
    metadata: Mapping[str, object] = field(default_factory=dict)
    events: Sequence[OutboxEvent] = ()
    guard: SpendGuard | None = None
    namespace: str | None = None

    def __post_init__(self) -> None:
        check_text(self.idempotency_key, "idempotency_key")
        kind = as_enum(PostingKind, self.kind, "kind")
        if kind is PostingKind.REVERSAL:
            raise InvalidRequest("reversals are made by engine.reverse, not posted directly")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "lines", tuple(self.lines))
        object.__setattr__(self, "events", tuple(self.events))
        if not all(isinstance(line, Line) for line in self.lines):
            raise InvalidRequest("lines must be Line objects")
        check_balanced(self.lines)
        check_aware(self.occurred_at, "occurred_at")
        if self.reference is not None:
            check_text(self.reference, "reference")
        check_json_object(self.metadata, "metadata")
        object.__setattr__(self, "namespace", journal_namespace(self.namespace, self.lines))
        self._check_events()
        self._check_guard()

    def _check_events(self) -> None:
        if len(self.events) > EVENTS_MAX:
            raise InvalidRequest(f"at most {EVENTS_MAX} events per posting")
        if not all(isinstance(event, OutboxEvent) for event in self.events):
            raise InvalidRequest("events must be OutboxEvent objects")
        if len({event.event_id for event in self.events}) != len(self.events):
            raise InvalidRequest("event ids must be unique within a posting")

    def _check_guard(self) -> None:
        # The guard's account must be one of the lines' accounts: the engine locks exactly the
        # accounts it writes, and the limit check is only safe under that lock (Invariant 8).
        if self.guard is None:
            return
        if not isinstance(self.guard, SpendGuard):
            raise InvalidRequest("guard must be a SpendGuard")
        if self.guard.account_code not in {line.account_code for line in self.lines}:
            raise InvalidRequest("the guarded account must be one of the posting's accounts")

    @property
    def account_codes(self) -> frozenset[str]:
        return frozenset(line.account_code for line in self.lines)


# --- Results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Account:
    id: int
    code: str
    kind: AccountKind
    normal_balance: Direction
    currency: str
    status: AccountStatus
    metadata: Mapping[str, object]
    created_at: datetime
    closed_at: datetime | None


@dataclass(frozen=True)
class Balance:
    """An account's running totals; checked again when read (house rule 6)."""

    account_code: str
    currency: str
    normal_balance: Direction
    debits_minor: int
    credits_minor: int
    entry_count: int

    def __post_init__(self) -> None:
        for name in ("debits_minor", "credits_minor", "entry_count"):
            value = getattr(self, name)
            if type(value) is not int or value < 0:
                raise InvariantViolation(f"{name} of {self.account_code} is {value!r}")

    @property
    def balance_minor(self) -> int:
        """Signed by the normal balance: a card's balance is what the cardholder owes."""
        if self.normal_balance is Direction.DEBIT:
            return self.debits_minor - self.credits_minor
        return self.credits_minor - self.debits_minor


@dataclass(frozen=True)
class Journal:
    id: int
    idempotency_key: str
    request_hash: str
    kind: PostingKind
    reference: str | None
    occurred_at: datetime
    posted_at: datetime
    reverses_journal_id: int | None
    metadata: Mapping[str, object]
    lines: tuple[Line, ...]
    # Whose money it moves; None on journals written before migration 0045 (then see lines).
    namespace: str | None = None


@dataclass(frozen=True)
class PostResult:
    """``replayed`` is true when the idempotency key had already posted this same request."""

    journal: Journal
    replayed: bool


@dataclass(frozen=True)
class Entry:
    id: int
    journal_id: int
    account_code: str
    direction: Direction
    amount_minor: int
    currency: str
    journal_kind: PostingKind
    reference: str | None
    posted_at: datetime
