"""Standard Webhooks signing: the published test vector, verification, and refusals."""

from __future__ import annotations

import base64

import pytest

from fintech_operator.notify import signing

# The specification's published vector (standard-webhooks/standard-webhooks, and every
# reference library's tests): reproducing it is what proves a receiver library accepts ours.
VECTOR_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
VECTOR_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
VECTOR_TIMESTAMP = 1614265330
VECTOR_BODY = b'{"test": 2432232314}'
VECTOR_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
KEY = signing.parse_secret(VECTOR_SECRET)


def test_signature_matches_the_specification_test_vector() -> None:
    """Our signer reproduces the reference implementations' signature byte for byte."""
    assert signing.sign(KEY, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY) == VECTOR_SIGNATURE


def test_the_whsec_prefix_is_optional() -> None:
    """Secrets with and without the whsec_ prefix are the same key."""
    assert signing.parse_secret(VECTOR_SECRET.removeprefix("whsec_")) == KEY
    assert signing.format_secret(KEY) == VECTOR_SECRET


def test_headers_carry_id_timestamp_and_signature() -> None:
    """The three headers a receiver needs, with the id unchanged across retries."""
    headers = signing.headers(KEY, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    assert headers == {
        "webhook-id": VECTOR_ID,
        "webhook-timestamp": str(VECTOR_TIMESTAMP),
        "webhook-signature": VECTOR_SIGNATURE,
    }


def test_verify_accepts_a_valid_request_and_any_rotated_signature() -> None:
    """A receiver accepts the request when one of several signatures matches (rotation)."""
    headers = signing.headers(KEY, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    headers["Webhook-Signature"] = "v1,bm9wZQ== " + headers.pop("webhook-signature")
    assert signing.verify(KEY, headers, VECTOR_BODY, now=VECTOR_TIMESTAMP + 10) == VECTOR_ID


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"body": b'{"test": 2432232315}'}, "no valid signature"),
        ({"now": VECTOR_TIMESTAMP + 301}, "tolerance"),
        ({"now": VECTOR_TIMESTAMP - 301}, "tolerance"),
        ({"drop": "webhook-id"}, "missing header"),
        ({"drop": "webhook-signature"}, "missing header"),
        ({"set": ("webhook-timestamp", "soon")}, "not an integer"),
        ({"set": ("webhook-signature", "v2," + VECTOR_SIGNATURE[3:])}, "no valid signature"),
        ({"set": ("webhook-id", "msg_other")}, "no valid signature"),
        ({"key": bytes(24)}, "no valid signature"),
    ],
)
def test_verify_refuses_tampering_replays_and_missing_headers(
    change: dict[str, object], match: str
) -> None:
    """A changed body, id or key, an old or future timestamp, or a missing header fails."""
    headers = signing.headers(KEY, VECTOR_ID, VECTOR_TIMESTAMP, VECTOR_BODY)
    if "drop" in change:
        del headers[str(change["drop"])]
    if "set" in change:
        name, value = change["set"]  # type: ignore[misc]
        headers[name] = value
    body = change.get("body", VECTOR_BODY)
    now = change.get("now", VECTOR_TIMESTAMP)
    key = change.get("key", KEY)
    with pytest.raises(signing.SigningError, match=match):
        signing.verify(key, headers, body, now=now)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_",
        "whsec_not base64!",
        "whsec_" + base64.b64encode(bytes(23)).decode(),
        "whsec_" + base64.b64encode(bytes(65)).decode(),
        "whsec_QUJD",  # Valid base64, 3 bytes.
        42,
    ],
)
def test_bad_secrets_are_refused(secret: object) -> None:
    """Empty, non-base64, too short, too long and non-text secrets are refused."""
    with pytest.raises(signing.SigningError):
        signing.parse_secret(secret)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("msg_id", "timestamp", "body"),
    [
        ("has space", 1, b"{}"),
        ("has.dot", 1, b"{}"),
        ("", 1, b"{}"),
        ("x" * 257, 1, b"{}"),
        ("id", -1, b"{}"),
        ("id", 1.5, b"{}"),
        ("id", True, b"{}"),
        ("id", 1, "{}"),
    ],
)
def test_sign_refuses_malformed_inputs(msg_id: str, timestamp: int, body: bytes) -> None:
    """Ids that would make the signed content ambiguous, and non-int times, are refused."""
    with pytest.raises(signing.SigningError):
        signing.sign(KEY, msg_id, timestamp, body)


def test_sign_refuses_short_keys() -> None:
    """A key shorter than the specification's minimum is refused, not used."""
    with pytest.raises(signing.SigningError):
        signing.sign(b"short", "id", 1, b"{}")
