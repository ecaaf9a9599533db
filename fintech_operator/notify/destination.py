"""Where a webhook may go: the destination guard against server-side request forgery.

A Webhook's URL is written by whoever may create a Webhook in a watched namespace, and the
notifier runs inside the cluster, next to the cloud's metadata service (169.254.169.254),
the API server, PostgreSQL, Kafka and every Service. Without a guard a URL such as
``http://169.254.169.254/latest/meta-data/`` or ``http://postgres.db.svc:5432/`` makes the
notifier a proxy into the cluster. So only public unicast addresses are destinations,
unless the operator of the notifier allows more (``FINTECH_WEBHOOK_ALLOWED_CIDRS``).

- :func:`refusal` (pure): why an address is not a public destination, or None.
- :func:`vet` (pure): a host is refused when ANY address it resolves to is refused, so a
  name with one public and one private record cannot win half of the connections.
- :class:`GuardedBackend`: the httpcore network backend under the notifier's HTTP client.
  It resolves the host once, vets every address, and then opens the TCP connection to a
  vetted address itself. The check and the connection use the same DNS answer, so a DNS
  server that answers a public address to the check and 127.0.0.1 to the connection (DNS
  rebinding) gains nothing: there is no second lookup. Only the TCP peer is pinned: the
  request still carries the URL's ``Host`` header, and for https httpcore starts TLS with
  the URL's host name as SNI and verifies the certificate against it (it passes the
  origin's host, not our address, as ``server_hostname``). A refusal raises
  :class:`DestinationRefused` before any socket is opened.
- :func:`new_client`: the notifier's ``httpx.AsyncClient`` (a :class:`GuardedClient`) over
  that backend: no redirects, no proxies from the environment (a proxy would make the
  connection for us, unguarded), HTTP/1.1 only, bounded pool.
- :func:`judge` (and :meth:`GuardedClient.judge`): the guard's verdict on a URL without
  connecting, through the very :meth:`GuardedBackend.vetted` a connection to it runs (same
  host and port, same resolver, same allow-list), so a Webhook can show a refused
  destination before its first event.

Pooled keep-alive connections stay bound to the address vetted when they were opened; the
allow-list only changes with a restart, so no connection outlives the policy that let it
open.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import contextmanager
from typing import Any, Final

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# Resolves (host, port) to address strings, like getaddrinfo; injected by tests.
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

REASON: Final = "DestinationRefused"
RESOLVE_TIMEOUT_SECONDS_MAX: Final = 10.0
# A host may resolve to many addresses; all are vetted, the first few are tried in order.
ADDRESSES_VETTED_MAX: Final = 64
ADDRESSES_TRIED_MAX: Final = 4
ALLOW_HINT: Final = "not allowed by the notifier's FINTECH_WEBHOOK_ALLOWED_CIDRS"


def _nets(*pairs: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(cidr), reason) for cidr, reason in pairs)


# Every IPv4 range that is not public unicast (IANA special-purpose registry).
_IPV4_REFUSED: Final = _nets(
    ("0.0.0.0/8", "unspecified"),
    ("10.0.0.0/8", "private (RFC 1918)"),
    ("100.64.0.0/10", "shared address space (CGNAT)"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local (cloud metadata)"),
    ("172.16.0.0/12", "private (RFC 1918)"),
    ("192.0.0.0/24", "reserved (IETF protocol assignments)"),
    ("192.0.2.0/24", "reserved (documentation)"),
    ("192.88.99.0/24", "reserved (6to4 relay)"),
    ("192.168.0.0/16", "private (RFC 1918)"),
    ("198.18.0.0/15", "reserved (benchmarking)"),
    ("198.51.100.0/24", "reserved (documentation)"),
    ("203.0.113.0/24", "reserved (documentation)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved"),  # Includes the broadcast address 255.255.255.255.
)
# IPv6 is default-deny: only global unicast 2000::/3 is public, minus these. Addresses
# that embed an IPv4 address (mapped, NAT64, 6to4) are judged by that address.
_IPV6_REFUSED: Final = _nets(
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("64:ff9b:1::/48", "reserved (local-use NAT64)"),
    ("100::/64", "reserved (discard-only)"),
    ("2001::/23", "reserved (IETF protocol assignments, Teredo)"),
    ("2001:db8::/32", "reserved (documentation)"),
    ("3fff::/20", "reserved (documentation)"),
    ("fc00::/7", "unique local (ULA)"),
    ("fe80::/10", "link-local"),
    ("fec0::/10", "site-local"),
    ("ff00::/8", "multicast"),
)
_GLOBAL_UNICAST: Final = ipaddress.IPv6Network("2000::/3")
_NAT64: Final = ipaddress.IPv6Network("64:ff9b::/96")


class DestinationRefused(Exception):
    """The URL's host is (or resolves to) an address the notifier must not call."""


