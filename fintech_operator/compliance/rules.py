"""Issuance checks (pure): KYC status and the outcome of a sanctions screening.

Each returns a :class:`model.CheckResult` whose outcome decides the card:

================  ==========================================  ============
check             situation                                   outcome
================  ==========================================  ============
Kyc               kycStatus Accepted                          Clear
Kyc               kycStatus Pending, policy allows review     Review
Kyc               kycStatus Pending, review not allowed       Reject
Kyc               kycStatus Rejected                          Reject
Sanctions         no list configured                          Clear (NotConfigured)
Sanctions         list unavailable or name unscreenable       Review (fail closed)
Sanctions         normalized name equals a listed name        Reject (ExactMatch)
Sanctions         similarity at or above the threshold        Review (PossibleMatch)
Sanctions         nothing close enough                        Clear (NoMatch)
================  ==========================================  ============
"""

from __future__ import annotations

from fintech_operator import api
from fintech_operator.compliance import model, sanctions


def check_kyc(policy: model.Policy, kyc_status: str) -> model.CheckResult:
    """The KYC gate: only Accepted is issued, Pending may go to review if the policy allows."""
    allow_review = (policy.spec.kyc or api.KycRules()).allow_review
    inputs = {"kycStatus": kyc_status, "allowReview": allow_review}
    if kyc_status == api.KycStatus.ACCEPTED.value:
        return _kyc(model.Outcome.CLEAR, "KycAccepted", "holder KYC status is Accepted", inputs)
    if kyc_status == api.KycStatus.PENDING.value:
        if allow_review:
            return _kyc(
                model.Outcome.REVIEW,
                "KycPending",
                "holder KYC status is Pending; the policy sends such cards to review",
                inputs,
            )
        return _kyc(
            model.Outcome.REJECT,
            "KycNotAccepted",
            "holder KYC status is Pending and the policy does not allow review",
            inputs,
        )
    if kyc_status == api.KycStatus.REJECTED.value:
        return _kyc(model.Outcome.REJECT, "KycRejected", "holder KYC status is Rejected", inputs)
    raise model.InvalidFacts(f"unknown KYC status {kyc_status!r}")


def _kyc(
    outcome: model.Outcome, reason: str, detail: str, inputs: dict[str, object]
) -> model.CheckResult:
    return model.CheckResult(model.CheckKind.KYC, outcome, reason, detail, inputs=inputs)


def sanctions_not_configured() -> model.CheckResult:
    return model.CheckResult(
        model.CheckKind.SANCTIONS,
        model.Outcome.CLEAR,
        "NotConfigured",
        "no sanctions list is configured for the namespace; the name was not screened",
    )


def sanctions_unavailable(why: str, list_ref: str) -> model.CheckResult:
    """Fail closed: a card is never cleared because its screening could not run."""
    return model.CheckResult(
        model.CheckKind.SANCTIONS,
        model.Outcome.REVIEW,
        "ScreeningUnavailable",
        f"the sanctions list {list_ref} could not be used: {why}",
        inputs={"list": list_ref},
    )


def check_sanctions(
    screener: sanctions.Screener, name: str, threshold_bps: int, list_ref: str
) -> model.CheckResult:
    """Screen the holder's name; exact rejects, at or above the threshold reviews."""
    inputs = {
        "name": name,
        "list": list_ref,
        "listNames": screener.size,
        "thresholdBps": threshold_bps,
    }
    try:
        result = screener.screen(name, threshold_bps)
    except sanctions.InvalidName as exc:
        return model.CheckResult(
            model.CheckKind.SANCTIONS,
            model.Outcome.REVIEW,
            "UnscreenableName",
            str(exc),
            inputs=inputs,
        )
    details = {
        "query": result.query,
        "hits": [_hit(hit).to_json() for hit in ((result.exact,) if result.exact else ())]
        + [_hit(hit).to_json() for hit in result.hits],
    }
    best = result.best
    if best is None:
        return model.CheckResult(
            model.CheckKind.SANCTIONS,
            model.Outcome.CLEAR,
            "NoMatch",
            f"no listed name reaches {threshold_bps} bps",
            inputs=inputs,
            result=details,
        )
    hit = _hit(best)
    if best.exact:
        return model.CheckResult(
            model.CheckKind.SANCTIONS,
            model.Outcome.REJECT,
            "ExactMatch",
            f"the holder's name is listed: {best.entry.name} ({_entry_text(best)})",
            inputs=inputs,
            result=details,
            hit=hit,
        )
    return model.CheckResult(
        model.CheckKind.SANCTIONS,
        model.Outcome.REVIEW,
        "PossibleMatch",
        f"the holder's name resembles {best.entry.name} ({_entry_text(best)}) at "
        f"{best.score_bps} bps",
        inputs=inputs,
        result=details,
        hit=hit,
    )


def _hit(hit: sanctions.Hit) -> model.SanctionsHit:
    return model.SanctionsHit(
        name=hit.entry.name,
        entry_id=hit.entry.entry_id,
        program=hit.entry.program,
        score_bps=hit.score_bps,
        exact=hit.exact,
    )


def _entry_text(hit: sanctions.Hit) -> str:
    parts = [f"entry {hit.entry.entry_id}" if hit.entry.entry_id else "entry without id"]
    if hit.entry.program:
        parts.append(f"program {hit.entry.program}")
    return ", ".join(parts)
