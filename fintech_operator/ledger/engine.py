"""The ledger's PostgreSQL adapter (async psycopg 3): posting, reversal, balances, accounts.

Error policy (house rule 8), the same for every function here:

- :class:`model.LedgerError` subclasses are permanent decisions about the request (bad input,
  unknown account, limit exceeded, idempotency conflict). Nothing was written. Handlers turn them
  into a ``Rejected`` status with ``error.reason``; retrying gives the same answer.
- Serialization failures (40001) and deadlocks (40P01) are retried inside :func:`post` and
  :func:`reverse`, at most ``Limits.attempts_max`` times with a small jittered backoff.
- A unique violation on the idempotency key is a replay, never an error: the first journal is
  returned with ``replayed=True`` (or :class:`model.IdempotencyConflict` if the request differs).
- Anything else is a ``psycopg.Error`` (connection lost, lock or statement timeout, retries
  exhausted): transient, safe to retry, because the transaction was rolled back.

Isolation: every transaction runs at READ COMMITTED, set explicitly because a server default may
differ. Correctness comes from row locks, not from snapshots: :func:`post` locks the card accounts
it writes (``FOR NO KEY UPDATE``, in id order so concurrent postings cannot deadlock), and each
later statement takes a fresh snapshot, so the spend-limit read sees every posting committed
before the lock was granted (Invariant 8). REPEATABLE READ would be wrong here: a transaction that
waited for the lock would keep its older snapshot and miss the postings it waited for.

System accounts (``network_settlement`` and friends) are not locked: every posting touches them, so
locking them would serialise all postings of a currency for the whole transaction. Their balance
rows are still updated atomically (by a trigger), and entries are inserted in account-id order, so
those row locks are also taken in one global order and are held only from insert to commit. A
system account has 16 balance rows (stripes, migration 0058), one chosen per backend, so
concurrent transactions, and the posting queue's batches that hold theirs until the batch
commits, do not wait for one hot row; a card account has one (read here under its lock).
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, TypeVar

from psycopg import AsyncConnection, AsyncCursor, errors
from psycopg.pq import TransactionStatus
from psycopg.rows import TupleRow, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from fintech_operator.ledger import model, outbox, rules

Cursor = AsyncCursor[TupleRow]

# The risk engine's hook: runs inside the posting transaction after the account locks, so its
# reads (velocity, history) are consistent with the write; it refuses by raising a LedgerError.
Check = Callable[[AsyncConnection[Any], model.PostingRequest], Awaitable[None]]

_T = TypeVar("_T")
_RETRYABLE: Final = (errors.SerializationFailure, errors.DeadlockDetected)
_ENTRIES_LIMIT_MAX: Final = 1000
BALANCES_CODES_MAX: Final = 1000


@dataclass(frozen=True)
class Limits:
    """Bounds of one ledger call. Checked on construction, so a bad setting fails at start-up."""

    attempts_max: int = 5  # Tries of one transaction on serialization failure or deadlock.
    backoff_base_ms: int = 5  # First retry waits about this long; doubles per try.
    backoff_max_ms: int = 200  # Cap of one wait.
    lock_timeout_ms: int = 5_000  # Longest wait for a row lock (another posting on the card).
    statement_timeout_ms: int = 15_000  # Longest single statement.
    # Longest wait for a pooled connection; None (the default) is the pool's own timeout, which
    # the processes set from FINTECH_DB_TIMEOUT_SECONDS: one setting for every database wait.
    pool_timeout_seconds: float | None = None

    def __post_init__(self) -> None:
        if not 1 <= self.attempts_max <= 20:
            raise ValueError(f"attempts_max must be in 1..20, got {self.attempts_max}")
        if not 0 < self.backoff_base_ms <= self.backoff_max_ms <= 10_000:
            raise ValueError("need 0 < backoff_base_ms <= backoff_max_ms <= 10000")
        if not 0 < self.lock_timeout_ms <= self.statement_timeout_ms <= 600_000:
            raise ValueError("need 0 < lock_timeout_ms <= statement_timeout_ms <= 600000")
        if self.pool_timeout_seconds is not None and not 0 < self.pool_timeout_seconds <= 600:
            raise ValueError("pool_timeout_seconds must be in (0, 600]")


DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True)
class _Plan:
    """What one transaction will write: a validated request, or a reversal built from the DB."""

    idempotency_key: str
    request_hash: str
    kind: model.PostingKind
    lines: tuple[model.Line, ...]
    reference: str | None
    occurred_at: datetime | None  # None: the database's now() (reversals).
    metadata: Mapping[str, object]
    events: tuple[model.OutboxEvent, ...]
    # Whose money (model.journal_namespace); the idempotency key is unique within it.
    namespace: str | None
    reverses_journal_id: int | None = None

    @property
    def account_codes(self) -> list[str]:
        return sorted({line.account_code for line in self.lines})


@dataclass(frozen=True)
class _AccountRow:
    id: int
    code: str
    kind: model.AccountKind
    currency: str
    status: model.AccountStatus
    frozen: bool
    # (debits, credits, entry count) read under the row lock; None for unlocked system accounts.
    totals: tuple[int, int, int] | None


# --- Accounts -----------------------------------------------------------------------------------


class AccountOwnedByAnotherCard(model.AccountConflict):
    """A card account's code exists but was opened for another card (another uid).

    Kubernetes lets a name be reused once its object is gone; the account code is derived from
    the name, so a new card would otherwise inherit the deleted card's account, balance and
    history. ``owner_uid`` is the uid the account was opened for (None when it recorded none).
    """

    reason = "AccountOwnedByAnotherCard"  # the Card's reason is NameReused (lifecycle)

    def __init__(self, code: str, owner_uid: str | None) -> None:
        owner = "an unrecorded card" if owner_uid is None else f"card uid {owner_uid}"
        super().__init__(f"account {code} was opened for {owner}")
        self.code = code
        self.owner_uid = owner_uid


@dataclass(frozen=True)
class Opening:
    """What an account is opened with, beside its code, currency, kind and normal balance.

    ``metadata`` is its first metadata. With ``owner_uid``, the account is opened with
    ``metadata["uid"] = owner_uid`` and an existing one must carry that uid. ``events`` are
    written in the same transaction, each at most once (see :func:`write_events`).
    """

    metadata: Mapping[str, object] | None = None
    events: Sequence[model.OutboxEvent] = ()
    owner_uid: str | None = None


_PLAIN_OPENING: Final = Opening()


async def open_account(
    conn: AsyncConnection[Any],
    code: str,
    currency: str,
    kind: model.AccountKind,
    normal_balance: model.Direction,
    opening: Opening = _PLAIN_OPENING,
) -> model.Account:
    """Open an account, or return it if it exists with the same currency, kind and normal balance.

    An existing account keeps its first metadata and its status (a closed account stays closed).
    With ``opening.owner_uid``, an existing account must carry that uid, else
    :class:`AccountOwnedByAnotherCard` is raised and nothing is written: the check runs in the
    transaction that would write the events. ``opening.events`` commit exactly when the
    account does, so an event announcing the account is never without it.
    """
    metadata, events, owner_uid = opening.metadata, opening.events, opening.owner_uid
    kind = model.as_enum(model.AccountKind, kind, "kind")
    normal = model.as_enum(model.Direction, normal_balance, "normal_balance")
    model.check_account_code(code, kind, model.check_currency(currency))
    data = dict(model.check_json_object({} if metadata is None else metadata, "account metadata"))
    if owner_uid is not None:
        if not isinstance(owner_uid, str) or not owner_uid:
            raise model.InvalidRequest("owner_uid must be a non-empty string")
        data["uid"] = owner_uid
    checked_events = _checked_events(events)
    async with _transaction(conn) as cur:
        await cur.execute(
            "INSERT INTO accounts (code, kind, normal_balance, currency, metadata)"
            " VALUES (%s, %s, %s, %s, %s) ON CONFLICT (code) DO NOTHING",
            (code, kind.value, normal.value, currency, Jsonb(data)),
        )
        account = await _account(cur, code)
        if (account.currency, account.kind, account.normal_balance) != (currency, kind, normal):
            raise model.AccountConflict(
                f"account {code} exists as {account.kind} {account.normal_balance}-normal"
                f" {account.currency}"
            )
        recorded = account.metadata.get("uid")
        if owner_uid is not None and recorded != owner_uid:
            raise AccountOwnedByAnotherCard(code, None if recorded is None else str(recorded))
        await _insert_lifecycle_events(cur, checked_events)
    return account


async def open_card_account(
    conn: AsyncConnection[Any],
    namespace: str,
    card: str,
    currency: str,
    events: Sequence[model.OutboxEvent] = (),
    *,
    card_uid: str | None = None,
) -> model.Account:
    """Open the card's receivable account (debit-normal), ``card:<namespace>/<card>:<CUR>``,
    with metadata ``{"card": "<namespace>/<card>"}``.

    ``events`` (the card's ``card.issued``) commit with the account, each at most once. With
    ``card_uid`` (the operator always passes it), the account belongs to that card: a retry of
    the same card gets its account back, a card re-created with a deleted card's name gets
    :class:`AccountOwnedByAnotherCard` instead of the old card's account.
    """
    code = model.card_account_code(namespace, card, currency)
    return await open_account(
        conn,
        code,
        currency,
        model.AccountKind.CARD,
        model.CARD_NORMAL_BALANCE,
        Opening(metadata={"card": f"{namespace}/{card}"}, events=events, owner_uid=card_uid),
    )


@dataclass(frozen=True)
class CardAccountOwner:
    """A card account opened under a card's name: its code and the card uid it was opened for."""

    code: str
    owner_uid: str | None
    status: model.AccountStatus


async def card_account_owners(
    conn: AsyncConnection[Any], namespace: str, card: str
) -> list[CardAccountOwner]:
    """Every card account ever opened for the name ``namespace/card`` (any currency).

    Reads ``metadata->>'card'``, which the operator writes when it opens a card's account
    (indexed by migration 0040), so a new card can be checked before anything is issued.
    """
    model.card_account_code(namespace, card, "XXX")  # Validates the names.
    async with _transaction(conn) as cur:
        await cur.execute(
            "SELECT code, metadata ->> 'uid', status FROM accounts"
            " WHERE kind = 'card' AND metadata ->> 'card' = %s ORDER BY id LIMIT 100",
            (f"{namespace}/{card}",),
        )
        rows = await cur.fetchall()
    return [
        CardAccountOwner(
            code=str(code),
            owner_uid=None if uid is None else str(uid),
            status=model.AccountStatus(status),
        )
        for code, uid, status in rows
    ]


async def ensure_system_accounts(conn: AsyncConnection[Any], currency: str) -> list[model.Account]:
    """Open every system account of ``currency`` (idempotent). :func:`post` also opens on demand."""
    return [
        await open_account(
            conn,
            model.system_account_code(account, currency),
            currency,
            model.AccountKind.SYSTEM,
            normal,
        )
        for account, normal in model.SYSTEM_NORMAL_BALANCE.items()
    ]


async def close_account(
    conn: AsyncConnection[Any], code: str, *, events: Sequence[model.OutboxEvent] = ()
) -> model.Account:
    """Close a card account whose balance is zero; closing is final and idempotent.

    ``events`` are written in the closing transaction, each at most once, and only when this
    call closes the account: an account found closed already had its events committed.
    """
    checked_events = _checked_events(events)
    async with _transaction(conn) as cur:
        await cur.execute("SELECT id FROM accounts WHERE code = %s FOR NO KEY UPDATE", (code,))
        if await cur.fetchone() is None:
            raise model.AccountNotFound(f"account {code} does not exist")
        account = await _account(cur, code)  # A fresh statement: sees postings we waited for.
        if account.kind is model.AccountKind.SYSTEM:
            raise model.InvalidRequest(f"system account {code} cannot be closed")
        if account.status is model.AccountStatus.CLOSED:
            return account
        held = await _balance(cur, code)
        if held.debits_minor != held.credits_minor:
            raise model.AccountNotEmpty(f"account {code} has balance {held.balance_minor}")
        await cur.execute(
            "UPDATE accounts SET status = 'closed', closed_at = now() WHERE id = %s", (account.id,)
        )
        await _insert_lifecycle_events(cur, checked_events)
        return await _account(cur, code)


async def write_events(conn: AsyncConnection[Any], events: Sequence[model.OutboxEvent]) -> int:
    """Write events no journal carries (card lifecycle), in the caller's transaction if any.

    Their ids are derived from what happened, so a retried handler writes the same id again:
    an id already in the outbox is a replay and is skipped. Returns how many rows were new.
    """
    checked = _checked_events(events)
    async with _transaction(conn) as cur:
        return await _insert_lifecycle_events(cur, checked)


async def set_frozen(
    conn: AsyncConnection[Any],
    code: str,
    frozen: bool,
    events: Sequence[model.OutboxEvent] = (),
    *,
    generation: int | None = None,
) -> bool:
    """Freeze or unfreeze a card account, with the events that announce it, in one transaction;
    True when the account changed.

    Taking the account's row lock orders this against postings: one that locks the account
    after this commits sees the freeze. Idempotent: the first freeze time is kept, and an
    account already in the asked state is left alone and gets none of ``events`` (they announce
    a change, and the change that put it in that state wrote its own).

    ``generation``: the Card's ``metadata.generation`` whose ``spec.state`` asks this (migration
    0072). It is recorded with the flag, and a generation older than the one recorded changes
    nothing: the flag already follows a newer spec. None (issuance) is not checked and not
    recorded.
    """
    if generation is not None and (type(generation) is not int or generation < 1):
        raise ValueError(f"generation must be a positive int, got {generation!r}")
    checked = _checked_events(events)
    async with _transaction(conn) as cur:
        await cur.execute(
            "SELECT frozen_at IS NOT NULL, state_generation FROM accounts"
            " WHERE code = %s AND kind = 'card' FOR NO KEY UPDATE",
            (code,),
        )
        row = await cur.fetchone()
        if row is None:
            raise model.AccountNotFound(f"card account {code} does not exist")
        was_frozen, recorded = bool(row[0]), row[1]
        if generation is not None and recorded is not None and generation < recorded:
            return False  # a newer spec's state is in place
        changed = was_frozen != frozen
        if changed or (generation is not None and generation != recorded):
            await cur.execute(
                "UPDATE accounts SET frozen_at = CASE WHEN NOT %(changed)s THEN frozen_at"
                " WHEN %(frozen)s THEN now() END,"
                " state_generation = coalesce(%(generation)s, state_generation)"
                " WHERE code = %(code)s AND kind = 'card'",
                {"changed": changed, "frozen": frozen, "generation": generation, "code": code},
            )
        if changed:
            await _insert_lifecycle_events(cur, checked)
        return changed


@dataclass(frozen=True)
class CardFreeze:
    """A card account's freeze flag and the Card generation it follows (None: not recorded)."""

    frozen: bool
    generation: int | None


async def card_freezes(conn: AsyncConnection[Any], codes: Sequence[str]) -> dict[str, CardFreeze]:
    """The freeze flags of the card accounts ``codes`` that exist, in one statement (the
    namespace's batched card refresh compares them with each card's spec)."""
    if len(codes) > BALANCES_CODES_MAX:
        raise ValueError(f"at most {BALANCES_CODES_MAX} accounts per call, got {len(codes)}")
    async with _transaction(conn) as cur:
        await cur.execute(
            "SELECT code, frozen_at IS NOT NULL, state_generation FROM accounts"
            " WHERE code = ANY(%s) AND kind = 'card'",
            (list(codes),),
        )
        rows = await cur.fetchall()
    return {str(code): CardFreeze(bool(frozen), gen) for code, frozen, gen in rows}


async def account(conn: AsyncConnection[Any], code: str) -> model.Account:
    async with _transaction(conn) as cur:
        return await _account(cur, code)


# --- Posting ------------------------------------------------------------------------------------


async def post(
    pool: AsyncConnectionPool[Any],
    request: model.PostingRequest,
    *,
    check: Check | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> model.PostResult:
    """Post a balanced journal, its entries, balances and outbox rows in ONE transaction.

    In order: lock the card accounts; return the first journal if the key already posted (or
    raise IdempotencyConflict); check accounts are open and in the line's currency; enforce the
    spend guard; run ``check``; write; read back and verify; commit.
    """
    if not isinstance(request, model.PostingRequest):
        raise model.InvalidRequest("post needs a model.PostingRequest")
    plan = _plan_of(request)

    async def attempt(cur: Cursor) -> model.PostResult:
        return await _post_locked(cur, plan, request, check)

    return await _run(pool, limits, attempt)


def _plan_of(request: model.PostingRequest) -> _Plan:
    return _Plan(
        idempotency_key=request.idempotency_key,
        request_hash=rules.request_hash(request),
        kind=request.kind,
        lines=tuple(request.lines),
        reference=request.reference,
        occurred_at=request.occurred_at,
        metadata=request.metadata,
        events=tuple(request.events),
        namespace=request.namespace,
    )


@dataclass(frozen=True)
class CardIssuance:
    """Everything issuing a card writes to the ledger, committed by :func:`issue_card` at once.

    ``fee`` is the issuance fee's posting (None when the product charges none); ``events``
    (the card's ``card.issued``) commit with the account, each at most once.
    """

    namespace: str
    card: str
    card_uid: str
    currency: str
    frozen: bool
    fee: model.PostingRequest | None
    events: tuple[model.OutboxEvent, ...]

    @property
    def account_code(self) -> str:
        return model.card_account_code(self.namespace, self.card, self.currency)


async def issue_card(
    pool: AsyncConnectionPool[Any],
    issuance: CardIssuance,
    then: Callable[[AsyncConnection[Any]], Awaitable[_T]],
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> _T:
    """Issue a card in ONE transaction: its account opened (owned by ``card_uid``), the fee
    posted, the account frozen or not, its events written, then ``then`` (the caller's reads
    and writes of the same issuance, such as the authorization mirror) on the same connection.

    Idempotent: a retry finds the card's account, the fee's journal (a replay) and the events
    already there, so it writes nothing twice. A card re-created under a deleted card's name
    gets :class:`AccountOwnedByAnotherCard` and nothing is written. The fee is posted before
    the freeze: a frozen account takes no debits, and the fee is the last one until unfrozen.
    """
    if issuance.fee is not None and issuance.account_code not in issuance.fee.account_codes:
        raise model.InvalidRequest("the issuance fee must be charged to the card's account")
    fee = None if issuance.fee is None else _plan_of(issuance.fee)

    async def attempt(cur: Cursor) -> _T:
        conn = cur.connection
        await open_card_account(
            conn,
            issuance.namespace,
            issuance.card,
            issuance.currency,
            events=issuance.events,
            card_uid=issuance.card_uid,
        )
        if fee is not None and issuance.fee is not None:
            await _post_locked(cur, fee, issuance.fee, None)
        await set_frozen(conn, issuance.account_code, issuance.frozen)
        return await then(conn)

    return await _run(pool, limits, attempt)


async def reverse(
    pool: AsyncConnectionPool[Any],
    request: model.ReversalRequest,
    *,
    limits: Limits = DEFAULT_LIMITS,
) -> model.PostResult:
    """Post the opposite of journal ``request.journal_id`` (at most once) and return the
    reversal.

    The reversal is an ordinary journal of kind ``Reversal`` whose ``reverses_journal_id`` points
    at the original; the database's UNIQUE constraint on it makes a second reversal impossible.
    It moves the original's namespace's money; with ``request.namespace``, a journal of another
    namespace is :class:`model.JournalNotFound`, as if it did not exist.
    """
    checked = _checked_reversal(request)

    async def attempt(cur: Cursor) -> model.PostResult:
        return await _reverse_in(cur, checked)

    return await _run(pool, limits, attempt)


# --- Several postings in one transaction ----------------------------------------------------------


@asynccontextmanager
async def in_transaction(
    pool: AsyncConnectionPool[Any], limits: Limits = DEFAULT_LIMITS
) -> AsyncIterator[AsyncConnection[Any]]:
    """One READ COMMITTED transaction on a pooled connection, with the limits' timeouts, for a
    caller that puts several postings in it, each with :func:`post_nested` or
    :func:`reverse_nested` under its own savepoint. It commits when the block ends; nothing is
    retried here (a deadlock inside a savepoint is the caller's to retry)."""
    async with (
        pool.connection(timeout=limits.pool_timeout_seconds) as conn,
        _transaction(conn, limits, top_level=True),
    ):
        yield conn


def _inside_transaction(conn: AsyncConnection[Any], what: str) -> None:
    if conn.info.transaction_status is TransactionStatus.IDLE:
        raise RuntimeError(f"{what} runs inside the caller's transaction (in_transaction)")


async def post_nested(
    conn: AsyncConnection[Any], request: model.PostingRequest, *, check: Check | None = None
) -> model.PostResult:
    """:func:`post` inside the caller's transaction, under a savepoint: a refusal (or any error)
    rolls back this posting alone, and the caller's other postings stay. Its locks are held
    until the caller commits; it is durable only then."""
    _inside_transaction(conn, "post_nested")
    if not isinstance(request, model.PostingRequest):
        raise model.InvalidRequest("post needs a model.PostingRequest")
    plan = _plan_of(request)
    async with _transaction(conn) as cur:
        return await _post_locked(cur, plan, request, check)


async def reverse_nested(
    conn: AsyncConnection[Any], reversal: model.ReversalRequest
) -> model.PostResult:
    """:func:`reverse` inside the caller's transaction, under a savepoint (see post_nested)."""
    _inside_transaction(conn, "reverse_nested")
    checked = _checked_reversal(reversal)
    async with _transaction(conn) as cur:
        return await _reverse_in(cur, checked)


def _checked_reversal(reversal: model.ReversalRequest) -> model.ReversalRequest:
    model.check_text(reversal.idempotency_key, "idempotency_key")
    model.check_text(reversal.reason, "reason")
    if type(reversal.journal_id) is not int or reversal.journal_id <= 0:
        raise model.InvalidRequest("journal_id must be a positive int")
    return model.ReversalRequest(
        reversal.idempotency_key,
        reversal.journal_id,
        reversal.reason,
        _checked_events(reversal.events),
        reversal.namespace,
    )


async def _reverse_in(cur: Cursor, reversal: model.ReversalRequest) -> model.PostResult:
    request_hash = rules.reversal_request_hash(reversal.journal_id, reversal.reason)
    original = await _reversible(
        cur, reversal.namespace, reversal.idempotency_key, request_hash, reversal.journal_id
    )
    if isinstance(original, model.PostResult):
        return original
    plan = _Plan(
        idempotency_key=reversal.idempotency_key,
        request_hash=request_hash,
        kind=model.PostingKind.REVERSAL,
        lines=rules.reversal_lines(original.lines),
        reference=original.reference,
        occurred_at=None,
        metadata={"reason": reversal.reason},
        events=tuple(reversal.events),
        namespace=model.journal_namespace(reversal.namespace, original.lines),
        reverses_journal_id=reversal.journal_id,
    )
    return await _reverse_locked(cur, plan)


async def _post_locked(
    cur: Cursor, plan: _Plan, request: model.PostingRequest, check: Check | None
) -> model.PostResult:
    accounts = await _lock_accounts(cur, plan.account_codes)
    # Idempotency is checked after the locks, not before: a racer with the same key that
    # committed while we waited must be a replay, before any limit check could refuse it.
    existing = await _existing(cur, plan)
    if existing is not None:
        return existing
    _check_accounts(accounts, plan.lines)
    if request.guard is not None:
        await _check_guard(cur, accounts[request.guard.account_code], request, request.guard)
    if check is not None:
        await check(cur.connection, request)
    return await _write(cur, plan, accounts)


async def _reversible(
    cur: Cursor, namespace: str | None, key: str, request_hash: str, journal_id: int
) -> model.Journal | model.PostResult:
    """The journal to reverse, or the earlier result when this reversal was already posted."""
    original = await _load_journal(cur, journal_id)
    if original is not None and namespace is not None:
        try:
            model.journal_namespace(namespace, original.lines)
        except model.InvalidRequest:
            original = None  # Another namespace's journal: it does not exist for this one.
    if original is None:
        where = "" if namespace is None else f" in namespace {namespace}"
        raise model.JournalNotFound(f"journal {journal_id} does not exist{where}")
    scope = model.journal_namespace(namespace, original.lines)
    existing = await _existing_by_key(cur, scope, key, request_hash)
    if existing is not None:
        return existing
    if original.kind is model.PostingKind.REVERSAL:
        raise model.NotReversible(f"journal {journal_id} is a reversal; post it again instead")
    return original


async def _reverse_locked(cur: Cursor, plan: _Plan) -> model.PostResult:
    accounts = await _lock_accounts(cur, plan.account_codes)
    existing = await _existing(cur, plan)
    if existing is not None:
        return existing
    await cur.execute(
        "SELECT id FROM journals WHERE reverses_journal_id = %s", (plan.reverses_journal_id,)
    )
    row = await cur.fetchone()
    if row is not None:
        raise model.AlreadyReversed(
            f"journal {plan.reverses_journal_id} was already reversed by journal {row[0]}"
        )
    _check_accounts(accounts, plan.lines)
    return await _write(cur, plan, accounts)


async def _run(
    pool: AsyncConnectionPool[Any], limits: Limits, body: Callable[[Cursor], Awaitable[_T]]
) -> _T:
    """Run ``body`` in a fresh READ COMMITTED transaction, retrying 40001/40P01 a bounded time."""
    attempt = 1
    while True:
        try:
            async with (
                pool.connection(timeout=limits.pool_timeout_seconds) as conn,
                _transaction(conn, limits, top_level=True) as cur,
            ):
                return await body(cur)
        except _RETRYABLE:
            if attempt >= limits.attempts_max:
                raise
            await asyncio.sleep(_backoff_seconds(limits, attempt))
            attempt += 1


def _backoff_seconds(limits: Limits, attempt: int) -> float:
    """Exponential backoff with jitter in [50%, 100%], so racers do not retry in lock-step."""
    cap_ms = min(limits.backoff_max_ms, limits.backoff_base_ms << (attempt - 1))
    return cap_ms * (500 + secrets.randbelow(501)) / 1_000_000


@asynccontextmanager
async def _transaction(
    conn: AsyncConnection[Any], limits: Limits = DEFAULT_LIMITS, *, top_level: bool = False
) -> AsyncIterator[Cursor]:
    """A transaction (or a savepoint inside the caller's) with a tuple-row cursor.

    Isolation and timeouts can only be set when this is the outermost transaction; inside the
    caller's transaction they are the caller's, and it must be READ COMMITTED (the default).
    """
    outermost = conn.info.transaction_status is TransactionStatus.IDLE
    if top_level and not outermost:
        raise RuntimeError("a pooled connection must not be inside a transaction")
    async with conn.transaction(), conn.cursor(row_factory=tuple_row) as cur:
        if outermost:
            # Integers from a validated Limits: nothing user-controlled reaches this text.
            await cur.execute(
                "SET TRANSACTION ISOLATION LEVEL READ COMMITTED;"
                f" SET LOCAL lock_timeout = {int(limits.lock_timeout_ms)};"
                f" SET LOCAL statement_timeout = {int(limits.statement_timeout_ms)}".encode()
            )
        yield cur
        if outermost:
            check_committable(conn)


class TransactionAborted(errors.OperationalError):
    """The transaction cannot commit: nothing done in it may be reported as done."""


def check_committable(conn: AsyncConnection[Any]) -> None:
    """Refuse to COMMIT anything but an open, healthy transaction.

    PostgreSQL answers COMMIT of an aborted transaction with ROLLBACK and no error, and psycopg
    does not check the answer. A caller that caught an error inside its transaction (a batch
    whose step failed outside its savepoint, say) would otherwise report work as committed that
    never was: a fault campaign saw Posted postings with no journal after a PostgreSQL crash. So
    every outermost ledger transaction ends here; raising makes ``conn.transaction()`` roll back.
    """
    status = conn.info.transaction_status
    if conn.broken or conn.closed or status is not TransactionStatus.INTRANS:
        raise TransactionAborted(f"the transaction is {status.name}, not open: not committed")


# --- Posting steps ------------------------------------------------------------------------------

_LOCK_ACCOUNTS: Final = """
WITH locked AS (
    SELECT a.id, a.code, a.kind, a.currency, a.status, a.frozen_at IS NOT NULL AS frozen,
           b.debits_minor, b.credits_minor, b.entry_count
      FROM accounts a
      JOIN account_balance_rows b ON b.account_id = a.id AND b.stripe = 0
     WHERE a.code = ANY(%(codes)s) AND a.kind <> 'system'
     ORDER BY a.id
       FOR NO KEY UPDATE OF a, b
)
SELECT * FROM locked
UNION ALL
SELECT a.id, a.code, a.kind, a.currency, a.status, false, NULL, NULL, NULL
  FROM accounts a
 WHERE a.code = ANY(%(codes)s) AND a.kind = 'system'
"""


async def _lock_accounts(cur: Cursor, codes: list[str]) -> dict[str, _AccountRow]:
    """Lock the card accounts of ``codes`` in id order; read the rest. Opens missing system ones.

    The balance rows are locked with their accounts so that, if a concurrent posting updated them
    while we waited, PostgreSQL returns the newest version (the totals verified after the write).
    """
    accounts = await _select_accounts(cur, codes)
    missing_system = {
        code: parsed
        for code in codes
        if code not in accounts and (parsed := model.parse_system_code(code)) is not None
    }
    for code, (system, currency) in missing_system.items():
        await _insert_system_account(cur, code, system, currency)
    if missing_system:
        accounts.update(await _select_accounts(cur, list(missing_system)))
    return accounts


async def _select_accounts(cur: Cursor, codes: list[str]) -> dict[str, _AccountRow]:
    await cur.execute(_LOCK_ACCOUNTS, {"codes": codes})
    rows = await cur.fetchall()
    return {
        str(code): _AccountRow(
            id=int(id_),
            code=str(code),
            kind=model.AccountKind(kind),
            currency=str(currency),
            status=model.AccountStatus(status),
            frozen=bool(frozen),
            totals=None if debits is None else (int(debits), int(credits), int(count)),
        )
        for id_, code, kind, currency, status, frozen, debits, credits, count in rows
    }


async def _insert_system_account(
    cur: Cursor, code: str, system: model.SystemAccount, currency: str
) -> None:
    normal = model.SYSTEM_NORMAL_BALANCE[system]
    await cur.execute(
        "INSERT INTO accounts (code, kind, normal_balance, currency)"
        " VALUES (%s, 'system', %s, %s) ON CONFLICT (code) DO NOTHING",
        (code, normal.value, currency),
    )


def _check_accounts(accounts: Mapping[str, _AccountRow], lines: Iterable[model.Line]) -> None:
    for line in lines:
        account = accounts.get(line.account_code)
        if account is None:
            raise model.AccountNotFound(f"account {line.account_code} does not exist")
        # A closed account takes credits only (late refunds); see migration 0002.
        if account.status is not model.AccountStatus.OPEN and line.direction is not (
            model.Direction.CREDIT
        ):
            raise model.AccountClosed(f"account {line.account_code} is closed to debits")
        # A frozen card takes credits only (refunds, payments); see migration 0041.
        if account.frozen and line.direction is model.Direction.DEBIT:
            raise model.AccountFrozen(f"account {line.account_code} is frozen: no new debits")
        if account.currency != line.currency:
            raise model.CurrencyMismatch(
                f"line in {line.currency} on account {line.account_code} in {account.currency}"
            )


async def _check_guard(
    cur: Cursor, account: _AccountRow, request: model.PostingRequest, guard: model.SpendGuard
) -> None:
    """Invariant 8: the spend read and the posting happen under the same account lock."""
    if account.totals is None:
        raise model.InvalidRequest("a spend guard must be on a card account, not a system one")
    requested = rules.requested_spend(request, guard.account_code)
    spent = 0
    if guard.interval is not model.SpendInterval.PER_TRANSACTION:
        start = rules.spend_window_start(guard.interval, guard.now)
        spent = await _spent_since(cur, account.id, guard.interval, start)
    rules.check_spend(guard, spent, requested)


async def _spent_since(
    cur: Cursor, account_id: int, interval: model.SpendInterval, start: datetime | None
) -> int:
    """Debits of spend kinds to the account posted since ``start`` (the start of an
    ``interval`` window), minus reversed ones, plus what the card's pending real-time
    authorizations hold (Invariant 8: holds count against limits; they move only under this
    same account lock, see migration 0050), in one statement.

    The spend is read from the running windows of migration 0054 (kept by the entries and
    reversal triggers, proved by the view ``account_spend_drift``): one index probe, however
    long the card's history. They count Purchase debits, which is ``rules.SPEND_KINDS``.
    """
    await cur.execute(
        """
        SELECT coalesce(sum(s.spent_minor), 0)
               + coalesce((SELECT c.held_minor FROM authorization_cards c
                            WHERE c.account_id = %(account)s), 0)
          FROM account_spend_windows s
         WHERE s.account_id = %(account)s
           AND s.spend_interval = %(interval)s
           AND s.window_start >= coalesce(%(start)s::timestamptz, '-infinity')
        """,
        {"account": account_id, "interval": interval.value, "start": start},
    )
    row = await cur.fetchone()
    return _exact_int(None if row is None else row[0], "spent")


async def _existing(cur: Cursor, plan: _Plan) -> model.PostResult | None:
    return await _existing_by_key(cur, plan.namespace, plan.idempotency_key, plan.request_hash)


# A key is looked up in its namespace, then among the journals written before migration 0045
# (namespace NULL) that moved that namespace's money: those keep replaying for their owner and
# are invisible to every other namespace (without a namespace: those that moved no card's
# money). Two index probes of the (namespace, key) index.
_BY_KEY: Final = """
(SELECT id, request_hash, 0 AS older FROM journals
  WHERE namespace = %(namespace)s AND idempotency_key = %(key)s)
UNION ALL
(SELECT j.id, j.request_hash, 1 FROM journals j
  WHERE j.namespace IS NULL AND j.idempotency_key = %(key)s
    AND CASE WHEN %(namespace)s::text IS NULL
             THEN NOT EXISTS (SELECT 1 FROM entries e JOIN accounts a ON a.id = e.account_id
                               WHERE e.journal_id = j.id AND a.namespace IS NOT NULL)
             ELSE EXISTS (SELECT 1 FROM entries e JOIN accounts a ON a.id = e.account_id
                           WHERE e.journal_id = j.id AND a.namespace = %(namespace)s::text)
        END)
ORDER BY older
LIMIT 1
"""


async def _journal_id_by_key(
    cur: Cursor, namespace: str | None, key: str
) -> tuple[int, str] | None:
    await cur.execute(_BY_KEY, {"namespace": namespace, "key": key})
    row = await cur.fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


async def _existing_by_key(
    cur: Cursor, namespace: str | None, key: str, request_hash: str
) -> model.PostResult | None:
    """Invariant 3: the first journal of ``key`` in ``namespace`` if it has the same hash; a
    conflict otherwise. Another namespace's journal of the same key is never seen."""
    found = await _journal_id_by_key(cur, namespace, key)
    if found is None:
        return None
    journal_id, first_hash = found
    if first_hash != request_hash:
        raise model.IdempotencyConflict(
            f"idempotency key {key!r} already posted journal {journal_id} for another request"
        )
    journal = await _load_journal(cur, journal_id)
    if journal is None:
        raise model.InvariantViolation(f"journal {journal_id} has no entries")
    return model.PostResult(journal=journal, replayed=True)


async def _write(cur: Cursor, plan: _Plan, accounts: Mapping[str, _AccountRow]) -> model.PostResult:
    journal_id = await _insert_journal(cur, plan)
    if journal_id is None:
        # A racer with the same key committed between our check and our insert.
        existing = await _existing(cur, plan)
        if existing is None:
            raise model.InvariantViolation(f"key {plan.idempotency_key!r} conflicted but is absent")
        return existing
    await _insert_entries(cur, journal_id, plan.lines, accounts)
    await _insert_outbox(cur, journal_id, plan.events)
    journal = _verified_journal(await _load_journal(cur, journal_id), plan)
    await _verify_totals(cur, plan, accounts)
    return model.PostResult(journal=journal, replayed=False)


async def _insert_journal(cur: Cursor, plan: _Plan) -> int | None:
    """Insert the journal; ``None`` when the idempotency key was taken by a concurrent racer."""
    try:
        await cur.execute(
            """
            INSERT INTO journals (idempotency_key, request_hash, kind, reference, occurred_at,
                                  reverses_journal_id, metadata, namespace)
            VALUES (%s, %s, %s, %s, coalesce(%s::timestamptz, now()), %s, %s, %s)
            ON CONFLICT (namespace, idempotency_key) DO NOTHING
            RETURNING id
            """,
            (
                plan.idempotency_key,
                plan.request_hash,
                plan.kind.value,
                plan.reference,
                plan.occurred_at,
                plan.reverses_journal_id,
                Jsonb(dict(plan.metadata)),
                plan.namespace,
            ),
        )
    except errors.UniqueViolation as exc:
        if exc.diag.constraint_name == "journals_reverses_journal_id_key":
            raise model.AlreadyReversed(
                f"journal {plan.reverses_journal_id} was already reversed"
            ) from exc
        raise
    row = await cur.fetchone()
    return None if row is None else int(row[0])


async def _insert_entries(
    cur: Cursor, journal_id: int, lines: Iterable[model.Line], accounts: Mapping[str, _AccountRow]
) -> None:
    # Account-id order: the balance trigger then locks balance rows in one global order.
    rows = sorted(
        (accounts[line.account_code].id, line.direction.value, line.amount_minor, line.currency)
        for line in lines
    )
    await cur.executemany(
        "INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)"
        " VALUES (%s, %s, %s, %s, %s)",
        [(journal_id, *row) for row in rows],
    )


async def _insert_outbox(cur: Cursor, journal_id: int, events: Sequence[model.OutboxEvent]) -> None:
    written = await outbox.write(cur, events, journal_id=journal_id)
    if written != len(events):
        # A journal's events are new by construction (fresh ids): an id already in the outbox
        # is a caller's mistake, refused as the request's, and the transaction rolls back.
        raise model.InvalidRequest("an event id of this posting was already used")


async def _insert_lifecycle_events(cur: Cursor, events: Sequence[model.OutboxEvent]) -> int:
    """Insert events without a journal; an event id already in the outbox is a replay."""
    return await outbox.write(cur, events)


def _verified_journal(journal: model.Journal | None, plan: _Plan) -> model.Journal:
    """House rule 6: what the database holds is exactly what we meant to write."""
    if journal is None:
        raise model.InvariantViolation(f"journal {plan.idempotency_key!r} not found after insert")
    written = (
        journal.idempotency_key,
        journal.request_hash,
        journal.kind,
        journal.namespace,
        sorted(_keys(journal.lines)),
    )
    meant = (
        plan.idempotency_key,
        plan.request_hash,
        plan.kind,
        plan.namespace,
        sorted(_keys(plan.lines)),
    )
    if written != meant or journal.reverses_journal_id != plan.reverses_journal_id:
        raise model.InvariantViolation(f"journal {journal.id} read back {written}, meant {meant}")
    return journal


async def _verify_totals(cur: Cursor, plan: _Plan, accounts: Mapping[str, _AccountRow]) -> None:
    """The locked accounts' totals moved by exactly this journal's lines."""
    expected = _expected_totals(plan.lines, accounts)
    if not expected:
        return
    await cur.execute(
        "SELECT account_id, debits_minor, credits_minor, entry_count"
        " FROM account_balances WHERE account_id = ANY(%s)",
        (list(expected),),
    )
    actual = {int(a): (int(d), int(c), int(n)) for a, d, c, n in await cur.fetchall()}
    if actual != expected:
        raise model.InvariantViolation(f"balances {actual} after write, expected {expected}")


def _expected_totals(
    lines: Iterable[model.Line], accounts: Mapping[str, _AccountRow]
) -> dict[int, tuple[int, int, int]]:
    expected: dict[int, tuple[int, int, int]] = {}
    for line in lines:
        account = accounts[line.account_code]
        if account.totals is None:  # Unlocked system account: others move it concurrently.
            continue
        debits, credits, count = expected.get(account.id, account.totals)
        if line.direction is model.Direction.DEBIT:
            debits += line.amount_minor
        else:
            credits += line.amount_minor
        expected[account.id] = (debits, credits, count + 1)
    return expected


def _keys(lines: Iterable[model.Line]) -> list[tuple[str, str, int, str]]:
    return [(x.account_code, x.direction.value, x.amount_minor, x.currency) for x in lines]


def _checked_events(events: Sequence[model.OutboxEvent]) -> tuple[model.OutboxEvent, ...]:
    checked = tuple(events)
    if len(checked) > model.EVENTS_MAX or not all(
        isinstance(event, model.OutboxEvent) for event in checked
    ):
        raise model.InvalidRequest(f"events must be at most {model.EVENTS_MAX} OutboxEvents")
    if len({event.event_id for event in checked}) != len(checked):
        raise model.InvalidRequest("event ids must be unique within a posting")
    return checked


# --- Reads --------------------------------------------------------------------------------------

_JOURNAL: Final = """
SELECT j.id, j.idempotency_key, j.request_hash, j.kind, j.reference, j.occurred_at, j.posted_at,
       j.reverses_journal_id, j.metadata, j.namespace, a.code, e.direction, e.amount_minor,
       e.currency
  FROM journals j
  JOIN entries e ON e.journal_id = j.id
  JOIN accounts a ON a.id = e.account_id
 WHERE j.id = %s
 ORDER BY e.id
"""


async def journal(conn: AsyncConnection[Any], journal_id: int) -> model.Journal:
    async with _transaction(conn) as cur:
        found = await _load_journal(cur, journal_id)
    if found is None:
        raise model.JournalNotFound(f"journal {journal_id} does not exist")
    return found


async def journal_by_key(
    conn: AsyncConnection[Any], idempotency_key: str, *, namespace: str | None
) -> model.Journal | None:
    """The journal an idempotency key posted in ``namespace``, if any (handlers use it to
    rebuild a status). Keys are unique per namespace: another namespace's is never returned.
    ``namespace=None`` finds only journals that move no namespace's money."""
    async with _transaction(conn) as cur:
        found = await _journal_id_by_key(cur, namespace, idempotency_key)
        return None if found is None else await _load_journal(cur, found[0])


async def _load_journal(cur: Cursor, journal_id: int) -> model.Journal | None:
    await cur.execute(_JOURNAL, (journal_id,))
    rows = await cur.fetchall()
    if not rows:
        return None
    id_, key, request_hash, kind, reference, occurred_at, posted_at, reverses, metadata, ns = rows[
        0
    ][:10]
    # model.Line re-checks every amount and currency read back (house rule 6).
    lines = tuple(
        model.Line(str(code), model.Direction(direction), amount, str(currency))
        for *_, code, direction, amount, currency in rows
    )
    return model.Journal(
        id=int(id_),
        idempotency_key=str(key),
        request_hash=str(request_hash),
        kind=model.PostingKind(kind),
        reference=None if reference is None else str(reference),
        occurred_at=occurred_at,
        posted_at=posted_at,
        reverses_journal_id=None if reverses is None else int(reverses),
        metadata=dict(metadata),
        lines=lines,
        namespace=None if ns is None else str(ns),
    )


async def balance(conn: AsyncConnection[Any], account_code: str) -> model.Balance:
    async with _transaction(conn) as cur:
        return await _balance(cur, account_code)


async def balances(conn: AsyncConnection[Any], codes: Sequence[str]) -> dict[str, model.Balance]:
    """The balances of the accounts ``codes`` that exist, in one statement (batched refresh)."""
    if len(codes) > BALANCES_CODES_MAX:
        raise ValueError(f"at most {BALANCES_CODES_MAX} accounts per call, got {len(codes)}")
    async with _transaction(conn) as cur:
        await cur.execute(
            "SELECT a.code, a.currency, a.normal_balance, b.debits_minor, b.credits_minor,"
            " b.entry_count FROM accounts a JOIN account_balances b ON b.account_id = a.id"
            " WHERE a.code = ANY(%s)",
            (list(codes),),
        )
        rows = await cur.fetchall()
    return {
        str(code): model.Balance(
            account_code=str(code),
            currency=str(currency),
            normal_balance=model.Direction(normal),
            debits_minor=debits,
            credits_minor=credits,
            entry_count=count,
        )
        for code, currency, normal, debits, credits, count in rows
    }


async def _balance(cur: Cursor, account_code: str) -> model.Balance:
    await cur.execute(
        "SELECT a.currency, a.normal_balance, b.debits_minor, b.credits_minor, b.entry_count"
        " FROM accounts a JOIN account_balances b ON b.account_id = a.id WHERE a.code = %s",
        (account_code,),
    )
    row = await cur.fetchone()
    if row is None:
        raise model.AccountNotFound(f"account {account_code} does not exist")
    currency, normal, debits, credits, count = row
    return model.Balance(
        account_code=account_code,
        currency=str(currency),
        normal_balance=model.Direction(normal),
        debits_minor=debits,
        credits_minor=credits,
        entry_count=count,
    )


async def entries(
    conn: AsyncConnection[Any], account_code: str, limit: int = 50, before_id: int | None = None
) -> list[model.Entry]:
    """An account's entries, newest first; page with ``before_id`` = the last id you saw."""
    if type(limit) is not int or not 0 < limit <= _ENTRIES_LIMIT_MAX:
        raise model.InvalidRequest(f"limit must be an int in 1..{_ENTRIES_LIMIT_MAX}")
    if before_id is not None and (type(before_id) is not int or before_id <= 0):
        raise model.InvalidRequest("before_id must be a positive int or None")
    async with _transaction(conn) as cur:
        await _account(cur, account_code)  # AccountNotFound rather than an empty page.
        await cur.execute(
            """
            SELECT e.id, e.journal_id, a.code, e.direction, e.amount_minor, e.currency,
                   j.kind, j.reference, j.posted_at
              FROM entries e
              JOIN accounts a ON a.id = e.account_id
              JOIN journals j ON j.id = e.journal_id
             WHERE a.code = %(code)s AND (%(before)s::bigint IS NULL OR e.id < %(before)s::bigint)
             ORDER BY e.id DESC
             LIMIT %(limit)s
            """,
            {"code": account_code, "before": before_id, "limit": limit},
        )
        rows = await cur.fetchall()
    return [
        model.Entry(
            id=int(id_),
            journal_id=int(journal_id),
            account_code=str(code),
            direction=model.Direction(direction),
            amount_minor=model.check_amount(amount),
            currency=model.check_currency(currency),
            journal_kind=model.PostingKind(kind),
            reference=None if reference is None else str(reference),
            posted_at=posted_at,
        )
        for id_, journal_id, code, direction, amount, currency, kind, reference, posted_at in rows
    ]


async def trial_balance(conn: AsyncConnection[Any]) -> dict[str, tuple[int, int]]:
    """Total (debits, credits) per currency over all accounts; equal when the ledger is sound."""
    async with _transaction(conn) as cur:
        await cur.execute(
            "SELECT a.currency, coalesce(sum(b.debits_minor), 0), coalesce(sum(b.credits_minor), 0)"
            " FROM accounts a JOIN account_balances b ON b.account_id = a.id"
            " GROUP BY a.currency ORDER BY a.currency"
        )
        rows = await cur.fetchall()
    return {
        str(currency): (_exact_int(debits, "debits"), _exact_int(credits, "credits"))
        for currency, debits, credits in rows
    }


async def balance_drift(conn: AsyncConnection[Any]) -> list[str]:
    """Codes of accounts whose running balance disagrees with their entries (always empty).

    A full scan of the entries: a reconciliation check, not something to run per request.
    """
    async with _transaction(conn) as cur:
        # And accounts whose balance rows are not of their shape (migration 0058's stripes).
        await cur.execute(
            "SELECT code FROM ledger_balance_drift UNION"
            " SELECT code FROM ledger_balance_stripe_drift ORDER BY code"
        )
        return [str(code) for (code,) in await cur.fetchall()]


async def _account(cur: Cursor, code: str) -> model.Account:
    await cur.execute(
        "SELECT id, code, kind, normal_balance, currency, status, metadata, created_at, closed_at"
        " FROM accounts WHERE code = %s",
        (code,),
    )
    row = await cur.fetchone()
    if row is None:
        raise model.AccountNotFound(f"account {code} does not exist")
    id_, code_, kind, normal, currency, status, metadata, created_at, closed_at = row
    return model.Account(
        id=int(id_),
        code=str(code_),
        kind=model.AccountKind(kind),
        normal_balance=model.Direction(normal),
        currency=str(currency),
        status=model.AccountStatus(status),
        metadata=dict(metadata),
        created_at=created_at,
        closed_at=closed_at,
    )


def _exact_int(value: object, what: str) -> int:
    """Sums come back as ``numeric``; accept them only when they are whole numbers."""
    if type(value) is int:
        return value
    if isinstance(value, Decimal) and value == value.to_integral_value():
        return int(value)
    raise model.InvariantViolation(f"{what} read back as {value!r}, not a whole number")


__all__ = [
    "DEFAULT_LIMITS",
    "AccountOwnedByAnotherCard",
    "CardAccountOwner",
    "CardFreeze",
    "Check",
    "Limits",
    "account",
    "balance",
    "balance_drift",
    "card_account_owners",
    "card_freezes",
    "close_account",
    "ensure_system_accounts",
    "entries",
    "in_transaction",
    "journal",
    "journal_by_key",
    "open_account",
    "open_card_account",
    "post",
    "post_nested",
    "reverse",
    "reverse_nested",
    "set_frozen",
    "trial_balance",
    "write_events",
]
