"""The notifier's guarded HTTP client against real sockets on 127.0.0.1 (no platform needed).

Host names are made up (``*.example.test``) and resolved by a resolver the test injects,
always to 127.0.0.1: this proves the connection goes to the vetted address while the
request keeps the URL's Host header, TLS server name and certificate check. Nothing here
sends a packet anywhere but loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.server
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fintech_operator.notify import destination, worker

pytestmark = pytest.mark.integration
LOOPBACK = destination.networks("127.0.0.0/8,::1/128")
HOST = "hooks.example.test"


class Resolver:
    """Every name resolves to 127.0.0.1; the questions are recorded."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append(host)
        return ["127.0.0.1"]


class Server:
    """A loopback HTTP(S) server recording each request's Host header, path and TLS name."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.hosts: list[str] = []
        self.server_names: list[str | None] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                recorder.hosts.append(f"{self.headers.get('host')} {self.path}")
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if tls is not None:

            def named(sock: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
                recorder.server_names.append(name)

            tls.sni_callback = named  # type: ignore[assignment]
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path, bytes]:
    """A self-signed certificate for ``name`` (its own CA): cert file, key file, PEM."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(pem)
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file, pem


async def test_the_connection_is_pinned_and_the_host_header_kept() -> None:
    """A made-up name resolved (once) to 127.0.0.1 is reached on that address, and the
    request carries the URL's own Host header."""
    resolver = Resolver()
    with Server() as server:
        async with destination.new_client(LOOPBACK, 4, resolver=resolver) as client:
            answer = await client.post(f"http://{HOST}:{server.port}/hook", content=b"{}")
    assert answer.status_code == 200
    assert server.hosts == [f"{HOST}:{server.port} /hook"]
    assert resolver.asked == [HOST]


async def test_tls_uses_the_url_host_for_sni_and_the_certificate(tmp_path: Path) -> None:
    """Connecting to the pinned address does not weaken TLS: the server name sent is the
    URL's host, and a certificate for another name is refused although the address is the
    same."""
    cert_file, key_file, pem = _certificate(tmp_path, HOST)
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(cert_file, key_file)
    trusting = ssl.create_default_context(cadata=pem.decode())
    with Server(server_tls) as server:
        async with destination.new_client(LOOPBACK, 4, Resolver(), tls=trusting) as client:
            answer = await client.post(f"https://{HOST}:{server.port}/tls", content=b"{}")
            assert answer.status_code == 200
            with pytest.raises(httpx.ConnectError, match="certificate"):
                await client.post(f"https://other.example.test:{server.port}/", content=b"{}")
    assert server.server_names[0] == HOST
    assert server.hosts == [f"{HOST}:{server.port} /tls"]


@contextlib.contextmanager
def _listener() -> Iterator[socket.socket]:
    """A listening socket nobody accepts from: a connection attempt would sit in its queue."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        sock.setblocking(False)
        yield sock


@pytest.mark.parametrize("allow", ["", "10.0.0.0/8", "::1/128"])
async def test_loopback_is_refused_before_any_connection_unless_allowed(allow: str) -> None:
    """Without 127.0.0.0/8 in the allow-list, a request to a loopback listener fails with
    DestinationRefused, and the listener's queue holds no connection afterwards."""
    with _listener() as sock:
        port = sock.getsockname()[1]
        async with destination.new_client(destination.networks(allow), 4) as client:
            with pytest.raises(destination.DestinationRefused, match="loopback"):
                await client.post(f"http://127.0.0.1:{port}/", content=b"{}")
            with pytest.raises(destination.DestinationRefused, match="loopback"):
                await client.post(f"http://localhost:{port}/", content=b"{}")
        with pytest.raises(BlockingIOError):
            sock.accept()


async def test_the_same_listener_is_reached_when_loopback_is_allowed() -> None:
    """The control for the test above: with loopback allowed the connection does arrive."""
    with _listener() as sock:
        port = sock.getsockname()[1]
        async with destination.new_client(LOOPBACK, 4) as client:
            with contextlib.suppress(httpx.TimeoutException):
                await client.post(f"http://127.0.0.1:{port}/", content=b"{}", timeout=0.5)
        connection, _ = sock.accept()
        connection.close()


async def test_an_endless_answer_is_read_only_up_to_the_bound() -> None:
    """A receiver that streams a body forever costs one bounded read: the worker keeps
    RESPONSE_BYTES_MAX bytes and closes the connection."""
    stop = threading.Event()

    def endless(listener: socket.socket) -> None:
        connection, _ = listener.accept()
        with connection, contextlib.suppress(OSError):
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 8192
            while not stop.is_set():
                connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        thread = threading.Thread(target=endless, args=(listener,), daemon=True)
        thread.start()
        try:
            async with (
                destination.new_client(LOOPBACK, 4) as client,
                asyncio.timeout(10),
            ):
                request = client.build_request(
                    "POST", f"http://127.0.0.1:{listener.getsockname()[1]}/", content=b"{}"
                )
                response = await client.send(request, stream=True)
                try:
                    head = await worker._read_bounded(response)
                finally:
                    await response.aclose()
        finally:
            stop.set()
            thread.join(5)
    assert len(head) == worker.RESPONSE_BYTES_MAX
    assert response.status_code == 500
