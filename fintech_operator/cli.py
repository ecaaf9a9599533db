"""The ``fintech-operator`` command: the operator, its consumers and the local platform."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fintech_operator import config

DEVSTACK_MODULE = "fintech_devstack.cli"


def _settings() -> config.Settings:
    """The process's settings, loaded here once and passed down (a bad one raises
    ``SettingsError``, which :func:`main` prints naming the variable)."""
    from fintech_operator import config  # noqa: PLC0415 - keep `--help` fast

    return config.load()


def _cmd_run(args: argparse.Namespace) -> int:
    from fintech_operator import runtime  # noqa: PLC0415 - keep `--help` fast

    return runtime.run_operator(
        _settings(), namespaces=args.namespace, liveness_port=args.liveness_port
    )


def _cmd_rewards(args: argparse.Namespace) -> int:
    from fintech_operator.rewards import consumer  # noqa: PLC0415

    return consumer.main(_settings(), group_id=args.group)


def _cmd_notifier(args: argparse.Namespace) -> int:
    from fintech_operator.notify import service  # noqa: PLC0415

    return service.main(_settings(), namespaces=args.namespace, group_id=args.group)


def _cmd_authorization_expiry(args: argparse.Namespace) -> int:
    from fintech_operator.authorizations import expiry  # noqa: PLC0415

    try:
        limits = expiry.Limits(interval_seconds=args.interval_seconds, batch_max=args.batch_max)
    except ValueError as exc:
        # A bad limit stops the start with one line naming the option, not a traceback.
        field = str(exc).split(" ", 1)[0]
        option = _EXPIRY_OPTIONS.get(field, field)
        print(f"fintech-operator authorization-expiry: {option}: {exc}", file=sys.stderr)
        return 2
    return expiry.main(_settings(), limits)


# The expiry worker's limits (``expiry.Limits``' fields) as its options spell them.
_EXPIRY_OPTIONS = {"interval_seconds": "--interval-seconds", "batch_max": "--batch-max"}


def _cmd_migrate(_: argparse.Namespace) -> int:
    from fintech_operator import config  # noqa: PLC0415
    from fintech_operator.ledger import migrate  # noqa: PLC0415

    applied = migrate.apply_configured(config.load_migrate().database)
    print(f"migrations applied: {applied or 'none (up to date)'}")
    return 0


def _cmd_gateway(args: argparse.Namespace) -> int:
    if args.gateway_command == "sign":
        from fintech_operator.gateway import sign  # noqa: PLC0415

        return sign.run(args)
    from fintech_operator.gateway import server  # noqa: PLC0415

    return server.main(create_secret=args.create_secret_file, workers=args.workers)


def _cmd_crds(args: argparse.Namespace) -> int:
    import yaml  # noqa: PLC0415

    from fintech_operator.api import crdgen  # noqa: PLC0415

    if args.write:
        for path in crdgen.write_all(Path(args.write)):
            print(path)
        return 0
    print(yaml.safe_dump_all(crdgen.render_all(), sort_keys=False), end="")
    return 0


def _add_consumers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """The processes beside the operator: Kafka consumers and the authorization expiry worker."""
    rewards = sub.add_parser("rewards", help="run the rewards consumer")
    rewards.add_argument("--group", default="fintech-rewards", help="Kafka consumer group")
    rewards.set_defaults(func=_cmd_rewards)
    notifier = sub.add_parser("notifier", help="run the webhook notifier")
    notifier.add_argument("--group", default="fintech-notifier", help="Kafka consumer group")
    notifier.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="serve Webhooks of this namespace, or of namespaces matching this shell pattern "
        "(repeatable; default: all). Exact names need only namespaced read access to "
        "webhooks; patterns and the default list them cluster-wide.",
    )
    notifier.set_defaults(func=_cmd_notifier)
    expiry = sub.add_parser(
        "authorization-expiry",
        help="release the holds of real-time authorizations that reached their product's TTL",
    )
    expiry.add_argument(
        "--interval-seconds",
        type=float,
        default=1.0,
        help="pause between passes (default 1; 0.01 to 3600)",
    )
    expiry.add_argument(
        "--batch-max",
        type=int,
        default=500,
        help="authorizations per pass (default 500; 1 to 10000)",
    )
    expiry.set_defaults(func=_cmd_authorization_expiry)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fintech-operator", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the kopf operator")
    run.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="watch only this namespace (repeatable; default: all)",
    )
    run.add_argument(
        "--liveness-port",
        type=int,
        default=None,
        help="port of the liveness probe /healthz (0 = off); wins over FINTECH_HEALTH_PORT, "
        "whose default is 8080",
    )
    run.set_defaults(func=_cmd_run)
    _add_consumers(sub)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=_cmd_migrate)
    _add_gateway(sub)
    crds = sub.add_parser("crds", help="print the generated CRDs")
    crds.add_argument("--write", metavar="DIR", help="write one file per CRD into DIR")
    crds.set_defaults(func=_cmd_crds)
    # `recon report RUN`: its arguments live with the command, in fintech_operator/recon/report.py.
    from fintech_operator.recon import report as recon_report  # noqa: PLC0415

    recon_report.add_arguments(sub.add_parser("recon", help="reconciliation run reports"))
    # The development platform (`stack`, `dev`) is development tooling, not part of the product:
    # it ships in the source tree only (fintech_devstack/), never in the wheel or the image, and
    # adds its commands here when it is importable.
    # find_spec of a dotted name imports its parent, so the parent is looked up first: without
    # it (the wheel, the image) the dotted lookup would raise instead of answering None.
    if importlib.util.find_spec(DEVSTACK_MODULE.partition(".")[0]) is not None:
        importlib.import_module(DEVSTACK_MODULE).add_commands(sub)
    return parser


def _add_gateway(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gateway = sub.add_parser(
        "gateway", help="run the card processor's authorization gateway (docs/gateway.md)"
    )
    gateway.add_argument(
        "--create-secret-file",
        action="store_true",
        help="development only: write a fresh signing secret to "
        "FINTECH_GATEWAY_SIGNING_SECRET_FILE if it does not exist",
    )
    gateway.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="processes serving the port (1 to 32); default FINTECH_GATEWAY_WORKERS, else 1",
    )
    gateway.set_defaults(func=_cmd_gateway, gateway_command=None)
    commands = gateway.add_subparsers(dest="gateway_command")
    from fintech_operator.gateway import sign  # noqa: PLC0415 - small, no heavy imports

    sign.add_arguments(
        commands.add_parser("sign", help="print the signature headers for a request body")
    )


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from fintech_operator import config  # noqa: PLC0415 - after parsing: `--help` stays fast

    try:
        code: int = args.func(args)
    except config.SettingsError as exc:
        # A setting the process cannot start with: one line naming it, no traceback.
        print(f"fintech-operator {args.command}: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        # Kafka refusing the login or the certificate at start (aiokafka's errors are
        # RuntimeErrors) is the reason as one line too, the pod's last log line, not a
        # traceback around it (docs/operations.md); its status is 1, a crash loop.
        refused = _is_kafka_refusal(exc)
        if not (refused or _names_a_setting(exc)):
            raise
        print(f"fintech-operator {args.command}: {exc}", file=sys.stderr)
        return 1 if refused else 2
    return code


def _names_a_setting(exc: RuntimeError) -> bool:
    """Whether ``exc`` is a setting the process cannot start with, raised past config: an
    OTEL_* setting tracing cannot honour, or a FINTECH_METRICS_PORT that is taken. Both
    modules are looked up, not imported, so `--help` and the commands without them stay fast."""
    tracing = sys.modules.get("fintech_operator.observability.tracing")
    metrics = sys.modules.get("fintech_operator.observability.metrics")
    return (tracing is not None and isinstance(exc, tracing.TracingSetupError)) or (
        metrics is not None and isinstance(exc, metrics.MetricsServerError)
    )


def _is_kafka_refusal(exc: RuntimeError) -> bool:
    """Whether ``exc`` is Kafka refusing this process (login, certificate, credentials). The
    module is looked up, not imported, as in :func:`_names_a_setting`."""
    kafka = sys.modules.get("fintech_operator.events.kafka")
    return kafka is not None and isinstance(exc, kafka.KafkaAccessError)


if __name__ == "__main__":
    sys.exit(main())
