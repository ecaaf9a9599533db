"""The authorization store on PostgreSQL: one statement per request (issue 13, item 7).

Every decision, hold, capture, void and its outbox event is made by a plpgsql function of
migration 0050 (``authorization_authorize``, ``authorization_capture``, ...), in the transaction
of that one statement: the card's row lock, the limit check, the hold, the journal, the event
and the stored answer all commit together or not at all. This module only passes the validated
request in and hands the stored answer bytes back, so a retry gets the first answer byte for byte.

Round trips: on an autocommit connection a call is exactly one round trip (the statement is its
own transaction, prepared once per connection). On a connection that is not in autocommit mode
the call is wrapped in a transaction (or a savepoint inside the caller's), which adds BEGIN and
COMMIT. The gateway passes autocommit connections.

Error policy (the ledger's, house rule 8): a unique violation means a racer with the same request
id committed first, so the call is asked again and replays the racer's answer; serialization
failures and deadlocks are retried; both at most ``attempts_max`` times. Any other
``psycopg.Error`` (connection lost, statement timeout, cancelled by the gateway's deadline) is
raised: the statement's transaction rolled back and nothing was written.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, LiteralString, TypeVar

import orjson
import psycopg
from psycopg import errors, generators, pq

from fintech_operator.authorizations import contract
from fintech_operator.observability import tracing

_AUTHORIZE: Final = "SELECT * FROM authorization_authorize(%s, %s, %s, %s, %s, %s, %s, %s)"
_INCREMENT: Final = "SELECT * FROM authorization_increment(%s, %s, %s, %s)"
_CAPTURE: Final = "SELECT * FROM authorization_capture(%s, %s, %s, %s, %s, %s, %s)"
_VOID: Final = "SELECT * FROM authorization_void(%s, %s, %s)"
_GET: Final = "SELECT * FROM authorization_get(%s)"
_SETTLE: Final = "SELECT authorization_settle_timed_out(%s, %s, %s)"
_EXPIRE: Final = "SELECT authorization_expire(%s, %s)"
_RETRYABLE: Final = (errors.UniqueViolation, errors.SerializationFailure, errors.DeadlockDetected)
# Expiry batches: enough to keep up with any realistic rate, small enough to hold card locks
# only briefly (a locked card is skipped, never waited for).
EXPIRE_BATCH_MAX: Final = 10_000
# A settle is retried for FINTECH_GATEWAY_SETTLE_TIMEOUT_SECONDS (at most an hour): an attempt
# older than a day is a bug of the caller; the database refuses it too.
SETTLE_AGE_SECONDS_MAX: Final = 86_400.0


_T = TypeVar("_T")


class InvariantViolation(RuntimeError):
    """An answer read back from the database breaks a money invariant: a bug, never bad input."""


@dataclasses.dataclass(frozen=True)
class PostgresStore:
    """:class:`contract.Store` on PostgreSQL (migration 0050's functions)."""

    attempts_max: int = 3  # Tries of one call when a same-id racer or a deadlock intervenes.

    def __post_init__(self) -> None:
        if not 1 <= self.attempts_max <= 10:
            raise ValueError(f"attempts_max must be in 1..10, got {self.attempts_max}")

    async def authorize(
        self, conn: psycopg.AsyncConnection[Any], req: contract.AuthorizeRequest
    ) -> contract.Answer:
        merchant = req.merchant
        params = (req.id, req.card, req.amount, req.currency, merchant.name, merchant.mcc,
                  merchant.country, _headers())  # fmt: skip
        return await self._answer(conn, _AUTHORIZE, params, approval=True)

    async def increment(
        self,
        conn: psycopg.AsyncConnection[Any],
        authorization_id: str,
        req: contract.IncrementRequest,
    ) -> contract.Answer:
        params = (authorization_id, req.id, req.amount, _headers())
        return await self._answer(conn, _INCREMENT, params, approval=True)

    async def capture(
        self,
        conn: psycopg.AsyncConnection[Any],
        authorization_id: str,
        req: contract.CaptureRequest,
    ) -> contract.Answer:
        params = (authorization_id, req.id, req.amount, req.final, req.card, req.currency,
                  _headers())  # fmt: skip
        return await self._answer(conn, _CAPTURE, params)

    async def void(
        self, conn: psycopg.AsyncConnection[Any], authorization_id: str, req: contract.VoidRequest
    ) -> contract.Answer:
        return await self._answer(conn, _VOID, (authorization_id, req.id, _headers()))

    async def get(
        self, conn: psycopg.AsyncConnection[Any], authorization_id: str
    ) -> contract.Answer:
        return await self._answer(conn, _GET, (authorization_id,))

    async def settle_timed_out(
        self, conn: psycopg.AsyncConnection[Any], request_id: str, age_seconds: float
    ) -> None:
        """See :meth:`contract.Store.settle_timed_out`: release a late approval's hold once and
        store the IssuerUnavailable decline for every retry of ``request_id``; an answer that
        an earlier attempt committed (before ``age_seconds`` ago) stands (migration 0056).

        The gateway settles captures and voids too: one that committed late keeps its answer
        (nothing is undone), and one that did not has its id reserved for the decline, so a
        retry of that id gets the same IssuerUnavailable bytes, replayed, with nothing captured
        or released (migration 0074), and the processor sends it again with a new id
        (docs/authorizations.md, "The gateway's deadline").
        """
        if not 0 <= age_seconds <= SETTLE_AGE_SECONDS_MAX:
            raise ValueError(f"age_seconds must be in 0..{SETTLE_AGE_SECONDS_MAX}")
        await self._scalar(conn, _SETTLE, (request_id, float(age_seconds), _headers()))

    async def expire(self, conn: psycopg.AsyncConnection[Any], batch_max: int) -> int:
        """Expire at most ``batch_max`` due authorizations (releasing their holds, each exactly
        once, with an ``authorization.expired`` event); return how many."""
        if type(batch_max) is not int or not 1 <= batch_max <= EXPIRE_BATCH_MAX:
            raise ValueError(f"batch_max must be an int in 1..{EXPIRE_BATCH_MAX}")
        return int(await self._scalar(conn, _EXPIRE, (batch_max, _headers())))

    async def _answer(
        self,
        conn: psycopg.AsyncConnection[Any],
        query: LiteralString,
        params: tuple[object, ...],
        *,
        approval: bool = False,
    ) -> contract.Answer:
        answer = await self._retrying(lambda: _call_answer(conn, query, params))
        if approval:
            check_approval(answer)
        return answer

    async def _scalar(
        self, conn: psycopg.AsyncConnection[Any], query: LiteralString, params: tuple[object, ...]
    ) -> Any:
        return (await self._retrying(lambda: _execute(conn, query, params)))[0]

    async def _retrying(self, call: Callable[[], Awaitable[_T]]) -> _T:
        """``call()``, asked again after a same-id racer's unique violation, a serialization
        failure or a deadlock, at most ``attempts_max`` times in all."""
        attempt = 1
        while True:
            try:
                return await call()
            except _RETRYABLE:
                if attempt >= self.attempts_max:
                    raise
                attempt += 1


async def _execute(
    conn: psycopg.AsyncConnection[Any], query: LiteralString, params: tuple[object, ...]
) -> tuple[Any, ...]:
    """Run ``query`` as one statement and return its one row."""
    # Binary results: ints as they are (settle, expire).
    cur = conn.cursor(binary=True)
    if conn.autocommit:
        # One round trip: the statement is its own transaction.
        await cur.execute(query, params, prepare=True)
        row = await cur.fetchone()
    else:
        async with conn.transaction():
            await cur.execute(query, params, prepare=True)
            row = await cur.fetchone()
    if row is None:
        raise InvariantViolation(f"{query.split('(')[0]} returned no row")
    return tuple(row)


async def _call_answer(
    conn: psycopg.AsyncConnection[Any], query: LiteralString, params: tuple[object, ...]
) -> contract.Answer:
    """Call one of the store's functions that answer ``(status_code, answer, replayed)``.

    On a :class:`contract.StoreConnection` in autocommit mode (the gateway's) the call goes
    through libpq's prepared statements directly (:func:`_call_prepared`); any other
    connection takes psycopg's cursor, in a transaction of its own or a savepoint of the
    caller's."""
    if isinstance(conn, contract.StoreConnection) and conn.autocommit:
        return await _call_prepared(conn, query, params)
    status_code, body, replayed = await _execute(conn, query, params)
    return contract.Answer(int(status_code), bytes(body), bool(replayed))


# The answer's columns as the functions declare them: int4, bytea, bool (binary results).
_ANSWER_TYPES: Final = (23, 17, 16)


@functools.cache
def _statement(query: LiteralString) -> tuple[bytes, bytes]:
    """A query's prepared-statement name and its text with ``$n`` placeholders. The name is
    the store's own (``fo_`` and the function's name), never one of psycopg's (``_pg3_n``)."""
    function = query.split("FROM ", 1)[1].split("(", 1)[0]
    pieces = query.split("%s")
    text = pieces[0] + "".join(f"${n}{piece}" for n, piece in enumerate(pieces[1:], 1))
    return f"fo_{function}".encode(), text.encode()


async def _call_prepared(
    conn: contract.StoreConnection, query: LiteralString, params: tuple[object, ...]
) -> contract.Answer:
    """One round trip: ``EXECUTE`` of the query's prepared statement, binary results.

    The statement is prepared on the connection's first call (a second round trip, once).
    Holds the connection's lock, as psycopg's cursor does. A cancelled call (the gateway's
    deadline) cancels the statement on the server and drains the connection (psycopg's
    ``wait``); a server error is raised as psycopg raises it (``psycopg.errors``)."""
    name, text = _statement(query)
    values = [_text_value(param) for param in params]
    async with conn.lock:
        try:
            return _answer_row(await _execute_prepared(conn, name, text, values), name)
        except errors.InvalidSqlStatementName:
            # The session lost the statement (DISCARD ALL, DEALLOCATE), so nothing ran:
            # prepare it again and call once more.
            conn.prepared_names.discard(name)
        return _answer_row(await _execute_prepared(conn, name, text, values), name)


async def _execute_prepared(
    conn: contract.StoreConnection, name: bytes, text: bytes, values: list[bytes | None]
) -> pq.abc.PGresult:
    pgconn = conn.pgconn
    if name not in conn.prepared_names:
        pgconn.send_prepare(name, text)
        _one_result(await conn.wait(generators.execute(pgconn)), pq.ExecStatus.COMMAND_OK)
        conn.prepared_names.add(name)
    pgconn.send_query_prepared(name, values, result_format=pq.Format.BINARY)
    return _one_result(await conn.wait(generators.execute(pgconn)), pq.ExecStatus.TUPLES_OK)


def _one_result(results: list[pq.abc.PGresult], expected: pq.ExecStatus) -> pq.abc.PGresult:
    """The one result of a call, or its error raised as psycopg raises it."""
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            raise errors.error_from_result(result)
    if len(results) != 1 or results[0].status != expected:
        raise InvariantViolation(f"expected one {expected.name} result, got {len(results)}")
    return results[0]


def _answer_row(result: pq.abc.PGresult, name: bytes) -> contract.Answer:
    """The answer's one row, read from its binary values after checking its shape."""
    types = tuple(result.ftype(column) for column in range(result.nfields))
    if result.ntuples != 1 or types != _ANSWER_TYPES:
        raise InvariantViolation(
            f"{name.decode()} answered {result.ntuples} rows of types {types}, not one answer"
        )
    status_code, body, replayed = (result.get_value(0, column) for column in range(3))
    if status_code is None or body is None or replayed is None:
        raise InvariantViolation(f"{name.decode()} answered a NULL")
    return contract.Answer(
        int.from_bytes(status_code, "big", signed=True), bytes(body), replayed == b"\x01"
    )


def _text_value(value: object) -> bytes | None:
    """A parameter in PostgreSQL's text format, typed by the function's signature on the server.

    libpq reads a text parameter up to its first NUL byte, so a string with one is refused
    here, with psycopg's own error, instead of reaching the server cut short."""
    if value is None:
        return None
    if value is True or value is False:
        return b"t" if value else b"f"
    if type(value) is int:
        return str(value).encode()
    if type(value) is str:
        if "\x00" in value:
            raise psycopg.DataError("PostgreSQL text fields cannot contain NUL (0x00) bytes")
        return value.encode()
    raise TypeError(f"a store parameter must be str, int, bool or None, not {type(value)}")


def _headers() -> str:
    """The trace context, stored with the outbox row so the event continues the request's trace.

    Sent as JSON text of unknown type, which PostgreSQL reads as the function's ``jsonb``
    parameter: orjson writes it in 0.3 us where a psycopg ``Jsonb`` (stdlib json and its
    dumper lookup) took 6 us more per call (issue 13, the client's CPU per request)."""
    return orjson.dumps(tracing.context_headers()).decode()


def check_approval(answer: contract.Answer) -> None:
    """House rule 6: an answer about money is checked after it is read, not trusted.

    An authorization or increment answer never shows a negative hold, capture or release, and
    an approval never leaves the card's available amount negative. (Captures may: an
    over-capture or a force post is money the merchant already took.)
    """
    if answer.status_code != 200:
        return
    body = orjson.loads(answer.body)
    if not isinstance(body, Mapping):
        raise InvariantViolation("an answer must be a JSON object")
    for field in ("held", "captured", "released"):
        value = body.get(field, 0)
        if type(value) is not int or value < 0:
            raise InvariantViolation(f"answer field {field} is {value!r}")
    available = body.get("available")
    if body.get("approved") is True and available is not None and available < 0:
        raise InvariantViolation(f"an approval left available at {available}")


__all__ = ["EXPIRE_BATCH_MAX", "InvariantViolation", "PostgresStore", "check_approval"]
