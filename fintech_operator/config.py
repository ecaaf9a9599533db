"""Process settings, read once from the environment and validated at start-up.

Settings are grouped by concern (``settings.database.pool_size_max``,
``settings.relay.batch_max``, ...); each group is a frozen model whose fields carry their
environment variable (:class:`Env`), unit, default, bound and reason, so
``docs/configuration.md`` is rendered from them (``fintech_operator.settings_reference``).
Units and qualifiers come last in field names (``attempts_max``, ``backoff_max_seconds``); the
environment variable names are kept as they were, whatever the field is called.

:func:`load` is called once per process, by ``fintech_operator.cli``, and the result is passed
down; nothing reads the environment at import. A bad value stops the process at start with a
message naming the variable, never later in a handler.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, TypeVar

import pydantic
from pydantic import BaseModel, ConfigDict, Field
from pydantic.fields import FieldInfo

from fintech_operator import secretfile

ENV_PREFIX = "FINTECH_"
WEBHOOK_ALLOWED_CIDRS_MAX_ITEMS = 64
WEBHOOK_ALLOWED_CIDRS_MAX_CHARS = 4096
_ROLE_PATTERN = r"^[a-z_][a-z0-9_]{0,62}$"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclasses.dataclass(frozen=True)
class Env:
    """The environment variable of a setting (``Annotated`` metadata of each field)."""

    name: str


class _Group(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# A settings group of another process (the gateway's): declared like these, loaded by
# load_groups, rendered into docs/configuration.md by the same code.
Group = _Group


class DatabaseSettings(_Group):
    """The ledger's PostgreSQL: connections, pool and roles."""

    url: Annotated[
        str,
        Env("DATABASE_URL"),
        Field(min_length=1, description="libpq DSN of the ledger, as the runtime role. Required."),
    ]
    # Least privilege: the ledger's owner migrates, a runtime role that owns nothing posts.
    migration_url: Annotated[
        str | None,
        Env("FINTECH_MIGRATION_DATABASE_URL"),
        Field(
            min_length=1,
            description="libpq DSN of the role that owns the ledger's tables, used only to "
            "apply migrations and grants; unset (the default), migrations run as "
            "DATABASE_URL's role.",
        ),
    ] = None
    migration_password: Annotated[
        pydantic.SecretStr | None,
        Env("FINTECH_MIGRATION_DATABASE_PASSWORD"),
        Field(
            repr=False,
            description="Password of FINTECH_MIGRATION_DATABASE_URL's role (from a Secret), "
            "kept out of the URL; PGPASSWORD stays the runtime role's. Never logged. "
            "Default unset.",
        ),
    ] = None
    runtime_role: Annotated[
        str | None,
        Env("FINTECH_DATABASE_RUNTIME_ROLE"),
        Field(
            pattern=_ROLE_PATTERN,
            description="PostgreSQL role granted exactly the privileges the processes use "
            "(no DDL, no TRUNCATE, no UPDATE or DELETE of append-only tables) each time "
            "migrations run; DATABASE_URL's role should be it or a member of it. Default "
            "unset: no grants are managed.",
        ),
    ] = None
    gateway_role: Annotated[
        str | None,
        Env("FINTECH_DATABASE_GATEWAY_ROLE"),
        Field(
            pattern=_ROLE_PATTERN,
            description="PostgreSQL role of the authorization gateway, granted each time "
            "migrations run exactly what the gateway uses (grants.GATEWAY_PRIVILEGES) and "
            "nothing on any other table; the gateway's DATABASE_URL role should be it or a "
            "member of it. Unset (the default): no gateway role is managed.",
        ),
    ] = None
    pool_size_min: Annotated[
        int,
        Env("FINTECH_DB_POOL_MIN_SIZE"),
        Field(
            ge=1,
            le=64,
            description="Connections the pool keeps open even when idle, so the first "
            "handlers after a quiet spell do not pay for connecting. Default 1.",
        ),
    ] = 1
    pool_size_max: Annotated[
        int,
        Env("FINTECH_DB_POOL_MAX_SIZE"),
        Field(
            ge=1,
            le=256,
            description="Most connections of one process's pool; kopf handlers queue for "
            "FINTECH_DB_POOL_MAX_SIZE minus 2 of them (docs/operations.md). Default 8.",
        ),
    ] = 8
    timeout_seconds: Annotated[
        float,
        Env("FINTECH_DB_TIMEOUT_SECONDS"),
        Field(
            gt=0,
            le=300,
            description="The one database timeout (issue 17), in seconds: the longest wait for "
            "a pooled connection (handlers, the ledger engine, consumers), for the pool to "
            "open at start, and (whole seconds, at least 2) for connecting. Default 10.",
        ),
    ] = 10.0


