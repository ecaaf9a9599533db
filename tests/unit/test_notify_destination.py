"""The destination guard without a network: which addresses are refused, how a host's
whole DNS answer is judged, and that a refused host is never connected to.

Addresses such as 169.254.169.254 or 10.0.0.1 appear here only as inputs to pure
functions and to an injected resolver; the backend under test has a recording inner
backend in place of sockets, so no packet leaves the process.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore
import httpx
import pytest

from fintech_operator.notify import destination, policy, status, store

PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "9.255.255.255",  # Just below 10.0.0.0/8.
    "11.0.0.0",  # Just above it.
    "100.63.255.255",  # Just below CGNAT 100.64.0.0/10.
    "100.128.0.0",  # Just above it.
    "169.253.255.255",
    "172.15.255.255",  # Around 172.16.0.0/12.
    "172.32.0.0",
    "192.167.255.255",
    "223.255.255.255",  # The last unicast address below multicast.
    "2606:4700:4700::1111",
    "2a00:1450:4001:82b::200e",
    "::ffff:8.8.8.8",  # IPv4-mapped public: the same destination as 8.8.8.8.
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8.
    "2002:808:808::1",  # 6to4 of 8.8.8.8.
]

REFUSED = [
    ("0.0.0.0", "unspecified"),  # noqa: S104 - an input to the classifier, not a bind
    ("0.1.2.3", "unspecified"),
    ("10.0.0.1", "private"),
    ("10.255.255.255", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("100.64.0.1", "CGNAT"),
    ("100.127.255.255", "CGNAT"),
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("169.254.169.254", "link-local"),  # Cloud metadata.
    ("169.254.0.1", "link-local"),
    ("192.0.0.8", "reserved"),
    ("192.0.2.10", "documentation"),
    ("198.18.0.1", "benchmarking"),
    ("198.51.100.7", "documentation"),
    ("203.0.113.9", "documentation"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("240.0.0.1", "reserved"),
    ("255.255.255.255", "reserved"),
    ("::", "unspecified"),
    ("::1", "loopback"),
    ("::ffff:127.0.0.1", "IPv4-mapped loopback"),
    ("::ffff:169.254.169.254", "IPv4-mapped link-local"),
    ("::ffff:10.0.0.1", "IPv4-mapped private"),
    ("::ffff:100.64.0.1", "IPv4-mapped shared"),
    ("64:ff9b::a9fe:a9fe", "NAT64 link-local"),  # NAT64 of 169.254.169.254.
    ("2002:7f00:1::1", "6to4 loopback"),  # 6to4 of 127.0.0.1.
    ("::7f00:1", "not global unicast"),  # IPv4-compatible (deprecated) 127.0.0.1.
    ("fc00::1", "unique local"),
    ("fd12:3456:789a::1", "unique local"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("fec0::1", "site-local"),
    ("ff02::1", "multicast"),
    ("2001:db8::1", "documentation"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("100::1", "discard"),
    ("64:ff9b:1::1", "local-use NAT64"),
    ("4000::1", "not global unicast"),
]


@pytest.mark.parametrize("address", PUBLIC)
def test_public_unicast_addresses_pass(address: str) -> None:
    """Public addresses, and IPv6 forms that embed a public IPv4 address, are destinations."""
    assert destination.refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_non_public_addresses_are_refused_with_their_kind(address: str, why: str) -> None:
    """Loopback, private, CGNAT, link-local, multicast, unspecified, reserved and their
    IPv4-mapped, NAT64 and 6to4 forms are refused, and the reason names the kind."""
    reason = destination.refusal(ipaddress.ip_address(address))
    assert reason is not None
    assert why in reason


ALLOW = destination.networks("127.0.0.0/8,::1/128")


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),  # The mapped form reaches the same loopback.
        ("10.0.0.1", False),
        ("169.254.169.254", False),
        ("::2", False),
        ("fe80::1", False),
    ],
)
def test_the_allow_list_admits_only_its_networks(address: str, allowed: bool) -> None:
    """The dev/test allow-list admits loopback in both families and nothing else."""
    addresses = [ipaddress.ip_address(address)]
    assert (destination.vet("h", addresses, ALLOW) is None) is allowed


def _ips(*texts: str) -> list[destination.IPAddress]:
    return [ipaddress.ip_address(t) for t in texts]


def test_one_bad_address_in_a_dns_answer_refuses_the_host() -> None:
    """A name with public and private records is refused, naming the host and the bad
    address; an all-public answer passes; the allow-list can admit the private one."""
    mixed = _ips("93.184.216.34", "2606:4700:4700::1111", "10.0.0.7")
    reason = destination.vet("hooks.example.test", mixed, ())
    assert reason is not None
    assert reason.startswith("hooks.example.test resolves to 10.0.0.7: private")
    assert "FINTECH_WEBHOOK_ALLOWED_CIDRS" in reason
    assert destination.vet("hooks.example.test", mixed[:2], ()) is None
    assert destination.vet("h", mixed, destination.networks("10.0.0.0/24")) is None


def test_a_literal_address_is_named_as_itself() -> None:
    """For a URL with an IP literal the reason does not say "resolves to"."""
    reason = destination.vet("[::ffff:169.254.169.254]", _ips("::ffff:169.254.169.254"), ())
    assert reason is not None
    assert reason.startswith("::ffff:169.254.169.254: IPv4-mapped link-local")


def test_resolver_answers_are_deduplicated_in_order_and_invalid_ones_fail() -> None:
    """getaddrinfo repeats addresses (one per socket type); order is kept for connecting."""
    assert destination.parse_addresses(["::1", "127.0.0.1", "::1"]) == _ips("::1", "127.0.0.1")
    with pytest.raises(ValueError, match="not-an-ip"):
        destination.parse_addresses(["not-an-ip"])


# --- The backend: refusal before any connection ----------------------------------------------


class Recorder(httpcore.AsyncNetworkBackend):
    """An inner backend that records connections instead of opening sockets."""

    def __init__(self, failing: Iterable[str] = ()) -> None:
        self.connects: list[tuple[str, int]] = []
        self.failing = set(failing)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore's signature
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        self.connects.append((host, port))
        if host in self.failing:
            raise httpcore.ConnectError(f"{host} refused the connection")
        return httpcore.AsyncNetworkStream()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class Resolver:
    """A DNS server under the test's control: successive answers, and every question."""

    def __init__(self, *answers: Sequence[str]) -> None:
        self.answers = list(answers)
        self.asked: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> Sequence[str]:
        self.asked.append((host, port))
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


