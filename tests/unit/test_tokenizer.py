"""Tokenizers keep only a token and the last four digits: the built-in one, and the checks
of the card processor's answers (the HTTP exchange itself: tests/integration)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fintech_operator import config, pan
from fintech_operator.cards import http_tokenizer, tokenizer


@pytest.mark.parametrize(
    ("number", "valid"),
    [
        ("4111111111111111", True),
        ("4111111111111112", False),
        ("79927398713", True),
        ("", False),
        ("4a11", False),
    ],
)
def test_luhn(number: str, valid: bool) -> None:
    """The Luhn check accepts known-good numbers and refuses altered or non-digit ones."""
    assert pan.luhn_valid(number) is valid


async def test_issue_returns_token_and_last4_only() -> None:
    """An issued card exposes a token and four digits; two issues never share a token."""
    first = await tokenizer.BuiltinTokenizer().issue("ns/card-a")
    second = await tokenizer.BuiltinTokenizer().issue("ns/card-b")
    assert first.token.startswith("tok_")
    assert len(first.last4) == 4
    assert first.last4.isdigit()
    assert first.token != second.token
    assert set(vars(first)) == {"token", "last4"}


@pytest.mark.parametrize(("token", "last4"), [("tok_x", "123"), ("abc", "1234"), ("tok_x", "12a4")])
def test_issued_token_refuses_malformed_values(token: str, last4: str) -> None:
    """A token without the prefix or a last4 that is not four digits is refused."""
    with pytest.raises(ValueError, match=r"last4|token"):
        tokenizer.IssuedToken(token=token, last4=last4)


# --- The card processor's tokenizer: its response is checked strictly (pure) --------------------

PAN = "4111111111111111"  # The well-known test card number (Luhn-valid).


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def test_a_valid_response_gives_token_and_last4() -> None:
    """201 with a tok_ token and four digits; other fields are ignored."""
    issued = http_tokenizer.parse_response(
        201, body(token="tok_9f8e7d6c5b4a", last4="0042", network="visa")
    )
    assert (issued.token, issued.last4) == ("tok_9f8e7d6c5b4a", "0042")


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"<html>ok</html>", "not JSON"),
        (b"[]", "not a JSON object"),
        (body(last4="4242"), "no valid token"),
        (body(token="9f8e7d6c", last4="4242"), "no valid token"),
        (body(token="tok_", last4="4242"), "no valid token"),
        (body(token="tok_" + "a" * 61, last4="4242"), "no valid token"),
        (body(token="tok_a b", last4="4242"), "no valid token"),
        (body(token=["tok_a"], last4="4242"), "no valid token"),
        (body(token="tok_123456789012", last4="4242"), "long run of digits"),
        (body(token="tok_abc"), "no valid last4"),
        (body(token="tok_abc", last4="123"), "no valid last4"),
        (body(token="tok_abc", last4="12345"), "no valid last4"),
        (body(token="tok_abc", last4="12a4"), "no valid last4"),
        (body(token="tok_abc", last4=4242), "no valid last4"),
        (body(token="tok_abc", last4="٤٢٤٢"), "no valid last4"),
        (b"x" * (http_tokenizer.RESPONSE_BYTES_MAX + 1), "larger than"),
    ],
)
def test_malformed_responses_are_refused_as_unavailable(raw: bytes, why: str) -> None:
    """A 2xx that breaks the contract is not a card: retried, saying what was wrong."""
    with pytest.raises(http_tokenizer.TokenizerUnavailable, match=why):
        http_tokenizer.parse_response(200, raw)


@pytest.mark.parametrize(
    ("status", "raw"),
    [
        (200, body(token="tok_abc", last4="1111", pan=PAN)),
        (200, body(token=f"tok_{PAN}", last4="1111")),
        (200, body(token="tok_abc", last4="1111", note="card 4111 1111 1111 1111")),
        (422, body(error={"code": "declined", "message": f"card {PAN} declined"})),
        (500, f"upstream said {PAN}".encode()),
    ],
)
def test_a_card_number_anywhere_refuses_the_response_without_echoing_it(
    status: int, raw: bytes
) -> None:
    """Invariant 7: a PAN in any field, any status, is refused and never quoted back."""
    with pytest.raises(http_tokenizer.TokenizerUnavailable, match="contained a card number") as e:
        http_tokenizer.parse_response(status, raw)
    assert "1111111111" not in e.value.message
    assert "1111 1111" not in e.value.message


@pytest.mark.parametrize("status", [400, 402, 410, 422])
def test_a_4xx_about_the_card_is_a_refusal_with_the_processors_words(status: int) -> None:
    """A refusal of this card is final and carries the processor's code and message."""
    raw = body(error={"code": "card_limit", "message": "user\nhas too\x00 many cards"})
    with pytest.raises(http_tokenizer.TokenizerRefused) as caught:
        http_tokenizer.parse_response(status, raw)
    assert caught.value.reason == "TokenizerRefused"
    assert caught.value.message == (
        f"the card processor refused the card (HTTP {status}): card_limit: user has too many cards"
    )