class KafkaSettings(_Group):
    """How every Kafka client of the product (relay, consumers, notifier, topic creation,
    metrics) connects; events/kafka.py turns these into client options."""

    bootstrap_servers: Annotated[
        str,
        Env("KAFKA_BOOTSTRAP_SERVERS"),
        Field(min_length=1, description="Comma-separated host:port of the brokers. Required."),
    ]
    request_timeout_ms: Annotated[
        int,
        Env("FINTECH_KAFKA_REQUEST_TIMEOUT_MS"),
        Field(
            ge=1000,
            le=300_000,
            description="Longest wait, in milliseconds, for a broker to answer one request "
            "of a producer, consumer or admin client before it is retried. Default 30000.",
        ),
    ] = 30_000
    security_protocol: Annotated[
        str,
        Env("FINTECH_KAFKA_SECURITY_PROTOCOL"),
        Field(
            pattern=r"^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$",
            description="PLAINTEXT (the default: no TLS, no login), SSL (TLS, optionally "
            "with a client certificate), SASL_PLAINTEXT (login without TLS) or SASL_SSL "
            "(login over TLS, what managed Kafka services require).",
        ),
    ] = "PLAINTEXT"
    sasl_mechanism: Annotated[
        str,
        Env("FINTECH_KAFKA_SASL_MECHANISM"),
        Field(
            pattern=r"^(|PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$",
            description="SASL mechanism, required with a SASL_* protocol: SCRAM-SHA-512 "
            "(Strimzi's KafkaUser), SCRAM-SHA-256 or PLAIN (Confluent Cloud API keys; send "
            "it over SASL_SSL only, it carries the password as is). Default empty.",
        ),
    ] = ""
    sasl_username: Annotated[
        str,
        Env("FINTECH_KAFKA_SASL_USERNAME"),
        Field(max_length=1024, description="SASL user name; required with SASL_*. Default empty."),
    ] = ""
    sasl_password: Annotated[
        pydantic.SecretStr,
        Env("FINTECH_KAFKA_SASL_PASSWORD"),
        Field(
            repr=False,
            description="SASL password; set it or FINTECH_KAFKA_SASL_PASSWORD_FILE, not both. "
            "Never logged. Default empty.",
        ),
    ] = pydantic.SecretStr("")
    sasl_password_file: Annotated[
        str,
        Env("FINTECH_KAFKA_SASL_PASSWORD_FILE"),
        Field(
            max_length=4096,
            description="Path of a file holding the SASL password (a mounted Secret key); "
            "read again by each new Kafka client, so a rotated Secret is used without a "
            "restart. A trailing newline is ignored. Default empty.",
        ),
    ] = ""
    ssl_ca_file: Annotated[
        str,
        Env("FINTECH_KAFKA_SSL_CA_FILE"),
        Field(
            max_length=4096,
            description="PEM file of the CA(s) that signed the brokers' certificates, for SSL "
            "and SASL_SSL; empty (the default) trusts the system's CAs. Broker host names "
            "are always checked against their certificates.",
        ),
    ] = ""
    ssl_cert_file: Annotated[
        str,
        Env("FINTECH_KAFKA_SSL_CERT_FILE"),
        Field(
            max_length=4096,
            description="PEM client certificate (chain) for mutual TLS; set together with "
            "FINTECH_KAFKA_SSL_KEY_FILE. Default empty: no client certificate.",
        ),
    ] = ""
    ssl_key_file: Annotated[
        str,
        Env("FINTECH_KAFKA_SSL_KEY_FILE"),
        Field(
            max_length=4096,
            description="Unencrypted PEM private key of FINTECH_KAFKA_SSL_CERT_FILE. "
            "Default empty.",
        ),
    ] = ""


class TopicSettings(_Group):
    """The Kafka topics the product creates and uses (events/topics.py names them)."""

    prefix: Annotated[
        str,
        Env("FINTECH_TOPIC_PREFIX"),
        Field(
            pattern=r"^[A-Za-z0-9._-]{0,64}$",
            description="Prepended to every topic name, so several environments (or test "
            "runs) can share one Kafka cluster; default empty.",
        ),
    ] = ""
    partitions: Annotated[
        int,
        Env("FINTECH_TOPIC_PARTITIONS"),
        Field(
            ge=1,
            le=1024,
            description="Partitions of each topic the product creates: the most consumers of "
            "one group that can work at once. Existing topics are not changed. Default 3.",
        ),
    ] = 3
    replication_factor: Annotated[
        int,
        Env("FINTECH_TOPIC_REPLICATION_FACTOR"),
        Field(ge=1, le=5, description="Replicas of each topic the product creates; default 1."),
    ] = 1


