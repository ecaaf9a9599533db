"""The contract between the HTTP gateway and the authorization store (real-time authorizations).

The gateway (``fintech_operator.gateway``) owns HTTP: signatures, body limits, deadlines, the
in-flight limit and turning :class:`Answer` into a response. The store
(``fintech_operator.authorizations.store``) owns money: holds, captures, voids, expiry, the decision
records and their outbox events, all in PostgreSQL. Neither imports the other's internals; both
import this module.

Every request carries its own id, which is its idempotency key: a retry with the same body gets the
first answer byte for byte (``Answer.body`` is stored with the decision), the same id with a
different body is a 409 naming the field that differs.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Annotated, Any, Final, Protocol

import psycopg
import pydantic

from fintech_operator.api.common import PositiveAmountMinor

# Ids come from the card network or processor; 128 characters is far above any real one and keeps
# a hostile id from bloating an index row.
REQUEST_ID_MAX_LENGTH: Final = 128
CARD_TOKEN_MAX_LENGTH: Final = 128
MERCHANT_NAME_MAX_LENGTH: Final = 128

RequestId = Annotated[
    str,
    pydantic.Field(min_length=1, max_length=REQUEST_ID_MAX_LENGTH, pattern=r"^[A-Za-z0-9._:-]+$"),
]
Currency = Annotated[str, pydantic.Field(pattern=r"^[A-Z]{3}$")]
# Free text (a merchant's name, a card's token): no control characters. A NUL byte could not be
# stored (PostgreSQL's text refuses it) and would otherwise reach the store as a server error,
# declined IssuerUnavailable; a card network's text fields never carry control characters.
_NO_CONTROL: Final = r"^[^\x00-\x1f\x7f]+$"
CardToken = Annotated[
    str, pydantic.Field(min_length=1, max_length=CARD_TOKEN_MAX_LENGTH, pattern=_NO_CONTROL)
]
Mcc = Annotated[str, pydantic.Field(pattern=r"^[0-9]{4}$")]
Country = Annotated[str, pydantic.Field(pattern=r"^[A-Z]{2}$")]


class _Request(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="forbid", frozen=True, strict=True)


class Merchant(_Request):
    name: Annotated[
        str, pydantic.Field(min_length=1, max_length=MERCHANT_NAME_MAX_LENGTH, pattern=_NO_CONTROL)
    ]
    mcc: Mcc
    country: Country


class AuthorizeRequest(_Request):
    """``POST /v1/authorizations``: the network asks whether a purchase may go ahead."""

    id: RequestId
    card: CardToken
    amount: PositiveAmountMinor
    currency: Currency
    merchant: Merchant


class IncrementRequest(_Request):
    """``POST /v1/authorizations/{id}/increments``: raise the hold (hotels, fuel)."""

    id: RequestId
    amount: PositiveAmountMinor


class CaptureRequest(_Request):
    """``POST /v1/authorizations/{id}/captures``: clear part or all of the hold.

    ``final`` releases whatever is left of the hold after this capture. A capture of an
    authorization that expired or was declined is a force post; of one the issuer never saw, it
    is a force post only when it names ``card`` (and ``currency``), else a 404.
    """

    id: RequestId
    amount: PositiveAmountMinor
    final: bool = False
    # ``card`` names the card when the issuer holds no authorization of this id (never seen, or
    # lost): the capture is then a force post on this card, in this currency, if its product
    # allows it. For an authorization the issuer holds, ``card``, when given, must be the token
    # it was made with: else 409 CardMismatch (migration 0074). ``currency``, when given, must
    # be the authorization's (or, for a force post, the card's): else 409 CurrencyMismatch
    # (migration 0073).
    card: CardToken | None = None
    currency: Currency | None = None


class VoidRequest(_Request):
    """``POST /v1/authorizations/{id}/void``: release what is left of the hold."""

    id: RequestId


class Reason(enum.StrEnum):
    """Why an authorization was declined or a follow-up refused: a documented, fixed set.

    ``RiskDeclined`` is sent as ``RiskDeclined:<rule>``; every other reason is sent as is.
    """

    APPROVED = "Approved"
    CARD_NOT_FOUND = "CardNotFound"
    CARD_NOT_ACTIVE = "CardNotActive"
    CURRENCY_MISMATCH = "CurrencyMismatch"
    INSUFFICIENT_FUNDS = "InsufficientFunds"
    SPEND_LIMIT_EXCEEDED = "SpendLimitExceeded"
    RISK_DECLINED = "RiskDeclined"
    COMPLIANCE_DECLINED = "ComplianceDeclined"
    ISSUER_UNAVAILABLE = "IssuerUnavailable"
    OVERLOADED = "Overloaded"


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """What the gateway sends: the HTTP status and the exact JSON body bytes.

    ``replayed`` is true when this is the stored answer of an earlier request with the same id.
    """

    status_code: int
    body: bytes
    replayed: bool = False


class StoreConnection(psycopg.AsyncConnection[Any]):
    """The gateway's connections (``AsyncConnectionPool(connection_class=...)``): the store calls
    its functions on them through libpq's prepared statements directly, not through a cursor.

    A cursor's ``execute`` adapts the parameters, looks the statement up in psycopg's prepared
    cache and builds its result loaders on every call: 12% of the client's instructions per
    store call (bench/RESULTS.md, issue 13, "The store's calls through libpq"). The store
    prepares each of its statements once per connection, under a name of its own, and records
    the name here; a connection serves one request at a time (the pool lends it to one, and the
    store holds the connection's lock while it talks to the server).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The names this connection's session has prepared (store._call_prepared's).
        self.prepared_names: set[bytes] = set()


class Store(Protocol):
    """The store's public surface. Each call is one database transaction on ``conn``.

    ``authorize`` answers 200 for approvals and declines alike (``approved`` says which); follow-ups
    answer 404 for an unknown authorization, 409 for a refused transition or an id reused with a
    different body, 200 otherwise.
    """

    async def authorize(
        self, conn: psycopg.AsyncConnection[object], req: AuthorizeRequest
    ) -> Answer: ...

    async def increment(
        self, conn: psycopg.AsyncConnection[object], authorization_id: str, req: IncrementRequest
    ) -> Answer: ...

    async def capture(
        self, conn: psycopg.AsyncConnection[object], authorization_id: str, req: CaptureRequest
    ) -> Answer: ...

    async def void(
        self, conn: psycopg.AsyncConnection[object], authorization_id: str, req: VoidRequest
    ) -> Answer: ...

    async def get(self, conn: psycopg.AsyncConnection[object], authorization_id: str) -> Answer: ...

    async def settle_timed_out(
        self, conn: psycopg.AsyncConnection[object], request_id: str, age_seconds: float
    ) -> None:
        """After the gateway declined ``request_id`` with IssuerUnavailable because its deadline
        passed: make sure no hold of the timed-out attempt survives (release it if its
        transaction did commit late) and record the declined answer so a retry gets
        IssuerUnavailable too, unless nothing was committed, in which case the decline is
        stored for every retry.

        ``age_seconds`` is how long ago the gateway received that attempt. An answer committed
        before then belongs to an earlier attempt of the same id: it is the id's first committed
        answer and is left exactly as it is (its hold too, whatever happened to it since), so a
        retry, however late, gets it."""
        ...
