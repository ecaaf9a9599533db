"""The card processor's tokenizer against a tiny fake processor on 127.0.0.1 (real HTTP).

The fake keeps what a real processor keeps: one card per idempotency key, so a retry gets the
first answer. Each test sets how it answers and reads back what it was sent.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from fintech_operator.cards import http_tokenizer

pytestmark = pytest.mark.integration

PAN = "4111111111111111"


@dataclass
class Processor:
    """What the fake answers (``replies`` first, in order, then a card) and what it saw.

    Also the e2e tests' processor (tests/e2e/test_cards_processor_tokenizer.py).
    """

    url: str = ""
    replies: list[tuple[int, bytes, float]] = field(default_factory=list)
    # Replies for one card (by cardRef), after the general ones.
    replies_for: dict[str, list[tuple[int, bytes, float]]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    cards: dict[str, dict[str, str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, headers: dict[str, str], raw: bytes) -> tuple[int, bytes, float]:
        with self.lock:
            body = json.loads(raw)
            self.requests.append({"headers": headers, "body": body})
            if self.replies:
                return self.replies.pop(0)
            queued = self.replies_for.get(str(body.get("cardRef")))
            if queued:
                return queued.pop(0)
            key = headers.get("idempotency-key", "")
            if key not in self.cards:
                n = len(self.cards)
                self.cards[key] = {"token": f"tok_fake{n:04d}", "last4": f"{4240 + n:04d}"}
            return 201, json.dumps({**self.cards[key], "network": "visa"}).encode(), 0.0


@contextlib.contextmanager
def serving(state: Processor) -> Iterator[Processor]:
    """Run the fake processor on 127.0.0.1 (an ephemeral port) while the block runs."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload, delay = state.answer(headers, raw)
            time.sleep(delay)
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # The client gave up waiting: what a timeout test wants.

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1/tokens"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def processor() -> Iterator[Processor]:
    with serving(Processor()) as state:
        yield state


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "processor-token"
    path.write_text("pk_test_s3cr3t\n")
    return path


def client(processor: Processor, token_file: Path, timeout: float = 2.0) -> Any:
    return http_tokenizer.HttpTokenizer(processor.url, str(token_file), timeout)


async def test_token_and_last4_come_from_the_processor_and_a_retry_gets_the_same_card(
    processor: Processor, token_file: Path
) -> None:
    """The answer's token and last 4 are used; the credential, the card and the uid-derived
    idempotency key are sent; a retry of the same card sends the same key and gets the same
    card, another card another one."""
    uid = str(uuid.uuid4())
    key = http_tokenizer.idempotency_key(uid)
    tok = client(processor, token_file)
    first = await tok.issue("shop/alice", idempotency_key=key)
    retried = await tok.issue("shop/alice", idempotency_key=http_tokenizer.idempotency_key(uid))
    other = await tok.issue(
        "shop/bob", idempotency_key=http_tokenizer.idempotency_key(str(uuid.uuid4()))
    )
    assert (first.token, first.last4) == ("tok_fake0000", "4240")
    assert retried == first
    assert other != first
    sent = processor.requests
    assert [r["headers"]["idempotency-key"] for r in sent[:2]] == [key, key]
    assert sent[0]["headers"]["authorization"] == "Bearer pk_test_s3cr3t"
    assert sent[0]["body"] == {"cardRef": "shop/alice", "idempotencyKey": key}
    assert sent[2]["headers"]["idempotency-key"] != key


async def test_a_rotated_credential_is_read_on_the_next_request(
    processor: Processor, token_file: Path
) -> None:
    """The Secret's file is read per request: a rotation needs no restart."""
    tok = client(processor, token_file)
    await tok.issue("shop/a", idempotency_key="card-token-a")
    token_file.write_text("pk_test_rotated")  # noqa: ASYNC240 (a test's tmp file)
    await tok.issue("shop/b", idempotency_key="card-token-b")
    auth = [r["headers"]["authorization"] for r in processor.requests]
    assert auth == ["Bearer pk_test_s3cr3t", "Bearer pk_test_rotated"]