def networks(text: str) -> tuple[IPNetwork, ...]:
    """The allow-list from its setting (comma or space separated CIDRs, already validated)."""
    return tuple(ipaddress.ip_network(item) for item in text.replace(",", " ").split())


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address in _NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    return None


def refusal(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast destination, or None when it is one."""
    if isinstance(address, ipaddress.IPv4Address):
        return next((reason for net, reason in _IPV4_REFUSED if address in net), None)
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        kind, inner = embedded
        reason = refusal(inner)
        return None if reason is None else f"{kind} {reason}"
    found = next((reason for net, reason in _IPV6_REFUSED if address in net), None)
    if found is None and address not in _GLOBAL_UNICAST:
        return "reserved (not global unicast)"
    return found


def allowed(address: IPAddress, allow: Sequence[IPNetwork]) -> bool:
    """Whether the allow-list covers ``address`` (an IPv4-mapped address as its IPv4 one)."""
    candidates: list[IPAddress] = [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)
    return any(c in net for c in candidates for net in allow if c.version == net.version)


def vet(host: str, addresses: Sequence[IPAddress], allow: Sequence[IPNetwork]) -> str | None:
    """None when every address may be called; else the refusal, naming the first bad one."""
    for address in addresses:
        reason = refusal(address)
        if reason is None or allowed(address, allow):
            continue
        shown = host.strip("[]")
        text = _text(address)
        subject = text if _literal(shown) == address else f"{shown} resolves to {text}"
        return f"{subject}: {reason} address, {ALLOW_HINT}"
    return None


def _text(address: IPAddress) -> str:
    """The address as people write it (Python 3.11 prints ::ffff:7f00:1 for ::ffff:127.0.0.1)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return f"::ffff:{address.ipv4_mapped}"
    return str(address)


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def parse_addresses(answers: Iterable[str]) -> list[IPAddress]:
    """Distinct addresses in resolver order; a zone index (``fe80::1%eth0``) is kept."""
    seen: list[IPAddress] = []
    for answer in answers:
        address = ipaddress.ip_address(answer)
        if address not in seen:
            seen.append(address)
    return seen


async def system_resolver(host: str, port: int) -> Sequence[str]:
    """The system's getaddrinfo (hosts file, cluster DNS), TCP addresses only."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
    )
    return [str(info[4][0]) for info in infos]


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """Resolve, vet every address, connect only to a vetted one (see the module docstring)."""

    def __init__(
        self,
        allow: Sequence[IPNetwork],
        resolver: Resolver = system_resolver,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self._allow = tuple(allow)
        self._resolve = resolver
        self._inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def vetted(self, host: str, port: int, connect_seconds: float | None) -> list[IPAddress]:
        """Every address of ``host``, or :class:`DestinationRefused` if one is not allowed.

        A failed or empty resolution is a connection error (retried later), not a refusal:
        only an answer that names a forbidden address is final.
        """
        budget = min(connect_seconds or RESOLVE_TIMEOUT_SECONDS_MAX, RESOLVE_TIMEOUT_SECONDS_MAX)
        try:
            async with asyncio.timeout(budget):
                answers = await self._resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} took over {budget:g}s") from exc
        except OSError as exc:  # socket.gaierror: unknown name, DNS down.
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        try:
            addresses = parse_addresses(list(answers)[:ADDRESSES_VETTED_MAX])
        except ValueError as exc:
            raise httpcore.ConnectError(f"{host}: resolver answered {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolves to no address")
        reason = vet(host, addresses, self._allow)
        if reason is not None:
            raise DestinationRefused(reason)
        return addresses

    # The parameter names are httpcore's: it calls these methods with keywords.
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.vetted(host, port, timeout)
        failure: httpcore.ConnectError | httpcore.ConnectTimeout | None = None
        for address in addresses[:ADDRESSES_TRIED_MAX]:
            try:
                # The literal address: the inner backend does no lookup of its own.
                return await self._inner.connect_tcp(
                    str(address),
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        if failure is None:  # Unreachable: vetted() returns at least one address.
            raise httpcore.ConnectError(f"{host}: no address to connect to")
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise DestinationRefused("a unix socket is never a webhook destination")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


# httpcore's errors as httpx's (most specific first), so callers catch httpx.HTTPError
# only. DestinationRefused is not in the table: it passes through unchanged.
_ERRORS: Final[tuple[tuple[type[Exception], type[httpx.HTTPError]], ...]] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.TimeoutException, httpx.TimeoutException),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.NetworkError, httpx.NetworkError),
    (httpcore.UnsupportedProtocol, httpx.UnsupportedProtocol),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (httpcore.ProtocolError, httpx.ProtocolError),
)


@contextmanager
def _httpx_errors() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        mapped = next((to for frm, to in _ERRORS if isinstance(exc, frm)), None)
        if mapped is None:
            raise
        raise mapped(str(exc)) from exc


def core_url(url: httpx.URL) -> httpcore.URL:
    """The httpcore URL the transport sends a request for ``url`` to; its ``origin`` is the
    host and port a connection opens (and :meth:`GuardedBackend.vetted` judges)."""
    return httpcore.URL(
        scheme=url.raw_scheme, host=url.raw_host, port=url.port, target=url.raw_path
    )


async def judge(backend: GuardedBackend, url: str, connect_seconds: float) -> str | None:
    """Why the guard refuses a delivery to ``url``, or None when it would let one through now.

    No connection is opened: the host is resolved and every address vetted exactly as a
    delivery's connection does (:meth:`GuardedBackend.vetted`, within ``connect_seconds``).
    A name that cannot be resolved now raises ``httpx.ConnectError`` or
    ``httpx.ConnectTimeout``, as a delivery attempt fails on it (to be retried): it is not a
    refusal. ``httpx.InvalidURL`` when ``url`` has no usable host or port.
    """
    origin = core_url(httpx.URL(url)).origin
    try:
        with _httpx_errors():
            await backend.vetted(origin.host.decode("ascii"), origin.port, connect_seconds)
    except DestinationRefused as exc:
        return str(exc)
    return None


class _Body(httpx.AsyncByteStream):
    def __init__(self, stream: AsyncIterable[bytes]) -> None:
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpx_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        closer = getattr(self._stream, "aclose", None)
        if closer is not None:
            with _httpx_errors():
                await closer()


class GuardedTransport(httpx.AsyncBaseTransport):
    """An httpx transport on an httpcore pool whose every connection goes through the guard.

    Built on the public httpcore API (httpx's own transport offers no way to pass a
    network backend), it does what ``httpx.AsyncHTTPTransport`` does for a plain pool.
    """

    def __init__(
        self, backend: httpcore.AsyncNetworkBackend, limits: httpx.Limits, tls: ssl.SSLContext
    ) -> None:
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=tls,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            http1=True,
            http2=False,
            retries=0,
            network_backend=backend,
        )

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if not isinstance(request.stream, httpx.AsyncByteStream):
            raise TypeError("the notifier sends async requests only")
        core = httpcore.Request(
            method=request.method,
            url=core_url(request.url),
            headers=request.headers.raw,
            content=request.stream,
            extensions=request.extensions,
        )
        with _httpx_errors():
            answer = await self._pool.handle_async_request(core)
        if not isinstance(answer.stream, AsyncIterable):
            raise TypeError("httpcore answered an async request with a sync stream")
        return httpx.Response(
            status_code=answer.status,
            headers=answer.headers,
            stream=_Body(answer.stream),
            extensions=answer.extensions,
        )

    async def aclose(self) -> None:
        await self._pool.aclose()


class GuardedClient(httpx.AsyncClient):
    """The notifier's client, with the guard under its connections at hand, so that judging
    a URL ahead of any delivery and delivering to it can never use different rules."""

    def __init__(self, guard: GuardedBackend, **options: Any) -> None:
        super().__init__(**options)
        self.guard = guard

    async def judge(self, url: str, connect_seconds: float) -> str | None:
        """:func:`judge` with this client's guard."""
        return await judge(self.guard, url, connect_seconds)


def new_client(
    allow: Sequence[IPNetwork],
    max_connections: int,
    resolver: Resolver = system_resolver,
    tls: ssl.SSLContext | None = None,
) -> GuardedClient:
    """The notifier's client: guarded connections, no redirects, no environment proxies.

    Each request passes its own timeouts (the Webhook's); the client's are a backstop.
    ``tls`` defaults to certifi's CAs with verification on, as httpx does.
    """
    limits = httpx.Limits(
        max_connections=max_connections,
        max_keepalive_connections=min(max_connections, 32),
        keepalive_expiry=30.0,
    )
    context = tls if tls is not None else httpx.create_ssl_context(verify=True, trust_env=False)
    guard = GuardedBackend(allow, resolver)
    return GuardedClient(
        guard,
        transport=GuardedTransport(guard, limits, context),
        follow_redirects=False,
        max_redirects=0,
        trust_env=False,
        timeout=httpx.Timeout(30.0),
    )