@pytest.mark.parametrize(
    "answer",
    [
        ["169.254.169.254"],
        ["10.0.0.1"],
        ["93.184.216.34", "127.0.0.1"],  # Mixed: one bad record is enough.
        ["::ffff:169.254.169.254"],
        ["fd00::1", "2606:4700:4700::1111"],
    ],
)
async def test_a_refused_host_is_never_connected_to(answer: list[str]) -> None:
    """The refusal comes from the DNS answer alone: the inner backend is never called."""
    inner, resolver = Recorder(), Resolver(answer)
    backend = destination.GuardedBackend((), resolver, inner)
    with pytest.raises(destination.DestinationRefused):
        await backend.connect_tcp("hooks.example.test", 443, timeout=5)
    assert resolver.asked == [("hooks.example.test", 443)]
    assert inner.connects == []


async def test_the_connection_goes_to_the_vetted_address_not_a_second_lookup() -> None:
    """DNS rebinding: the resolver answers a public address, then loopback. The connection
    uses the first (vetted) answer as a literal, with no second lookup; the next connection
    asks again and is refused."""
    inner = Recorder()
    resolver = Resolver(["93.184.216.34"], ["127.0.0.1"])
    backend = destination.GuardedBackend((), resolver, inner)
    await backend.connect_tcp("rebind.example.test", 8443, timeout=5)
    assert inner.connects == [("93.184.216.34", 8443)]
    assert len(resolver.asked) == 1
    with pytest.raises(destination.DestinationRefused, match=r"127\.0\.0\.1: loopback"):
        await backend.connect_tcp("rebind.example.test", 8443, timeout=5)
    assert inner.connects == [("93.184.216.34", 8443)]


