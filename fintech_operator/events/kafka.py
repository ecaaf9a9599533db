"""How every Kafka client of the product connects: one function from settings to options.

The relay's producer, the rewards and notifier consumers, topic creation and the metrics
collector all build their aiokafka client as ``Client(**kafka.client_options(settings),
<their own delivery options>)``; none of them sets a security option itself, so a cluster
that requires TLS or a SASL login (Strimzi, MSK, Confluent) is reached by all of them or
by none.

The options hold the SASL password as aiokafka needs it, a plain string: never log them.
A password file is read again each time options are made, so a client created after a
mounted Secret was rotated logs in with the new password.

aiokafka reports a refused login only in its log and then raises a bare "Unable to
bootstrap"; :func:`start` turns that into :class:`KafkaAccessError` with the broker's
reason and the variables to check, which is what an operator of the product needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.conn import collect_hosts, create_conn
from aiokafka.errors import (
    IllegalSaslStateError,
    KafkaConnectionError,
    KafkaError,
    SaslAuthenticationFailed,
    TopicAlreadyExistsError,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.metadata import MetadataRequest

from fintech_operator import secretfile
from fintech_operator.events import topics

if TYPE_CHECKING:
    from fintech_operator import config

log = logging.getLogger(__name__)
SASL_PROTOCOLS: Final = frozenset({"SASL_PLAINTEXT", "SASL_SSL"})
TLS_PROTOCOLS: Final = frozenset({"SSL", "SASL_SSL"})
# A password file is a Secret key, never large; a bound keeps a wrong path from reading a disk.
PASSWORD_FILE_BYTES_MAX: Final = 64 * 1024
TOPIC_ADMIN_TIMEOUT_SECONDS: Final = 30.0
# until_reachable: a broker that restarts is back within seconds to a minute; a process started
# meanwhile retries quickly (doubling from 0.2 s, at most 2 s apart) so it is ready within about
# 2 s of the broker, and gives up after 5 minutes (its supervisor then restarts it, and says so).
REACHABLE_BACKOFF_FIRST_SECONDS: Final = 0.2
REACHABLE_BACKOFF_MAX_SECONDS: Final = 2.0
REACHABLE_TIMEOUT_SECONDS: Final = 300.0
# One attempt's bound: a broker that accepts connections but does not answer yet (starting,
# or paused) is asked again rather than waited for for TOPIC_ADMIN_TIMEOUT_SECONDS.
REACHABLE_ATTEMPT_SECONDS: Final = 10.0

_LOGIN_VARS: Final = (
    "FINTECH_KAFKA_SASL_USERNAME and FINTECH_KAFKA_SASL_PASSWORD "
    "(or FINTECH_KAFKA_SASL_PASSWORD_FILE)"
)


class KafkaAccessError(KafkaConnectionError):  # type: ignore[misc]  # aiokafka is untyped
    """Kafka refused our login or certificate, or our credentials cannot be read.

    A :class:`aiokafka.errors.KafkaConnectionError`, so code that retries an unreachable
    broker retries this too (a Secret may be fixed while the process runs); the message
    says what the broker answered and which variables to check.
    """

    def __str__(self) -> str:
        # aiokafka's errors prefix their class name, which a traceback already shows.
        return Exception.__str__(self)


class _Startable(Protocol):
    async def start(self) -> None: ...


# How long one Kafka client may take to stop (flush, leave its group) before it is left behind.
CLIENT_STOP_TIMEOUT_SECONDS: Final = 10.0


class _Stoppable(Protocol):
    async def stop(self) -> None: ...


async def stop_all(
    *clients: _Stoppable | None, timeout_seconds: float = CLIENT_STOP_TIMEOUT_SECONDS
) -> None:
    """Stop each client in turn, each within ``timeout_seconds``. A client that cannot stop
    cleanly (the broker is gone: a consumer's last offset commit, a producer's flush) is logged
    and left, and the clients after it are still stopped: one dead broker must not leave the
    others open (asyncio's 'Unclosed AIOKafkaProducer' at exit) or hang the shutdown."""
    for client in clients:
        if client is None:
            continue
        try:
            await asyncio.wait_for(client.stop(), timeout_seconds)
        except Exception as exc:  # shutting down: report and go on with the next client
            log.warning("stopping %s: %r; left behind", type(client).__name__, exc)
        except asyncio.CancelledError as exc:
            # aiokafka's consumer.stop() awaits the fetch task it has just cancelled; with the
            # broker gone that task's CancelledError comes out of stop() although nobody
            # cancelled this task (a traceback at every stop of `make dev` after `make down`).
            # A cancellation of this task itself still goes up.
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            log.warning("stopping %s: %r; left behind", type(client).__name__, exc)


def client_options(settings: config.Settings) -> dict[str, Any]:
    """Keyword arguments of any aiokafka client: the brokers and how to reach them."""
    protocol = settings.kafka.security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka.bootstrap_servers,
        "security_protocol": protocol,
    }
    if protocol in TLS_PROTOCOLS:
        options["ssl_context"] = ssl_context(settings)
    if protocol in SASL_PROTOCOLS:
        options["sasl_mechanism"] = settings.kafka.sasl_mechanism
        options["sasl_plain_username"] = settings.kafka.sasl_username
        options["sasl_plain_password"] = sasl_password(settings)
    return options


