"""Status patches are written through typed models: only what is set, validated first."""

from __future__ import annotations

from typing import Any

import kopf
import pydantic
import pytest

from fintech_operator import api
from fintech_operator.handlers import report


def _body(status: dict[str, Any]) -> kopf.Body:
    meta = {"name": "c1", "namespace": "ns1", "uid": "u1", "generation": 4}
    return kopf.Body({"metadata": meta, "status": status})


def test_only_the_fields_given_are_written_and_none_clears() -> None:
    patch = kopf.Patch()
    report.write_status(patch, api.CardStatus(phase=api.CardPhase.ACTIVE, reason=None))
    assert dict(patch["status"]) == {"phase": "Active", "reason": None}


def test_a_bad_value_fails_before_anything_is_written() -> None:
    patch = kopf.Patch()
    with pytest.raises(pydantic.ValidationError):
        report.write_status(patch, api.CardStatus.model_validate({"last4": "12345"}))
    with pytest.raises(pydantic.ValidationError):
        report.reject(_body({}), patch, "not a reason!", "message")
    assert "status" not in patch


def test_a_rejection_writes_phase_reason_message_and_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kopf, "warn", lambda *_, **__: None)
    patch = kopf.Patch()
    report.reject(_body({"phase": "Pending"}), patch, "CardNotFound", "no card c9")
    status = dict(patch["status"])
    assert (status["phase"], status["reason"], status["message"]) == (
        "Rejected", "CardNotFound", "no card c9",
    )  # fmt: skip
    assert status["observedGeneration"] == 4
    [ready] = status["conditions"]
    assert (ready["type"], ready["status"], ready["reason"]) == ("Ready", "False", "CardNotFound")