async def test_the_next_vetted_address_is_tried_when_one_does_not_answer() -> None:
    """A host with two good addresses still works when the first is down."""
    inner = Recorder(failing={"2606:4700:4700::1111"})
    backend = destination.GuardedBackend((), Resolver(["2606:4700:4700::1111", "1.1.1.1"]), inner)
    await backend.connect_tcp("one.example.test", 443, timeout=5)
    assert inner.connects == [("2606:4700:4700::1111", 443), ("1.1.1.1", 443)]


async def test_resolution_failures_are_connection_errors_not_refusals() -> None:
    """An unknown name, an empty answer or a slow DNS is transient (retried later); only an
    answer naming a forbidden address is final."""

    async def unknown(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def slow(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(10)
        return ["8.8.8.8"]

    inner = Recorder()
    with pytest.raises(httpcore.ConnectError, match="cannot resolve"):
        await destination.GuardedBackend((), unknown, inner).connect_tcp("x.test", 80, timeout=5)
    with pytest.raises(httpcore.ConnectError, match="no address"):
        await destination.GuardedBackend((), Resolver([]), inner).connect_tcp("x.test", 80)
    with pytest.raises(httpcore.ConnectTimeout, match="resolving"):
        await destination.GuardedBackend((), slow, inner).connect_tcp("x.test", 80, timeout=0.05)
    assert inner.connects == []


async def test_unix_sockets_are_refused() -> None:
    """A unix socket path is never a destination (httpx could be given one)."""
    backend = destination.GuardedBackend(ALLOW, Resolver(["127.0.0.1"]), Recorder())
    with pytest.raises(destination.DestinationRefused):
        await backend.connect_unix_socket("/var/run/docker.sock")


async def test_a_refusal_reaches_the_caller_of_httpx_unchanged() -> None:
    """Through httpx and httpcore the refusal stays a DestinationRefused (not a generic
    connection error the worker would retry), and nothing was connected."""
    inner = Recorder()
    backend = destination.GuardedBackend((), Resolver(["169.254.169.254"]), inner)
    transport = destination.GuardedTransport(backend, httpx.Limits(), httpx.create_ssl_context())
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        with pytest.raises(destination.DestinationRefused, match=r"metadata\.example\.test"):
            await client.post("http://metadata.example.test/latest/meta-data/", content=b"{}")
    assert inner.connects == []


async def test_httpcore_errors_become_httpx_errors() -> None:
    """A connection error below the transport surfaces as httpx.ConnectError, which the
    worker records as a retryable failure."""
    inner = Recorder(failing={"93.184.216.34"})
    backend = destination.GuardedBackend((), Resolver(["93.184.216.34"]), inner)
    transport = destination.GuardedTransport(backend, httpx.Limits(), httpx.create_ssl_context())
    async with httpx.AsyncClient(transport=transport, trust_env=False) as client:
        with pytest.raises(httpx.ConnectError):
            await client.post("http://hooks.example.test/", content=b"{}")


# --- Judging a URL before any event --------------------------------------------------------


async def _delivery_refusal(client: httpx.AsyncClient, url: str) -> str:
    """What a delivery to ``url`` records when the guard refuses it (worker._send's path)."""
    with pytest.raises(destination.DestinationRefused) as refused:
        await client.post(url, content=b"{}")
    error = policy.refused(str(refused.value)).error
    assert error is not None
    return error


@pytest.mark.parametrize(
    ("url", "answer", "asked"),
    [
        ("http://127.0.0.1:8080/ok", ["127.0.0.1"], ("127.0.0.1", 8080)),
        ("https://hooks.example.test/x", ["10.0.0.7"], ("hooks.example.test", 443)),
        ("http://hooks.example.test/x", ["8.8.8.8", "169.254.169.254"], ("hooks.example.test", 80)),
        ("http://[::1]:9/", ["::1"], ("::1", 9)),
    ],
)  # fmt: skip
async def test_judging_a_url_refuses_it_exactly_as_its_delivery_would(
    url: str, answer: list[str], asked: tuple[str, int]
) -> None:
    """judge() asks the guard under the notifier's client about the host and port the
    connection would open (default ports by scheme), connects to nothing, and its refusal,
    recorded the way a refused delivery is, is the same text, word for word."""
    inner, resolver = Recorder(), Resolver(answer)
    guard = destination.GuardedBackend((), resolver, inner)
    client = destination.GuardedClient(
        guard,
        transport=destination.GuardedTransport(guard, httpx.Limits(), httpx.create_ssl_context()),
        trust_env=False,
    )
    async with client:
        reason = await client.judge(url, 5)
        assert reason is not None
        assert resolver.asked == [asked]
        judged = policy.refused(reason).error
        assert judged is not None
        assert judged.startswith("DestinationRefused: ")
        assert judged == await _delivery_refusal(client, url)
    assert inner.connects == []


async def test_judging_an_allowed_url_connects_to_nothing() -> None:
    """A public address, or a private one the allow-list covers, is no refusal."""
    inner = Recorder()
    public = destination.GuardedBackend((), Resolver(["93.184.216.34"]), inner)
    assert await destination.judge(public, "https://hooks.example.test/", 5) is None
    allowed = destination.GuardedBackend(ALLOW, Resolver(["127.0.0.1"]), inner)
    assert await destination.judge(allowed, "http://receiver.example.test:8080/", 5) is None
    assert inner.connects == []


async def test_judging_a_name_that_does_not_resolve_is_not_a_refusal() -> None:
    """An unknown name, an empty answer or a DNS slower than the connect bound raise the
    httpx errors a delivery attempt fails on (and retries), never a refusal."""

    async def unknown(host: str, port: int) -> Sequence[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    async def slow(host: str, port: int) -> Sequence[str]:
        await asyncio.sleep(10)
        return ["10.0.0.1"]

    inner, url = Recorder(), "https://hooks.example.test/"
    with pytest.raises(httpx.ConnectError, match="cannot resolve"):
        await destination.judge(destination.GuardedBackend((), unknown, inner), url, 5)
    with pytest.raises(httpx.ConnectError, match="no address"):
        await destination.judge(destination.GuardedBackend((), Resolver([]), inner), url, 5)
    with pytest.raises(httpx.ConnectTimeout, match="resolving"):
        await destination.judge(destination.GuardedBackend((), slow, inner), url, 0.05)
    assert inner.connects == []


async def test_the_notifiers_client_judges_with_the_guard_it_connects_through() -> None:
    """The client new_client builds (the notifier's) asks one resolver and one allow-list
    both when it judges and when it delivers; both refuse 10.0.0.1 alike."""
    resolver, url = Resolver(["10.0.0.1"]), "https://hooks.example.test/"
    async with destination.new_client((), 4, resolver=resolver) as client:
        reason = await client.judge(url, 5)
        assert reason is not None
        assert policy.refused(reason).error == await _delivery_refusal(client, url)
    assert resolver.asked == [("hooks.example.test", 443)] * 2


def test_a_refused_destination_is_the_webhook_status_reason() -> None:
    """The endpoint's problem ``DestinationRefused: ...`` makes the Webhook Failing with
    reason DestinationRefused (the operator sets Ready=False from it)."""
    report = store.EndpointReport(
        problem="DestinationRefused: 127.0.0.1: loopback address, not allowed",
        circuit="Closed",
        consecutive_failures=0,
        last_attempt_at=None,
        last_success_at=None,
        last_event_id=None,
        last_event_type=None,
        last_outcome="Failed",
        last_status_code=None,
        last_error="DestinationRefused: 127.0.0.1: loopback address, not allowed",
        delivered_total=0,
        failed_total=1,
        pending=0,
    )
    phase, reason, message = status.phase_of(report, suspended=False)
    assert (phase, reason) == ("Failing", "DestinationRefused")
    assert message.startswith("127.0.0.1: loopback")