class RelaySettings(_Group):
    """The outbox relay: PostgreSQL outbox rows to Kafka, in the operator's process."""

    batch_max: Annotated[
        int,
        Env("FINTECH_RELAY_BATCH_SIZE"),
        Field(
            ge=1,
            le=10_000,
            description="Most outbox rows published in one batch (one transaction, one wait "
            "for Kafka's acknowledgements). Default 5000.",
        ),
    ] = 5_000
    # The relay wakes on PostgreSQL NOTIFY at once; this is only its fallback scan interval.
    idle_interval_ms: Annotated[
        int,
        Env("FINTECH_RELAY_IDLE_INTERVAL_MS"),
        Field(
            ge=10,
            le=60_000,
            description="Fallback scan interval of an idle relay, in milliseconds; it wakes on "
            "PostgreSQL NOTIFY at once, this only bounds a lost notification. Default 1000.",
        ),
    ] = 1000
    send_timeout_seconds: Annotated[
        float,
        Env("FINTECH_RELAY_SEND_TIMEOUT_SECONDS"),
        Field(
            gt=0,
            le=300,
            description="Longest wait for Kafka to acknowledge one relay batch before the "
            "batch is rolled back and retried; default 30.",
        ),
    ] = 30.0
    backoff_max_seconds: Annotated[
        float,
        Env("FINTECH_RELAY_BACKOFF_MAX_SECONDS"),
        Field(
            gt=0,
            le=300,
            description="Cap of the relay's exponential backoff while Kafka or PostgreSQL is "
            "down; default 10.",
        ),
    ] = 10.0


class ConsumerSettings(_Group):
    """Kafka consumers of the product's events (the rewards consumer)."""

    batch_max: Annotated[
        int,
        Env("FINTECH_CONSUMER_BATCH_SIZE"),
        Field(
            ge=1,
            le=10_000,
            description="Most records one poll returns and one transaction records. Default 5000.",
        ),
    ] = 5_000
    attempts_max: Annotated[
        int,
        Env("FINTECH_CONSUMER_MAX_ATTEMPTS"),
        Field(
            ge=1,
            le=100,
            description="Tries of one record before it is set aside as a poison message "
            "(dead-lettered) so the partition moves on. Default 5.",
        ),
    ] = 5


class PostingSettings(_Group):
    """The operator's posting queue (app/posting_queue.py, docs/ledger.md "Posting queue")."""

    workers: Annotated[
        int,
        Env("FINTECH_POSTING_WORKERS"),
        Field(
            ge=1,
            le=64,
            description="Posting batches decided at once, each on one pooled connection "
            "(count). Postings of one card never run in two batches at once, so more workers "
            "only help many cards; each holds a connection for its batch, so it must be below "
            "FINTECH_DB_POOL_MAX_SIZE. Default 3.",
        ),
    ] = 3
    batch_max: Annotated[
        int,
        Env("FINTECH_POSTING_BATCH_MAX"),
        Field(
            ge=1,
            le=500,
            description="Postings decided in one database transaction (count), each under its "
            "own savepoint with its own decision: one commit per batch instead of per posting. "
            "Larger batches hold their card locks longer. Default 20.",
        ),
    ] = 20
    queue_max: Annotated[
        int,
        Env("FINTECH_POSTING_QUEUE_MAX"),
        Field(
            ge=1,
            le=1_000_000,
            description="Postings waiting in the operator's queue (count); past it a posting's "
            "handler is retried a few seconds later instead of queueing, so a burst cannot grow "
            "the operator's memory without bound (about 2 KiB per waiting posting). "
            "Default 20000.",
        ),
    ] = 20_000


class CardSettings(_Group):
    """Cards: the batched refresh of their status, and waiting for a card not issued yet."""

    refresh_interval_seconds: Annotated[
        float,
        Env("FINTECH_CARD_REFRESH_INTERVAL_SECONDS"),
        Field(
            ge=1,
            le=3600,
            description="How often a namespace's Cards get balance, held, available and points "
            "refreshed in status (one batched pass). Default 10.",
        ),
    ] = 10.0
    orphan_sweep_interval_seconds: Annotated[
        float,
        Env("FINTECH_CARD_ORPHAN_SWEEP_INTERVAL_SECONDS"),
        Field(
            ge=1,
            le=86_400,
            description="How often a namespace's refresh looks for card accounts that can "
            "still spend although their Card is gone (deleted while the operator was down or "
            "the database was), and retires their token and closes them; also at the first "
            "refresh after the operator starts. Default 300.",
        ),
    ] = 300.0
    missing_retries_max: Annotated[
        int,
        Env("FINTECH_MISSING_CARD_RETRY_LIMIT"),
        Field(
            ge=0,
            le=1000,
            description="Retries, 2 s apart, of a Posting or CardReview waiting for its card "
            "(not there or not issued yet), a reversal waiting for its original's journal and a "
            "Card waiting for its product, before each gives up (CardNotFound or CardNotActive, "
            "JournalNotFound, ProductNotFound): about a minute by default. Default 30.",
        ),
    ] = 30


class HealthSettings(_Group):
    """The liveness probe; /metrics listens on the same host."""

    host: Annotated[
        str,
        Env("FINTECH_HEALTH_HOST"),
        Field(
            min_length=1,
            max_length=255,
            pattern=r"^[A-Za-z0-9.:_-]+$",
            description="Address the liveness probe and /metrics listen on; default 127.0.0.1 "
            "(the image sets 0.0.0.0 so the kubelet and Prometheus reach them).",
        ),
    ] = "127.0.0.1"
    port: Annotated[
        int,
        Env("FINTECH_HEALTH_PORT"),
        Field(
            ge=0,
            le=65535,
            description="TCP port of the operator's liveness probe /healthz on "
            "FINTECH_HEALTH_HOST; 0 turns it off; `run --liveness-port` wins over it. A port "
            "in use stops the operator at start naming it. Default 8080.",
        ),
    ] = 8080