def ssl_context(settings: config.Settings) -> ssl.SSLContext:
    """A context that verifies the brokers' chain and host name, with our certificate if set."""
    ca_file = settings.kafka.ssl_ca_file or None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    except (ssl.SSLError, OSError) as exc:
        raise KafkaAccessError(
            f"FINTECH_KAFKA_SSL_CA_FILE: cannot load CA certificates from {ca_file}: {exc}"
        ) from exc
    # The defaults already say so; stated because turning either off would let anyone on
    # the path impersonate the broker and read every event and password.
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.kafka.ssl_cert_file:
        try:
            context.load_cert_chain(settings.kafka.ssl_cert_file, settings.kafka.ssl_key_file)
        except (ssl.SSLError, OSError) as exc:
            raise KafkaAccessError(
                "FINTECH_KAFKA_SSL_CERT_FILE/FINTECH_KAFKA_SSL_KEY_FILE: cannot load the "
                f"client certificate {settings.kafka.ssl_cert_file} with key "
                f"{settings.kafka.ssl_key_file}: {exc}"
            ) from exc
    return context


def sasl_password(settings: config.Settings) -> str:
    """The password from its file (read now, trailing newline dropped) or its variable."""
    path = settings.kafka.sasl_password_file
    if not path:
        return settings.kafka.sasl_password.get_secret_value()
    try:
        return secretfile.read(
            path, "FINTECH_KAFKA_SASL_PASSWORD_FILE", bytes_max=PASSWORD_FILE_BYTES_MAX
        )
    except secretfile.SecretFileError as exc:
        raise KafkaAccessError(str(exc)) from None


async def start(client: _Startable, settings: config.Settings, timeout_seconds: float) -> None:
    """Start an aiokafka client within ``timeout_seconds``; a refusal says why.

    When the client cannot bootstrap, one connection per bootstrap server is opened with
    the same options to learn the broker's reason (a wrong password, an untrusted
    certificate, a listener speaking another protocol) and raise it as
    :class:`KafkaAccessError`; an unreachable broker stays aiokafka's own error.
    """
    try:
        await asyncio.wait_for(client.start(), timeout_seconds)
    except KafkaConnectionError as exc:
        reason = await diagnose(settings, timeout_seconds)
        if reason is None:
            raise
        raise KafkaAccessError(reason) from exc


