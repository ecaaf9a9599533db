"""The gateway's own answers, and the shapes of the store's, for the OpenAPI document.

The store writes the body of every answer that involved the ledger (approvals, declines,
captures, ...), and the gateway sends those bytes as they are. The gateway itself answers
only what it decides without the ledger: refusals (401, 413, 422) and the two declines the
ledger never saw (``Overloaded``, and ``IssuerUnavailable`` when the deadline passed; the
store then records that same decline for the request's retries).
"""

from __future__ import annotations

from typing import Final

import orjson
import pydantic

from fintech_operator.authorizations import contract

# Stripe's name for the same thing: the answer is the stored one of an earlier request.
REPLAYED_HEADER: Final = "Idempotent-Replayed"


def decline(request_id: str, reason: contract.Reason) -> contract.Answer:
    """A decline the gateway makes alone, status 200 as every decline.

    The bytes are exactly those the store records for the same request when it settles a
    missed deadline (PostgreSQL's jsonb text: keys by length, then by name; ", " and ": "),
    so the first answer and every retry's are equal byte for byte.
    """
    body = {
        "held": 0,
        "reason": str(reason),
        "status": "declined",
        "approved": False,
        "authorization": request_id,
    }
    return contract.Answer(200, jsonb_text(body))


def jsonb_text(value: dict[str, object]) -> bytes:
    """``value`` as PostgreSQL prints a flat jsonb object (``jsonb::text``)."""
    keys = sorted(value, key=lambda key: (len(key.encode()), key.encode()))
    items = (f"{orjson.dumps(key).decode()}: {orjson.dumps(value[key]).decode()}" for key in keys)
    return ("{" + ", ".join(items) + "}").encode()


def refusal(kind: str, message: str, fields: list[str] | None = None) -> bytes:
    """The body of a 4xx refusal: ``error`` (a fixed word), ``message`` and, for 422, ``fields``."""
    body: dict[str, object] = {"error": kind, "message": message}
    if fields is not None:
        body["fields"] = fields
    return orjson.dumps(body)


def invalid_fields(exc: pydantic.ValidationError) -> tuple[list[str], str]:
    """The dotted names of the fields ``exc`` is about, and one line saying what is wrong.

    The input values are left out on purpose: they are the caller's data, echoed nowhere.
    """
    fields: list[str] = []
    problems: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        name = ".".join(str(part) for part in error["loc"]) or "body"
        if name not in fields:
            fields.append(name)
        problems.append(f"{name}: {error['msg']}")
    return fields, "; ".join(problems[:10])


class AuthorizationAnswer(pydantic.BaseModel):
    """What every endpoint answers about an authorization (the store's stored body). A force
    post's answer describes the capture, not a hold: it has no approved, reason, amount,
    released or expiresAt (docs/authorizations.md, "Force posts")."""

    authorization: str = pydantic.Field(description="The authorization's id.")
    approved: bool | None = pydantic.Field(
        default=None,
        description="True when the request was applied (absent in a force post's answer).",
    )
    reason: str | None = pydantic.Field(
        default=None,
        description="Approved, or why not: CardNotFound, CardNotActive, CurrencyMismatch, "
        "InsufficientFunds, SpendLimitExceeded, RiskDeclined:<rule>, ComplianceDeclined, "
        "IssuerUnavailable, Overloaded (docs/gateway.md); absent in a force post's answer.",
    )
    status: str = pydantic.Field(
        description="The authorization's state: pending, closed (captured/voided), expired, "
        "declined; unknown in a force post's answer for an authorization never seen."
    )
    request: str | None = pydantic.Field(
        default=None,
        description="The step's own request id (increments, captures, voids).",
    )
    forcePost: bool | None = pydantic.Field(
        default=None, description="Captures: true when the capture was a force post."
    )
    currency: str | None = None
    amount: int | None = pydantic.Field(default=None, description="Authorized, minor units.")
    held: int = pydantic.Field(description="Still held for this authorization, minor units.")
    captured: int | None = pydantic.Field(
        default=None, description="Captured so far (a force post: this capture's amount)."
    )
    released: int | None = pydantic.Field(default=None, description="Released so far.")
    available: int | None = pydantic.Field(
        default=None, description="The card's available amount after the request, minor units."
    )
    expiresAt: str | None = pydantic.Field(
        default=None, description="When an uncaptured hold is released (RFC 3339)."
    )


class Refusal(pydantic.BaseModel):
    """A request that was not applied: refused by the gateway (401, 413, 422) or the store
    (404, 409)."""

    error: str = pydantic.Field(
        description="unsigned, stale, bad_signature, too_large, invalid, card_number (the "
        "gateway); AuthorizationNotFound, CardNotFound, AuthorizationVoided, "
        "AuthorizationCaptured, AuthorizationExpired, AuthorizationDeclined, OverCapture, "
        "CardNotActive, ForcePostNotAllowed, CardMismatch, CurrencyMismatch, "
        "IdempotencyConflict (the store; docs/authorizations.md)"
    )
    message: str
    fields: list[str] | None = pydantic.Field(
        default=None, description="422: the fields that are wrong, dotted (merchant.mcc)."
    )
    field: str | None = pydantic.Field(
        default=None, description="409 IdempotencyConflict: the field that differs."
    )
    authorization: str | None = pydantic.Field(
        default=None, description="The authorization a store refusal is about."
    )