class PeeringSettings(_Group):
    """One active operator: kopf peering between replicas."""

    name: Annotated[
        str,
        Env("FINTECH_PEERING_NAME"),
        Field(
            pattern=r"^([a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?)?$",
            description="The kopf peering object (KopfPeering per watched namespace, or a "
            "ClusterKopfPeering) the replicas meet in; the chart sets it. Empty (the default, "
            "development and tests): the operator runs standalone.",
        ),
    ] = ""
    priority: Annotated[
        int,
        Env("FINTECH_PEERING_PRIORITY"),
        Field(
            ge=0,
            le=2**31 - 1,
            description="This replica's peering priority: the highest is active, the others "
            "pause as warm standbys (kopf pauses all of equal priority, so equal values are a "
            "mistake). 0 (the default): a random priority.",
        ),
    ] = 0


class MetricsSettings(_Group):
    """Prometheus /metrics (issue 7), on FINTECH_HEALTH_HOST like the probes."""

    port: Annotated[
        int,
        Env("FINTECH_METRICS_PORT"),
        Field(
            ge=0,
            le=65535,
            description="TCP port of the Prometheus /metrics endpoint; 0 (the default) turns "
            "it and the outbox/lag collector off, so processes sharing a host never collide. "
            "The Helm chart sets 9102.",
        ),
    ] = 0
    collect_interval_seconds: Annotated[
        float,
        Env("FINTECH_METRICS_COLLECT_INTERVAL_SECONDS"),
        Field(
            ge=1,
            le=3600,
            description="How often the operator reads outbox backlog and consumer lag for "
            "/metrics; also the timeout of one such read. Default 15.",
        ),
    ] = 15.0
    consumer_groups_max: Annotated[
        int,
        Env("FINTECH_METRICS_CONSUMER_GROUPS_MAX"),
        Field(
            ge=0,
            le=1000,
            description="Most Kafka consumer groups whose lag is exported (in name order, "
            "only groups reading this installation's topics), bounding the label count; 0 "
            "turns lag collection off. Default 50.",
        ),
    ] = 50


# A logging level by name, in any case, stored upper case; the gateway's settings use it too.
LogLevel = Annotated[
    str,
    Field(pattern=r"(?i)^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$"),
    pydantic.AfterValidator(str.upper),
]


class LogSettings(_Group):
    """Every process's JSON log lines on stderr (docs/operations.md)."""

    level: Annotated[
        LogLevel,
        Env("FINTECH_LOG_LEVEL"),
        Field(
            description="Lowest level written: DEBUG, INFO, WARNING, ERROR or CRITICAL (any "
            "case). Default INFO.",
        ),
    ] = "INFO"


class TracingSettings(_Group):
    """OpenTelemetry trace export (docs/operations.md), under OpenTelemetry's own variable
    names. These are the variables the product itself interprets, read once with the other
    settings. The SDK reads its remaining standard variables itself when the exporter is made
    (OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER, OTEL_BSP_*, OTEL_EXPORTER_OTLP_HEADERS and
    _TIMEOUT): they tune the SDK without changing what the product does, so they are left to
    it rather than copied here, where two readings could disagree."""

    sdk_disabled: Annotated[
        str,
        Env("OTEL_SDK_DISABLED"),
        Field(
            max_length=16,
            description="`true` (any case) turns tracing off entirely, as the OpenTelemetry "
            "specification says; any other value leaves it on. Default empty (on).",
        ),
    ] = ""
    exporter: Annotated[
        str,
        Env("OTEL_TRACES_EXPORTER"),
        Field(
            max_length=64,
            description="otlp (the default) exports when an endpoint is set; none records "
            "nothing. Anything else stops the process at start.",
        ),
    ] = "otlp"
    endpoint: Annotated[
        str,
        Env("OTEL_EXPORTER_OTLP_ENDPOINT"),
        Field(
            max_length=2048,
            description="Base URL of the OTLP/HTTP collector (/v1/traces is appended); "
            "setting it turns export on. Default empty: nothing is exported or recorded.",
        ),
    ] = ""
    traces_endpoint: Annotated[
        str,
        Env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
        Field(
            max_length=2048,
            description="Full URL traces are sent to, used as it is; wins over "
            "OTEL_EXPORTER_OTLP_ENDPOINT. Default empty.",
        ),
    ] = ""
    protocol: Annotated[
        str,
        Env("OTEL_EXPORTER_OTLP_PROTOCOL"),
        Field(
            max_length=64,
            description="OTLP transport; only http/protobuf is built in, so another value "
            "with an endpoint set stops the process at start. Default empty (http/protobuf).",
        ),
    ] = ""
    traces_protocol: Annotated[
        str,
        Env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"),
        Field(
            max_length=64,
            description="OTEL_EXPORTER_OTLP_PROTOCOL for traces only; wins over it. Default empty.",
        ),
    ] = ""
    service_name: Annotated[
        str,
        Env("OTEL_SERVICE_NAME"),
        Field(
            max_length=255,
            description="service.name of this process's spans. Default empty: the process's "
            "own name (fintech-operator, fintech-rewards, ...).",
        ),
    ] = ""


