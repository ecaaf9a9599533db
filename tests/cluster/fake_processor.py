"""A card processor's tokenization API over HTTPS, run in a Pod of the product image.

The cluster tests mount this file from a ConfigMap: it answers every POST with a token and
last 4, one card per Idempotency-Key (a retry gets the first answer), as the integration
tests' fake processor does (tests/integration/test_http_tokenizer.py). Standard library only.
"""

import http.server
import json
import ssl
import threading

CARDS: dict[str, dict[str, str]] = {}
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key = self.headers.get("Idempotency-Key", "")
        with LOCK:
            if key not in CARDS:
                n = len(CARDS)
                CARDS[key] = {"token": f"tok_pod{n:04d}", "last4": f"{4240 + n:04d}"}
            payload = json.dumps({**CARDS[key], "network": "visa"}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


def main() -> None:
    server = http.server.ThreadingHTTPServer(("0.0.0.0", 8443), Handler)  # noqa: S104 - in a Pod
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain("/tls/tls.crt", "/tls/tls.key")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