def test_a_refusal_message_is_bounded() -> None:
    """A processor's long message is cut, so a status or Event stays small."""
    with pytest.raises(http_tokenizer.TokenizerRefused) as caught:
        http_tokenizer.parse_response(400, body(error="x" * 5000))
    assert len(caught.value.message) < 400


@pytest.mark.parametrize(
    ("status", "why"),
    [
        (401, "credentials"),
        (403, "credentials"),
        (404, "FINTECH_TOKENIZER_URL"),
        (302, "redirect"),
        (408, "unavailable"),
        (409, "unavailable"),  # still working on this idempotency key
        (429, "unavailable"),
        (500, "unavailable"),
        (503, "unavailable"),
    ],
)
def test_outages_and_configuration_errors_are_retried(status: int, why: str) -> None:
    """Not this card's fault: the handler retries with backoff; fixing the config helps."""
    with pytest.raises(http_tokenizer.TokenizerUnavailable, match=why) as caught:
        http_tokenizer.parse_response(status, b"")
    assert caught.value.reason == "TokenizerUnavailable"
    assert f"HTTP {status}" in caught.value.message


def test_the_idempotency_key_is_derived_from_the_card_uid() -> None:
    """Same uid, same key (a retry gets the same card); a malformed uid is refused."""
    uid = "5f0c6a2e-1111-4000-8000-000000000001"
    assert http_tokenizer.idempotency_key(uid) == f"card-token-{uid}"
    assert http_tokenizer.idempotency_key(uid) == http_tokenizer.idempotency_key(uid)
    for bad in ("", "a/b", "x" * 129, "a b"):
        with pytest.raises(ValueError, match="uid"):
            http_tokenizer.idempotency_key(bad)


@pytest.mark.parametrize("content", [b"", b" \n", b"two words", b"\xff\xfe", b"x" * 9000])
def test_bad_credential_files_are_refused(tmp_path: Path, content: bytes) -> None:
    """An empty, multi-word, binary or oversized credential is a configuration error."""
    path = tmp_path / "token"
    path.write_bytes(content)
    with pytest.raises(http_tokenizer.TokenizerUnavailable, match="FINTECH_TOKENIZER_TOKEN_FILE"):
        http_tokenizer.read_token_file(str(path))
    with pytest.raises(http_tokenizer.TokenizerUnavailable, match="cannot read"):
        http_tokenizer.read_token_file(str(tmp_path / "missing"))


def test_settings_choose_the_tokenizer_and_fail_closed() -> None:
    """A URL is the processor's tokenizer; FINTECH_TOKENIZER=development the built-in one;
    neither is refused naming both ways out (no silent fallback to invented last 4)."""
    base = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "k:9092"}
    with pytest.raises(config.SettingsError, match="no card tokenizer configured") as refused:
        http_tokenizer.from_settings(config.load(base))
    assert "FINTECH_TOKENIZER_URL" in str(refused.value)
    assert "FINTECH_TOKENIZER=development" in str(refused.value)
    builtin = http_tokenizer.from_settings(
        config.load({**base, "FINTECH_TOKENIZER": "development"})
    )
    assert isinstance(builtin, tokenizer.BuiltinTokenizer)
    remote = http_tokenizer.from_settings(
        config.Settings.model_validate(
            {
                "database": {"url": "postgresql://x@127.0.0.1/db"},
                "kafka": {"bootstrap_servers": "k:9092"},
                "tokenizer": {
                    "url": "https://processor.example.com/tokens",
                    "token_file": "/var/run/secrets/processor/token",
                },
            }
        )
    )
    assert isinstance(remote, http_tokenizer.HttpTokenizer)


@pytest.mark.parametrize("value", ["dev", "Development", "builtin", "true", " development"])
def test_only_the_exact_opt_in_is_accepted(value: str) -> None:
    """Anything but the exact word is a bad setting naming FINTECH_TOKENIZER."""
    base = {"DATABASE_URL": "postgresql://x@127.0.0.1/db", "KAFKA_BOOTSTRAP_SERVERS": "k:9092"}
    with pytest.raises(config.SettingsError, match="FINTECH_TOKENIZER:"):
        config.load({**base, "FINTECH_TOKENIZER": value})


def test_the_opt_in_and_a_processor_url_together_are_refused(tmp_path: Path) -> None:
    """Both at once is ambiguous: refused, naming both variables."""
    secret = tmp_path / "token"
    secret.write_text("pk_x\n")
    env = {
        "DATABASE_URL": "postgresql://x@127.0.0.1/db",
        "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
        "FINTECH_TOKENIZER": "development",
        "FINTECH_TOKENIZER_URL": "https://processor.example.com/tokens",
        "FINTECH_TOKENIZER_TOKEN_FILE": str(secret),
    }
    with pytest.raises(config.SettingsError, match="both set") as refused:
        config.load(env)
    assert "FINTECH_TOKENIZER_URL" in str(refused.value)