class NotifierSettings(_Group):
    """The webhook notifier (issue 5): routing events to Webhooks and delivering them."""

    refresh_interval_seconds: Annotated[
        float,
        Env("FINTECH_NOTIFIER_REFRESH_INTERVAL_SECONDS"),
        Field(
            ge=1,
            le=300,
            description="How often the notifier re-reads Webhook resources and their Secrets "
            "(signing keys, endpoint ownership). A new Webhook does not wait for it: the notifier "
            "lists Webhooks again before routing any event newer than its last list. Default 10.",
        ),
    ] = 10.0
    clock_skew_seconds: Annotated[
        float,
        Env("FINTECH_NOTIFIER_CLOCK_SKEW_SECONDS"),
        Field(
            ge=1,
            le=30,
            description="How long after an event's time a list of Webhooks must have started "
            "for the notifier to route the event with it: covers creationTimestamp's whole "
            "seconds, the API server's write and clock differences between the operator, the "
            "API server and the notifier. Every event is routed at the earliest this long "
            "after its time. Default 2.",
        ),
    ] = 2.0
    route_hold_max_seconds: Annotated[
        float,
        Env("FINTECH_NOTIFIER_ROUTE_HOLD_MAX_SECONDS"),
        Field(
            ge=10,
            le=180,
            description="Longest the notifier holds events (routing nothing, committing no "
            "offset) while it cannot list Webhooks; past it, it routes them with the last list "
            "it has, logs a warning and counts them in "
            "fintech_notifier_routed_uncovered_total. Default 60.",
        ),
    ] = 60.0
    poll_interval_ms: Annotated[
        int,
        Env("FINTECH_NOTIFIER_POLL_INTERVAL_MS"),
        Field(
            ge=10,
            le=60_000,
            description="Longest sleep of an idle delivery worker when no notification wakes "
            "it; default 1000.",
        ),
    ] = 1000
    in_flight_max: Annotated[
        int,
        Env("FINTECH_NOTIFIER_MAX_IN_FLIGHT"),
        Field(
            ge=1,
            le=1000,
            description="Webhook HTTP requests in flight at once over all endpoints of one "
            "notifier process; default 64.",
        ),
    ] = 64


class WebhookSettings(_Group):
    """Webhook resources: their status, their delivery log and where they may point."""

    status_interval_seconds: Annotated[
        float,
        Env("FINTECH_WEBHOOK_STATUS_INTERVAL_SECONDS"),
        Field(
            ge=1,
            le=3600,
            description="How often the operator copies delivery state into Webhook status "
            "(only changes are patched); default 10.",
        ),
    ] = 10.0
    log_retention_hours: Annotated[
        int,
        Env("FINTECH_WEBHOOK_LOG_RETENTION_HOURS"),
        Field(
            ge=1,
            le=8760,
            description="Finished webhook deliveries (delivered or failed) and their attempts "
            "are deleted this many hours after they finished; default 336 (14 days).",
        ),
    ] = 336
    allowed_cidrs: Annotated[
        str,
        Env("FINTECH_WEBHOOK_ALLOWED_CIDRS"),
        Field(
            max_length=WEBHOOK_ALLOWED_CIDRS_MAX_CHARS,
            pattern=r"^[0-9A-Fa-f:./, ]*$",
            description="Comma-separated CIDRs the notifier may deliver webhooks to although "
            "they are not public addresses (loopback, private, link-local, CGNAT, ...), for "
            "example 10.20.0.0/16 for an in-cluster receiver. Empty (the default) allows public "
            "addresses only, so a Webhook URL cannot reach cloud metadata, the cluster's "
            "Services or the notifier's own host. The local dev stack and the tests set "
            "127.0.0.0/8,::1/128.",
        ),
    ] = ""

    @pydantic.field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: str) -> str:
        """Each item must be a network address with its prefix (host bits zero); normalised."""
        items = [item for item in value.replace(",", " ").split() if item]
        if len(items) > WEBHOOK_ALLOWED_CIDRS_MAX_ITEMS:
            raise ValueError(f"at most {WEBHOOK_ALLOWED_CIDRS_MAX_ITEMS} CIDRs")
        return ",".join(str(ipaddress.ip_network(item, strict=True)) for item in items)


