"""The gateway's own answers, and the shapes of the store's, for the OpenAPI document.

The store writes the body of every answer that involved the ledger (approvals, declines,
captures, ...), and the gateway sends those bytes as they are. The gateway itself answers
only what it decides without the ledger: refusals (401, 413, 422) and the two declines the
ledger never saw (``Overloaded``, and ``IssuerUnavailable`` when the deadline passed).
"""

from __future__ import annotations

from typing import Final

import orjson
import pydantic

from fintech_operator.authorizations import contract

FOLLOW_UP_UNAVAILABLE_STATUS: Final = 503
# Stripe's name for the same thing: the answer is the stored one of an earlier request.
REPLAYED_HEADER: Final = "Idempotent-Replayed"


def decline(request_id: str, reason: contract.Reason, *, follow_up: bool) -> contract.Answer:
    """A decline the gateway makes alone: 200 for an authorization (the network's answer is
    a decline), 503 for a follow-up (the processor retries a capture or void later)."""
    body = orjson.dumps(
        {
            "approved": False,
            "reason": str(reason),
            "authorization": request_id,
            "held": None,
            "available": None,
        }
    )
    return contract.Answer(FOLLOW_UP_UNAVAILABLE_STATUS if follow_up else 200, body)


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
    """What every endpoint answers about an authorization (the store's stored body)."""

    approved: bool = pydantic.Field(description="True when the request was applied.")
    reason: str = pydantic.Field(
        description="Approved, or why not: CardNotFound, CardNotActive, CurrencyMismatch, "
        "InsufficientFunds, SpendLimitExceeded, RiskDeclined:<rule>, ComplianceDeclined, "
        "IssuerUnavailable, Overloaded (docs/gateway.md)."
    )
    authorization: str = pydantic.Field(description="The authorization's id.")
    held: int | None = pydantic.Field(
        description="Minor units still held for this authorization after the request."
    )
    available: int | None = pydantic.Field(
        description="The card's available amount after the request, in minor units."
    )


class Refusal(pydantic.BaseModel):
    """A request the gateway did not work on (401, 409, 413, 422)."""

    error: str = pydantic.Field(
        description="unsigned, stale, bad_signature, too_large, invalid, card_number, conflict"
    )
    message: str
    fields: list[str] | None = pydantic.Field(
        default=None, description="422: the fields that are wrong, dotted (merchant.mcc)."
    )
