"""A loopback webhook receiver that records every delivery and can be told to fail.

It verifies each request's Standard Webhooks signature with the product's own verifier
(the scheme is public; what matters here is that the bytes that arrived are the bytes
that were signed) and answers 200, or 500/429 while a fault is on.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from fintech_operator.notify import signing

BODY_BYTES_MAX = 1 << 20


@dataclass
class Delivery:
    """One HTTP request the notifier made: the event id, whether it verified, our answer."""

    at_seconds: float
    event_id: str
    signature_ok: bool
    status: int


@dataclass
class Receiver:
    """ThreadingHTTPServer on 127.0.0.1 with a switchable answer."""

    key: bytes
    answer_status: int = 200
    deliveries: list[Delivery] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/hooks/fintech"

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = min(int(self.headers.get("content-length") or 0), BODY_BYTES_MAX)
                receiver.record(dict(self.headers.items()), self.rfile.read(length))
                status = receiver.answer_status
                self.send_response(status)
                if status == 429:
                    self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_: Any) -> None:  # The campaign keeps its own record.
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def record(self, headers: dict[str, str], body: bytes) -> None:
        try:
            event_id = signing.verify(self.key, headers, body, int(time.time()))
            ok = True
        except signing.SigningError:
            event_id = {k.lower(): v for k, v in headers.items()}.get(signing.ID_HEADER, "?")
            ok = False
        with self._lock:
            self.deliveries.append(Delivery(time.time(), event_id, ok, self.answer_status))

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)