class ReconSettings(_Group):
    """Reconciliation runs (issue 6)."""

    workers_max: Annotated[
        int,
        Env("FINTECH_RECON_WORKERS_MAX"),
        Field(
            ge=1,
            le=16,
            description="ReconciliationRuns worked on at once, each in its own thread with its "
            "own database connection (outside the pool); others wait. Default 2.",
        ),
    ] = 2
    records_max: Annotated[
        int,
        Env("FINTECH_RECON_RECORDS_MAX"),
        Field(
            ge=1,
            le=1_000_000_000,
            description="Most records one settlement source may hold; a larger source fails "
            "the run as SourceTooLarge. Default 10000000.",
        ),
    ] = 10_000_000
    statement_timeout_seconds: Annotated[
        int,
        Env("FINTECH_RECON_STATEMENT_TIMEOUT_SECONDS"),
        Field(
            ge=1,
            le=86_400,
            description="Longest single SQL statement of a run (loading, joining); default 1800.",
        ),
    ] = 1800
    work_mem_mb: Annotated[
        int,
        Env("FINTECH_RECON_WORK_MEM_MB"),
        Field(
            ge=4,
            le=4096,
            description="PostgreSQL work_mem of a run's transaction, in MiB: memory per sort "
            "or hash before it spills to disk. Default 64.",
        ),
    ] = 64
    cluster_namespace: Annotated[
        str,
        Env("FINTECH_RECON_CLUSTER_NAMESPACE"),
        Field(
            pattern=r"^([a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)?$",
            description="The one namespace whose ReconciliationRuns may set spec.scope Cluster "
            "and so compare every namespace's money; grant create on reconciliationruns there "
            "only to those who may see all of it. Empty (the default): no run is cluster-wide, "
            "each compares only its own namespace.",
        ),
    ] = ""


class TokenizerSettings(_Group):
    """Card numbers: the card processor's tokenizer (cards/http_tokenizer.py), or the
    development one by explicit opt-in: the operator fails closed without either."""

    mode: Annotated[
        str,
        Env("FINTECH_TOKENIZER"),
        Field(
            pattern=r"^(|development)$",
            description="`development` opts in to the built-in development tokenizer (random "
            "last 4, no processor: never for production); empty (the default) needs "
            "FINTECH_TOKENIZER_URL. The operator refuses to start with neither, or with both.",
        ),
    ] = ""
    url: Annotated[
        str,
        Env("FINTECH_TOKENIZER_URL"),
        Field(
            max_length=2048,
            description="URL the operator POSTs to for a new card's token and last 4 (the card "
            "processor's tokenization endpoint). Empty (the default): the operator refuses to "
            "start unless FINTECH_TOKENIZER=development. https is required, except http to a "
            "loopback host (127.0.0.1, ::1, localhost) for tests; no user:password@ in it.",
        ),
    ] = ""
    token_file: Annotated[
        str,
        Env("FINTECH_TOKENIZER_TOKEN_FILE"),
        Field(
            max_length=4096,
            description="Path of a file holding the processor's bearer credential (a mounted "
            "Secret key); required with FINTECH_TOKENIZER_URL. Read again on every request, so "
            "a rotated Secret is used without a restart. Surrounding whitespace is ignored. "
            "Default empty.",
        ),
    ] = ""
    timeout_seconds: Annotated[
        float,
        Env("FINTECH_TOKENIZER_TIMEOUT_SECONDS"),
        Field(
            gt=0,
            le=60,
            description="Longest wait for one tokenization request, connecting included; a "
            "slower processor is treated as down and the issuance is retried with backoff "
            "(same idempotency key). Default 10.",
        ),
    ] = 10.0

    @pydantic.field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        """Empty, or an absolute https URL (http only to a loopback host), without credentials."""
        if not value:
            return value
        parts = urllib.parse.urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an absolute http(s) URL with a host, or empty")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials; use FINTECH_TOKENIZER_TOKEN_FILE")
        if parts.fragment or any(c.isspace() for c in value):
            raise ValueError("must have no fragment and no whitespace")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK_HOSTS:
            raise ValueError("must use https (http is allowed only to a loopback host)")
        return value


class Settings(BaseModel):
    """All tunables of the operator and its consumers, one group per concern.

    The gateway (``fintech-operator gateway``) loads its own model of groups
    (``fintech_operator.gateway.settings.GatewayProcessSettings``): the groups it shares with
    the other processes and its own ``gateway`` group, through :func:`load_groups`.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    database: DatabaseSettings
    kafka: KafkaSettings
    topics: TopicSettings = TopicSettings()
    relay: RelaySettings = RelaySettings()
    consumers: ConsumerSettings = ConsumerSettings()
    postings: PostingSettings = PostingSettings()
    cards: CardSettings = CardSettings()
    health: HealthSettings = HealthSettings()
    peering: PeeringSettings = PeeringSettings()
    metrics: MetricsSettings = MetricsSettings()
    logs: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()
    notifier: NotifierSettings = NotifierSettings()
    webhooks: WebhookSettings = WebhookSettings()
    recon: ReconSettings = ReconSettings()
    tokenizer: TokenizerSettings = TokenizerSettings()


class MigrateSettings(BaseModel):
    """What ``fintech-operator migrate`` reads: the ``database`` group alone. It talks to
    PostgreSQL only, so a missing Kafka or tokenizer setting does not stop it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    database: DatabaseSettings