async def diagnose(settings: config.Settings, timeout_seconds: float) -> str | None:
    """Why the first bootstrap server that refuses us does so, or None if none refuses."""
    options = client_options(settings)
    servers = options.pop("bootstrap_servers")
    request_timeout_ms = int(timeout_seconds * 1000)
    for host, port, _family in collect_hosts(servers):
        try:
            connection = await asyncio.wait_for(
                create_conn(host, port, request_timeout_ms=request_timeout_ms, **options),
                timeout_seconds,
            )
            try:
                # A listener that wants a login answers the version lookup of a client
                # without one, then drops it on its first real request: ask for metadata.
                await asyncio.wait_for(connection.send(MetadataRequest([])), timeout_seconds)
            finally:
                connection.close()
        except (KafkaError, ssl.SSLError) as exc:
            return refusal(settings, f"{host}:{port}", exc)
        except (OSError, TimeoutError):
            continue  # Down or unreachable: aiokafka's own error already says so.
    return None


def refusal(settings: config.Settings, address: str, exc: BaseException) -> str:
    """One line naming the broker, what it answered and which variables to check."""
    protocol = settings.kafka.security_protocol
    detail = str(exc) or type(exc).__name__
    if isinstance(exc, SaslAuthenticationFailed):
        return (
            f"Kafka at {address} refused the {settings.kafka.sasl_mechanism} login of user "
            f"{settings.kafka.sasl_username!r}: authentication failed ({detail}); check "
            f"{_LOGIN_VARS}"
        )
    if isinstance(exc, UnsupportedSaslMechanismError):
        return (
            f"Kafka at {address} does not offer SASL mechanism "
            f"{settings.kafka.sasl_mechanism} ({detail}); check FINTECH_KAFKA_SASL_MECHANISM"
        )
    if isinstance(exc, IllegalSaslStateError):
        return (
            f"Kafka at {address} does not expect a SASL login ({detail}): the listener is "
            "not SASL_PLAINTEXT/SASL_SSL; check FINTECH_KAFKA_SECURITY_PROTOCOL and "
            "KAFKA_BOOTSTRAP_SERVERS"
        )
    if isinstance(exc, ssl.SSLError):
        return (
            f"TLS handshake with Kafka at {address} failed ({detail}); check "
            "FINTECH_KAFKA_SSL_CA_FILE (the CA that signed the broker's certificate) and "
            "that the address in KAFKA_BOOTSTRAP_SERVERS is named in that certificate"
        )
    return (
        f"cannot connect to Kafka at {address} with {protocol} ({detail}); check that "
        "FINTECH_KAFKA_SECURITY_PROTOCOL matches the listener of KAFKA_BOOTSTRAP_SERVERS"
        + (
            " and, if it requires a client certificate, FINTECH_KAFKA_SSL_CERT_FILE"
            if protocol in TLS_PROTOCOLS
            else ""
        )
    )


class TopicCreationError(RuntimeError):
    """The broker refused to create a topic (for example more replicas than brokers)."""


def min_insync_replicas(replication_factor: int) -> int:
    """Acks from two replicas when there are three or more, so one broker may fail safely."""
    return 2 if replication_factor >= 3 else 1


async def until_reachable(
    settings: config.Settings,
    timeout_seconds: float = REACHABLE_TIMEOUT_SECONDS,
    *,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    stopped: Callable[[], bool] = lambda: False,
) -> list[str]:
    """:func:`ensure_topics`, retried while the broker cannot be reached; the topics it made.

    Every process calls this first. A process started while the broker restarts (a crash, a
    rollout, a fault campaign) used to fail at once and wait for its supervisor's growing
    backoff (30 s and more); it now retries with a short, capped backoff and is ready about
    as soon as the broker is. A refusal (login, certificate, topic creation) is not an outage
    and is raised at once; so is the last error after ``timeout_seconds``. Once ``stopped()``
    says so, a failed attempt ends the wait as cancelled instead of retrying.
    """
    if not 0 < timeout_seconds <= 3600:
        raise ValueError(f"timeout_seconds must be in (0, 3600], got {timeout_seconds}")
    give_up_at = clock() + timeout_seconds
    delay = REACHABLE_BACKOFF_FIRST_SECONDS
    attempt = 1
    while True:
        attempt_seconds = max(0.5, min(REACHABLE_ATTEMPT_SECONDS, give_up_at - clock()))
        try:
            return await ensure_topics(settings, attempt_seconds)
        except (KafkaAccessError, TopicCreationError):
            raise
        except (KafkaError, OSError, TimeoutError) as exc:
            if stopped():
                # A cancellation that reached aiokafka mid-attempt can come back as a
                # connection error (seen: SIGTERM ignored for 60 s while the retries went on).
                raise asyncio.CancelledError from exc
            if clock() + delay >= give_up_at:
                raise
            log.info(
                "Kafka not reachable yet (attempt %d: %s); retrying in %.1f s",
                attempt, str(exc) or type(exc).__name__, delay,
            )  # fmt: skip
        await sleep(delay)
        delay = min(delay * 2, REACHABLE_BACKOFF_MAX_SECONDS)
        attempt += 1