async def test_a_4xx_refusal_is_final_with_the_processors_reason(
    processor: Processor, token_file: Path
) -> None:
    """422 with an error body: TokenizerRefused carrying the processor's code and message."""
    refusal = {"error": {"code": "user_blocked", "message": "the user may not hold cards"}}
    processor.replies.append((422, json.dumps(refusal).encode(), 0.0))
    with pytest.raises(http_tokenizer.TokenizerRefused) as caught:
        await client(processor, token_file).issue("shop/alice", idempotency_key="card-token-x")
    assert caught.value.message == (
        "the card processor refused the card (HTTP 422): user_blocked: the user may not hold cards"
    )


async def test_a_5xx_then_a_retry_with_the_same_key_succeeds(
    processor: Processor, token_file: Path
) -> None:
    """503 is retryable (the handler backs off); the retry's key is the first one's."""
    processor.replies.append((503, b'{"error": "maintenance"}', 0.0))
    tok = client(processor, token_file)
    with pytest.raises(http_tokenizer.TokenizerUnavailable, match=r"unavailable \(HTTP 503\)"):
        await tok.issue("shop/alice", idempotency_key="card-token-r")
    issued = await tok.issue("shop/alice", idempotency_key="card-token-r")
    assert issued.token.startswith("tok_fake")
    keys = [r["headers"]["idempotency-key"] for r in processor.requests]
    assert keys == ["card-token-r", "card-token-r"]


async def test_a_slow_processor_times_out_as_retryable_within_the_bound(
    processor: Processor, token_file: Path
) -> None:
    """An answer later than the timeout is an outage: raised within the bound, retryable."""
    processor.replies.append((201, b'{"token": "tok_late", "last4": "1234"}', 3.0))
    started = time.monotonic()
    with pytest.raises(http_tokenizer.TokenizerUnavailable, match=r"did not answer within 0\.5 s"):
        await client(processor, token_file, timeout=0.5).issue(
            "shop/alice", idempotency_key="card-token-t"
        )
    assert time.monotonic() - started < 2.0


async def test_an_unreachable_processor_is_retryable(token_file: Path) -> None:
    """Nothing listens on the port: TokenizerUnavailable naming the host, not a crash."""
    tok = http_tokenizer.HttpTokenizer("http://127.0.0.1:9/v1/tokens", str(token_file), 2.0)
    with pytest.raises(http_tokenizer.TokenizerUnavailable, match=r"127\.0\.0\.1:9 is unreachable"):
        await tok.issue("shop/alice", idempotency_key="card-token-u")


@pytest.mark.parametrize(
    "payload",
    [
        {"token": "tok_abc", "last4": "1111", "pan": PAN},
        {"token": "tok_abc", "last4": "1111", "card": {"number": "4111-1111-1111-1111"}},
    ],
)
async def test_a_response_with_a_card_number_is_refused(
    processor: Processor, token_file: Path, payload: dict[str, Any]
) -> None:
    """Invariant 7 at the edge: a PAN in the answer refuses it, and the error never quotes it."""
    processor.replies.append((201, json.dumps(payload).encode(), 0.0))
    with pytest.raises(http_tokenizer.TokenizerUnavailable, match="contained a card number") as e:
        await client(processor, token_file).issue("shop/alice", idempotency_key="card-token-p")
    assert "1111" not in e.value.message.replace("HTTP", "")


async def test_an_oversized_response_is_cut_off(processor: Processor, token_file: Path) -> None:
    """A response larger than the bound is refused without reading it all."""
    huge = b'{"token": "tok_abc", "last4": "1234", "x": "' + b"y" * 100_000 + b'"}'
    processor.replies.append((201, huge, 0.0))
    with pytest.raises(http_tokenizer.TokenizerUnavailable, match="larger than"):
        await client(processor, token_file).issue("shop/alice", idempotency_key="card-token-o")