@dataclasses.dataclass(frozen=True)
class SettingField:
    """One setting: where it lives in :class:`Settings` and its environment variable."""

    group: str
    name: str
    env: str
    info: FieldInfo

    @property
    def path(self) -> str:
        return f"{self.group}.{self.name}"


def fields(process: type[BaseModel] = Settings) -> Iterator[SettingField]:
    """Every setting of ``process`` (the operator's and its consumers' by default), group by
    group in declaration order."""
    for group, group_info in process.model_fields.items():
        model = group_info.annotation
        if not (isinstance(model, type) and issubclass(model, _Group)):
            raise TypeError(f"{process.__name__}.{group} must be a settings group")
        for name, info in model.model_fields.items():
            envs = [meta.name for meta in info.metadata if isinstance(meta, Env)]
            if len(envs) != 1:
                raise TypeError(f"{model.__name__}.{name} must carry exactly one Env(...)")
            yield SettingField(group, name, envs[0], info)


def env_names(process: type[BaseModel] = Settings) -> dict[str, str]:
    """Field path (``"relay.batch_max"``) to environment variable name."""
    return {field.path: field.env for field in fields(process)}


def _env_name(path: str) -> str:
    return env_names()[path]


_P = TypeVar("_P", bound=BaseModel)


class SettingsError(RuntimeError):
    """A setting is missing or out of bounds; the message names the variable."""