async def until_reachable_or_stopped(settings: config.Settings, stop: asyncio.Event) -> bool:
    """:func:`until_reachable`, given up as soon as ``stop`` is set (SIGTERM, SIGINT): True once
    the broker answered, False when stopped first.

    A process asked to stop while it waits for an unreachable broker stops at once, instead of
    after the wait's 5 minutes, by which time Kubernetes (30 s of grace by default) or a
    supervisor would have killed it. The attempt in flight is cancelled, which closes its admin
    client.
    """
    if stop.is_set():
        return False
    waiting = asyncio.ensure_future(until_reachable(settings, stopped=stop.is_set))
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (waiting, stopping):
            if not task.done():
                task.cancel()
        await asyncio.gather(waiting, stopping, return_exceptions=True)
    if waiting.cancelled():
        log.info("stopped while waiting for Kafka")
        return False
    waiting.result()  # the broker's refusal, or the last error after the wait's timeout
    return True


async def ensure_topics(
    settings: config.Settings, timeout_seconds: float = TOPIC_ADMIN_TIMEOUT_SECONDS
) -> list[str]:
    """Create every topic that is missing (an existing one is left as it is); return those made.

    Partitions, replication and prefix come from the settings. This is the first Kafka call
    of every process, so a broker that refuses our login stops it here, saying why. Each step
    waits at most ``timeout_seconds``; :func:`until_reachable` retries it while Kafka is down.
    """
    prefix = settings.topics.prefix
    replication_factor = settings.topics.replication_factor
    admin = AIOKafkaAdminClient(
        **client_options(settings), request_timeout_ms=settings.kafka.request_timeout_ms
    )
    try:
        await start(admin, settings, timeout_seconds)
        existing = set(await asyncio.wait_for(admin.list_topics(), timeout_seconds))
        configs = {"min.insync.replicas": str(min_insync_replicas(replication_factor))}
        missing = [
            NewTopic(
                topics.qualified(name, prefix),
                num_partitions=settings.topics.partitions,
                replication_factor=replication_factor,
                topic_configs=configs,
            )
            for name in topics.ALL
            if topics.qualified(name, prefix) not in existing
        ]
        if missing:
            # Another process may create one between our list and create: same result.
            with contextlib.suppress(TopicAlreadyExistsError):
                response = await asyncio.wait_for(admin.create_topics(missing), timeout_seconds)
                _check_created(response.topic_errors)
    finally:
        await admin.close()
    return [topic.name for topic in missing]


def _check_created(topic_errors: list[tuple[object, ...]]) -> None:
    """Raise for a topic the broker refused, except one that already exists."""
    refused = [
        f"{item[0]}: error {item[1]}" + (f" ({item[2]})" if len(item) > 2 and item[2] else "")
        for item in topic_errors
        if item[1] not in (0, TopicAlreadyExistsError.errno)
    ]
    if refused:
        raise TopicCreationError("Kafka refused to create topics: " + "; ".join(refused))