def check_operator(settings: Settings) -> None:
    """The operator's own cross-checks (other processes share the settings, not these)."""
    if settings.postings.workers >= settings.database.pool_size_max:
        raise SettingsError(
            f"{_env_name('postings.workers')} must be below "
            f"{_env_name('database.pool_size_max')}: each posting worker holds a connection "
            "while its batch runs"
        )


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment, failing with the variable's name.

    Called once per process (by ``fintech_operator.cli``); the result is passed down.
    """
    settings = load_groups(Settings, environ)
    _check_ranges(settings)
    _check_kafka_security(settings.kafka)
    _check_tokenizer(settings.tokenizer)
    return settings


def load_migrate(environ: Mapping[str, str] | None = None) -> MigrateSettings:
    """``migrate``'s settings (the ``database`` group), failing with the variable's name."""
    return load_groups(MigrateSettings, environ)


def load_groups(process: type[_P], environ: Mapping[str, str] | None = None) -> _P:
    """``process``'s settings (a model of groups) from the environment, failing with the
    variable's name: the one loader of every process's settings (the gateway's too)."""
    source: Mapping[str, str] = os.environ if environ is None else environ
    names = env_names(process)
    values: dict[str, dict[str, Any]] = {group: {} for group in process.model_fields}
    for path, env in names.items():
        if env in source:
            group, name = path.split(".")
            values[group][name] = source[env]
    try:
        return process.model_validate(values)
    except pydantic.ValidationError as exc:
        problems = "; ".join(_problem(names, err, process) for err in exc.errors())
        # from None: pydantic's own text repeats each input value, and a value may be a secret.
        raise SettingsError(f"invalid settings: {problems}") from None


def _located(names: Mapping[str, str], loc: tuple[int | str, ...]) -> str:
    """The variable an error is about. A group-wide error (a check across fields) is about
    the group's variables its message names, else about all of the group's."""
    path = ".".join(str(part) for part in loc[:2])
    if path in names:
        return names[path]
    return ", ".join(env for key, env in names.items() if key.startswith(f"{loc[0]}."))


def _problem(names: Mapping[str, str], error: Any, process: type[BaseModel] = Settings) -> str:
    located, message = _located(names, error["loc"]), str(error["msg"])
    named = [env for env in located.split(", ") if env in message]
    if len(error["loc"]) == 1 and named:
        return message.removeprefix("Value error, ")
    if error["type"] == "string_pattern_mismatch":
        # "String should match pattern '^(|development)$'" tells a person little: say what the
        # setting takes, in the words of its description (the value itself is never repeated).
        described = _description(process, error["loc"])
        if described:
            rule = (error.get("ctx") or {}).get("pattern")
            shape = f" (it must match {rule})" if rule else ""
            return f"{located}: not a value this setting takes{shape}. {described}"
    return f"{located}: {message}"


def _description(process: type[BaseModel], loc: tuple[int | str, ...]) -> str | None:
    """The description of the setting at ``loc`` (group, field) of ``process``, if any."""
    if len(loc) < 2:
        return None
    group = process.model_fields.get(str(loc[0]))
    model = group.annotation if group is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return None
    field = model.model_fields.get(str(loc[1]))
    return None if field is None else field.description


def _check_ranges(settings: Settings) -> None:
    if settings.database.pool_size_min > settings.database.pool_size_max:
        raise SettingsError(
            f"{_env_name('database.pool_size_min')} must not exceed "
            f"{_env_name('database.pool_size_max')}"
        )
    notifier = settings.notifier
    if notifier.route_hold_max_seconds <= notifier.clock_skew_seconds:
        # Every fresh event waits the skew allowance before it is routed; a shorter hold would
        # route every one of them without the Webhook list that covers it.
        raise SettingsError(
            f"{_env_name('notifier.route_hold_max_seconds')} must exceed "
            f"{_env_name('notifier.clock_skew_seconds')}"
        )


def _check_tokenizer(settings: TokenizerSettings) -> None:
    """The processor's tokenizer needs its credential file, readable and not empty, at start."""
    mode_var = _env_name("tokenizer.mode")
    url_var, file_var = _env_name("tokenizer.url"), _env_name("tokenizer.token_file")
    if settings.mode and settings.url:
        raise SettingsError(
            f"{mode_var}={settings.mode} and {url_var} are both set; "
            f"set {url_var} for the card processor's tokenizer, or "
            f"{mode_var}=development for the built-in one, not both"
        )
    if not settings.url:
        if settings.token_file:
            raise SettingsError(
                f"{file_var} is set but {url_var} is empty (the built-in tokenizer needs no "
                f"credential); set {url_var} to the card processor's tokenization URL"
            )
        return
    if not settings.token_file:
        raise SettingsError(
            f"{file_var} is required when {url_var} is set (the processor's bearer credential)"
        )
    _check_secret_file("tokenizer.token_file", settings.token_file)


_KAFKA_SASL_PROTOCOLS = ("SASL_PLAINTEXT", "SASL_SSL")
_KAFKA_TLS_PROTOCOLS = ("SSL", "SASL_SSL")


def _check_kafka_security(settings: KafkaSettings) -> None:
    """Refuse Kafka security settings that cannot work together, naming the variables.

    A setting that the chosen protocol would ignore is an error, not a no-op: a password
    given with PLAINTEXT means someone forgot the protocol, and connecting without the
    login they meant to use would only fail later, less clearly.
    """
    protocol = settings.security_protocol
    protocol_var = _env_name("kafka.security_protocol")
    sasl = {
        "kafka.sasl_mechanism": settings.sasl_mechanism,
        "kafka.sasl_username": settings.sasl_username,
        "kafka.sasl_password": settings.sasl_password.get_secret_value(),
        "kafka.sasl_password_file": settings.sasl_password_file,
    }
    tls = {
        "kafka.ssl_ca_file": settings.ssl_ca_file,
        "kafka.ssl_cert_file": settings.ssl_cert_file,
        "kafka.ssl_key_file": settings.ssl_key_file,
    }
    if protocol in _KAFKA_SASL_PROTOCOLS:
        _check_kafka_sasl(settings, protocol, protocol_var)
    else:
        for path, value in sasl.items():
            if value:
                raise SettingsError(
                    f"{_env_name(path)} is set but {protocol_var} is {protocol}, which sends "
                    "no login; set it to SASL_PLAINTEXT or SASL_SSL"
                )
    if protocol not in _KAFKA_TLS_PROTOCOLS:
        for path, value in tls.items():
            if value:
                raise SettingsError(
                    f"{_env_name(path)} is set but {protocol_var} is {protocol}, which does "
                    "not use TLS; set it to SSL or SASL_SSL"
                )
    if bool(settings.ssl_cert_file) != bool(settings.ssl_key_file):
        raise SettingsError(
            f"{_env_name('kafka.ssl_cert_file')} and {_env_name('kafka.ssl_key_file')} "
            "go together: set both for mutual TLS, or neither"
        )
    for path, file in tls.items():
        if file:
            _check_readable_file(path, file)


def _check_kafka_sasl(settings: KafkaSettings, protocol: str, protocol_var: str) -> None:
    if not settings.sasl_mechanism:
        raise SettingsError(
            f"{_env_name('kafka.sasl_mechanism')} is required when {protocol_var} is "
            f"{protocol}: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
        )
    if not settings.sasl_username:
        raise SettingsError(
            f"{_env_name('kafka.sasl_username')} is required when {protocol_var} is {protocol}"
        )
    password_var = _env_name("kafka.sasl_password")
    file_var = _env_name("kafka.sasl_password_file")
    has_password = bool(settings.sasl_password.get_secret_value())
    if has_password == bool(settings.sasl_password_file):
        raise SettingsError(
            f"set exactly one of {password_var} and {file_var} when {protocol_var} is "
            f"{protocol} (a {settings.sasl_mechanism} login needs a password)"
        )
    if settings.sasl_password_file:
        _check_secret_file("kafka.sasl_password_file", settings.sasl_password_file)


def _check_secret_file(path: str, file: str) -> None:
    """A mounted Secret key must exist and hold something, checked at start as on each use."""
    _check_readable_file(path, file)
    try:
        secretfile.read(file, _env_name(path))
    except secretfile.SecretFileError as exc:
        raise SettingsError(str(exc)) from None


def _check_readable_file(path: str, file: str) -> None:
    """Fail at start-up, naming the variable, when a mounted file is missing or unreadable."""
    if not os.path.isfile(file):
        raise SettingsError(f"{_env_name(path)}: no such file: {file}")
    try:
        with open(file, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise SettingsError(f"{_env_name(path)}: cannot read {file}: {exc.strerror}") from exc
