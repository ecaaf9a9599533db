"""One campaign: a throwaway real platform with fsync on, the product's processes as
``make dev`` runs them, the open-loop workload, seeded faults, then the checker."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from fintech_devstack import build, platform
from tests.faults import authz, checker, processes, receiver, workload

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "faults"
CARDS = 4
LONG_TTL_SECONDS = 86_400
SETUP_TIMEOUT_SECONDS = 240
VIOLATIONS_FILE = "violations.jsonl"
# Every kind of fault; CHEAP ones recover in seconds, the others restart a platform part.
PRODUCT_KINDS = tuple(f"{verb}-{name}" for verb in ("kill", "pause") for name in processes.NAMES)
CHEAP = (*PRODUCT_KINDS, "webhook-500", "webhook-429")
ALL_KINDS = (*CHEAP, "postgres-immediate", "kafka-kill", "apiserver-kill", "etcd-kill")


@dataclass(frozen=True)
class Config:
    seed: int
    duration_seconds: float = 90.0
    faults: int = 12
    kinds: tuple[str, ...] = ALL_KINDS
    rate_per_second: float = 2.0
    pause_seconds: float = 15.0
    outage_seconds: float = 10.0
    quiesce_seconds: float = 240.0
    auth_rate_per_second: float = 2.0
    # The short-lived product's authorizationTtlSeconds: its holds expire during the run.
    auth_ttl_seconds: int = 20
    out_dir: Path = field(default_factory=lambda: Path(tempfile.gettempdir()))


@dataclass
class Fault:
    at_seconds: float
    kind: str
    started: float = 0.0
    recovery_seconds: float | None = None
    error: str | None = None


def schedule(config: Config) -> list[Fault]:
    """The fault plan, a pure function of the seed: every listed kind at least once when there
    are enough faults, then random kinds, at random times in the workload's window."""
    rng = random.Random(f"faults-{config.seed}")  # noqa: S311 - reproducible, not secret
    # A kind listed several times (``--kinds kind:weight``) is drawn that much more often.
    kinds = list(dict.fromkeys(config.kinds))[: config.faults]
    kinds += [rng.choice(config.kinds) for _ in range(config.faults - len(kinds))]
    rng.shuffle(kinds)
    window = config.duration_seconds * 0.9
    times = sorted(rng.uniform(5.0, window) for _ in kinds)
    return [Fault(round(t, 2), k) for t, k in zip(times, kinds, strict=True)]


def _inject(injector: processes.Injector, fault: Fault) -> float:
    verb, _, target = fault.kind.partition("-")
    if verb in ("kill", "pause") and target in processes.NAMES:
        return injector.kill(target) if verb == "kill" else injector.pause(target)
    actions = {
        "webhook-500": lambda: injector.receiver_outage(500),
        "webhook-429": lambda: injector.receiver_outage(429),
        "postgres-immediate": injector.postgres_immediate,
        "kafka-kill": injector.kafka,
        "apiserver-kill": injector.apiserver,
        "etcd-kill": injector.etcd,
    }
    return float(actions[fault.kind]())


@dataclass
class Campaign:
    config: Config
    plat: platform.Platform
    binaries: build.Binaries
    env: dict[str, str]
    record: workload.Journal
    hook: receiver.Receiver
    product: processes.Product
    load: workload.Workload
    auths: authz.Authorizations
    faults: list[Fault] = field(default_factory=list)
    issued: int = 0
    auth_issued: int = 0
    # Set when the last fault has recovered: the workload runs until then, however late.
    faults_over: threading.Event = field(default_factory=threading.Event)
    quiesce_seconds: float = 0.0

    def say(self, message: str) -> None:
        print(f"[faults] {message}", file=sys.stderr, flush=True)

    def run_faults(self, started: float, stop: threading.Event) -> None:
        try:
            self._faults(started, stop)
        finally:
            self.faults_over.set()

    def _faults(self, started: float, stop: threading.Event) -> None:
        injector = processes.Injector(
            self.plat,
            self.binaries,
            self.product,
            self.hook,
            self.config.pause_seconds,
            self.config.outage_seconds,
        )
        for fault in self.faults:
            stop.wait(max(0.0, started + fault.at_seconds - time.monotonic()))
            if stop.is_set():
                return
            fault.started = time.monotonic() - started
            try:
                fault.recovery_seconds = _inject(injector, fault)
            except Exception as exc:  # reported, and the campaign fails on it
                fault.error = repr(exc)[:300]
            self.record.write(
                kind="fault",
                fault=fault.kind,
                at=fault.started,
                recovery=fault.recovery_seconds,
                error=fault.error,
            )
            self.say(
                f"t={fault.started:6.1f}s {fault.kind}: back in "
                f"{fault.recovery_seconds or 0:.1f}s{' ' + fault.error if fault.error else ''}"
            )

    def run(self) -> None:
        self.faults = schedule(self.config)
        stop = threading.Event()
        started = time.monotonic()
        threads = [
            threading.Thread(target=self.load.observer, args=(stop, 2.0), daemon=True),
            threading.Thread(target=self.run_faults, args=(started, stop), daemon=True),
            threading.Thread(target=self._run_auths, args=(stop,), daemon=True),
        ]
        for thread in threads:
            thread.start()
        self.issued = self.load.run(
            self.config.duration_seconds, self.config.rate_per_second, stop, self.faults_over
        )
        threads[2].join()  # every authorization story is over: each request has its answer
        threads[1].join()  # the last fault finishes its recovery before we quiesce
        stop.set()
        threads[0].join()

    def _run_auths(self, stop: threading.Event) -> None:
        rate = self.config.auth_rate_per_second
        self.auth_issued = self.auths.run(
            self.config.duration_seconds, rate, stop, self.faults_over
        )

    def evidence(self) -> checker.Evidence:
        seen = [r for r in self.record.read() if r["kind"] == "seen"]
        final = self.load.observe()
        ev = checker.Evidence(NAMESPACE, dict(self.load.specs), final, seen)
        checker.read_database(ev, self.plat.database_url)
        checker.read_kafka(ev, self.plat.kafka_bootstrap_servers)
        ev.received = self.hook.snapshot()
        ev.auth.log = [r for r in self.record.read() if r["kind"] == "auth"]
        cards = listed_cards(self.env)
        ev.auth.card_status, ev.card_status_balances = _card_figures(cards)
        ev.card_states = card_states(self.plat.database_url, cards)
        churned = sorted(
            {str(r["card"]) for r in self.record.read() if r.get("op") == "card_create"}
        )
        ev.churned = churned_cards(self.plat.database_url, cards, churned)
        ev.processes = {
            **self.product.alive(),
            "operator /healthz": self.product.healthy("operator"),
            "gateway /healthz": self.product.healthy("gateway"),
        }
        return ev

    @property
    def violations_path(self) -> Path:
        """Every violation of the final check, one JSON object a line, beside the record."""
        return self.record.path.parent / VIOLATIONS_FILE

    def quiesce_and_check(self) -> tuple[checker.Evidence, list[checker.Violation]]:
        """Check until clean or until the bounded wait is over; then what is left is stuck."""
        started = time.monotonic()
        while True:
            try:
                ev = self.evidence()
                violations = checker.check(ev)
            except Exception as exc:  # the platform is still recovering: try again
                ev, violations = None, [checker.Violation("stuck", f"checker: {exc!r}"[:300])]
            elapsed = time.monotonic() - started
            if ev is not None and (not violations or elapsed > self.config.quiesce_seconds):
                self.quiesce_seconds = elapsed
                write_violations(self.violations_path, violations)
                return ev, violations
            if elapsed > self.config.quiesce_seconds + 60:
                raise RuntimeError(f"the checker could not read the platform: {violations}")
            time.sleep(5)


def _secret(seed: int) -> str:
    key = random.Random(f"secret-{seed}").randbytes(32)  # noqa: S311 - a test secret
    return "whsec_" + base64.b64encode(key).decode()


def _setup_docs(url: str, secret: str, auth_ttl_seconds: int) -> list[dict[str, Any]]:
    meta = {"namespace": NAMESPACE}
    docs: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {**meta, "name": "hook"},
            "stringData": {"secret": secret},
        },
        {
            "apiVersion": workload.GROUP,
            "kind": "Webhook",
            "metadata": {**meta, "name": "hook"},
            "spec": {
                "url": url,
                "eventTypes": ["*"],
                "secretRef": {"name": "hook", "key": "secret"},
                "timeoutSeconds": 5,
                "retry": {"maxAttempts": 20, "initialDelaySeconds": 1, "maxDelaySeconds": 5},
                "rateLimit": {"requestsPerSecond": 100, "burst": 200},
                "circuitBreaker": {"failureThreshold": 5, "openSeconds": 3},
            },
        },
        *(
            {
                "apiVersion": workload.GROUP,
                "kind": "CardProduct",
                "metadata": {**meta, "name": name},
                "spec": {
                    "currency": "USD",
                    "rewardsRateBps": checker.RATE_BPS,
                    "spendLimit": {"amount": checker.LIMIT_MINOR, "interval": "Lifetime"},
                    "authorizationTtlSeconds": ttl_seconds,
                },
            }
            for name, ttl_seconds in (("standard", auth_ttl_seconds), ("long", LONG_TTL_SECONDS))
        ),
    ]
    return docs


def _card_docs(count: int) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": workload.GROUP,
            "kind": "Card",
            "metadata": {"namespace": NAMESPACE, "name": f"c-{i}"},
            "spec": {
                "userId": f"u_faults_{i}",
                # Half the cards' holds expire during the run, the others' stay open to the end.
                "product": "standard" if i % 2 == 0 else "long",
                "holder": {"name": "Fault Campaign", "country": "US", "kycStatus": "Accepted"},
            },
        }
        for i in range(count)
    ]


def _apply_and_wait(env: dict[str, str], docs: list[dict[str, Any]], kind: str, phase: str) -> None:
    items = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    applied = workload.kubectl(env, "apply", "-f", "-", stdin=items)
    if applied.returncode != 0:
        raise RuntimeError(f"setup apply failed: {applied.stderr}")
    waited = subprocess.run(
        [
            "kubectl",
            "wait",
            "-n",
            NAMESPACE,
            f"--for=jsonpath={{.status.phase}}={phase}",
            kind,
            "--all",
            f"--timeout={SETUP_TIMEOUT_SECONDS}s",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT_SECONDS + 30,
        check=False,
    )
    if waited.returncode != 0:
        raise RuntimeError(f"setup: {kind} not {phase}: {waited.stderr}")


def _prepare(plat: platform.Platform, binaries: build.Binaries) -> dict[str, str]:
    env = {
        **os.environ,
        **plat.env(binaries),
        "PYTHONUNBUFFERED": "1",
        "FINTECH_WEBHOOK_ALLOWED_CIDRS": "127.0.0.0/8,::1/128",
        "FINTECH_TOKENIZER": "development",
        "FINTECH_GATEWAY_SIGNING_SECRET_FILE": str(plat.state_dir / "gateway-signing.secret"),
        # Accounts of churned cards deleted while nothing could close them are swept well
        # within the quiesce time.
        "FINTECH_CARD_ORPHAN_SWEEP_INTERVAL_SECONDS": "10",
    }
    env.pop("FINTECH_TOKENIZER_URL", None)
    subprocess.run(
        [sys.executable, "-m", "fintech_operator", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    for args in (
        ["apply", "--server-side", "-f", str(REPO / "crds")],
        ["wait", "--for=condition=Established", "crd", "--all", "--timeout=120s"],
        ["create", "namespace", NAMESPACE],
    ):
        subprocess.run(["kubectl", *args], env=env, check=True, capture_output=True, timeout=180)
    return env


def _authorizations(
    env: dict[str, str],
    plat: platform.Platform,
    product: processes.Product,
    record: workload.Journal,
    cards: list[str],
    seed: int,
) -> authz.Authorizations:
    """The processor's client: the cards' tokens and the gateway's signing secret."""
    secret_file = plat.state_dir / "gateway-signing.secret"
    processes.wait_until(lambda: product.healthy("gateway") and secret_file.exists(), 120)
    port = product.children["gateway"].env["FINTECH_GATEWAY_PORT"]
    tokens = authz.read_tokens(env, NAMESPACE, cards)
    client = authz.Processor(f"http://127.0.0.1:{port}", secret_file, record, tokens)
    rng = random.Random(f"authorizations-{seed}")  # noqa: S311 - reproducible, not secret
    return authz.Authorizations(client, rng, cards)


def _amount(money: Any) -> int | None:
    return int(money["amount"]) if isinstance(money, dict) else None


def listed_cards(env: dict[str, str]) -> list[dict[str, Any]]:
    """The namespace's Cards as the API server has them now (one list for every judgment)."""
    out = workload.kubectl(env, "get", "cards", "-n", NAMESPACE, "-o", "json")
    if out.returncode != 0:
        raise RuntimeError(f"kubectl get cards: {out.stderr.strip()[-300:]}")
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


def _card_figures(
    cards: list[dict[str, Any]],
) -> tuple[dict[str, tuple[int | None, int | None]], dict[str, int | None]]:
    """Each card's status held and available, and its status balance, as kubectl shows them."""
    figures, balances = {}, {}
    for item in cards:
        status = item.get("status", {})
        name = item["metadata"]["name"]
        figures[name] = (_amount(status.get("held")), _amount(status.get("available")))
        balances[name] = _amount(status.get("balance"))
    return figures, balances


def card_states(
    database_url: str, cards: list[dict[str, Any]]
) -> dict[str, tuple[str, str | None, bool]]:
    """Each card's ``spec.state``, ``status.phase`` and whether its ledger account is frozen."""
    shown = {
        item["metadata"]["name"]: (
            str(item.get("spec", {}).get("state", "Active")),
            item.get("status", {}).get("phase"),
        )
        for item in cards
        if not item["metadata"]["name"].startswith(workload.CHURN_PREFIX)  # judged on their own
    }
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT split_part(split_part(code, '/', 2), ':', 1), frozen_at IS NOT NULL"
            " FROM accounts WHERE kind = 'card' AND code LIKE %s",
            (f"card:{NAMESPACE}/%",),
        ).fetchall()
    frozen = {str(name): bool(is_frozen) for name, is_frozen in rows}
    return {
        name: (spec, phase, frozen.get(name, False))
        for name, (spec, phase) in sorted(shown.items())
    }


def churned_cards(
    database_url: str, cards: list[dict[str, Any]], names: list[str]
) -> dict[str, tuple[str, str | None, bool | None]]:
    """Each churned card: on the API now (present, deleting, gone), its account's status and
    whether its token is retired (None: it has none)."""
    on_api = {
        item["metadata"]["name"]: (
            "deleting" if item["metadata"].get("deletionTimestamp") else "present"
        )
        for item in cards
    }
    with psycopg.connect(database_url, connect_timeout=10) as conn:
        rows = conn.execute(
            "SELECT split_part(a.metadata->>'card', '/', 2), a.status,"
            " CASE WHEN c.account_id IS NULL THEN NULL ELSE c.retired_at IS NOT NULL END"
            " FROM accounts a LEFT JOIN authorization_cards c ON c.account_id = a.id"
            " WHERE a.kind = 'card' AND a.metadata->>'card' = ANY(%s)",
            ([f"{NAMESPACE}/{name}" for name in names],),
        ).fetchall()
    ledger = {str(name): (str(status), retired) for name, status, retired in rows}
    return {name: (on_api.get(name, "gone"), *ledger.get(name, (None, None))) for name in names}


@contextlib.contextmanager
def started(config: Config) -> Iterator[Campaign]:
    """A ready campaign on its own platform: processes up, webhook Active, cards Active."""
    with platform.throwaway("faults-", fast_disk=False) as plat:
        binaries = build.ensure_all()
        env = _prepare(plat, binaries)
        out = config.out_dir / f"faults-{config.seed}-{int(time.time())}"
        out.mkdir(parents=True, exist_ok=True)
        secret = _secret(config.seed)
        from fintech_operator.notify import signing  # noqa: PLC0415

        hook = receiver.Receiver(signing.parse_secret(secret))
        hook.start()
        product = processes.Product(env, out)
        product.start()
        record = workload.Journal(out / "client.jsonl")
        cards = [f"c-{i}" for i in range(CARDS)]
        rng = random.Random(config.seed)  # noqa: S311 - reproducible, not secret
        load = workload.Workload(env, NAMESPACE, cards, record, rng)
        try:
            docs = _setup_docs(hook.url, secret, config.auth_ttl_seconds)
            _apply_and_wait(env, docs, "webhook", "Active")
            _apply_and_wait(env, _card_docs(CARDS), "card", "Active")
            auths = _authorizations(env, plat, product, record, cards, config.seed)
            yield Campaign(config, plat, binaries, env, record, hook, product, load, auths)
        finally:
            product.stop()
            hook.stop()


def write_violations(path: Path, violations: list[checker.Violation]) -> None:
    """All of them (the report shows only the first of each kind), so a run can be studied
    after its platform is gone; an empty file says the check was clean."""
    with path.open("w") as out:
        for violation in violations:
            out.write(json.dumps({"kind": violation.kind, "what": violation.what}) + "\n")


def report(campaign: Campaign, violations: list[checker.Violation], ev: checker.Evidence) -> str:
    """The summary table: faults by kind, operations by outcome, and the verdicts."""
    lines = [
        f"seed {campaign.config.seed}, duration {campaign.config.duration_seconds:g} s, "
        f"client record {campaign.record.path}",
        "",
        "fault kind            count  recovery s (mean / max)  errors",
    ]
    by_kind: dict[str, list[Fault]] = {}
    for fault in campaign.faults:
        by_kind.setdefault(fault.kind, []).append(fault)
    for kind, items in sorted(by_kind.items()):
        rec = [f.recovery_seconds for f in items if f.recovery_seconds is not None]
        mean_max = f"{statistics.mean(rec):6.1f} / {max(rec):6.1f}" if rec else "     - /      -"
        errors = sum(1 for f in items if f.error)
        lines.append(f"{kind:20} {len(items):6}  {mean_max:23}  {errors}")
    lines.append(f"{'total':20} {len(campaign.faults):6}")
    ops = Counter(
        f"{r['op']} {'ok' if r.get('rc') == 0 else 'no answer/error'}"
        for r in campaign.record.read()
        if r["kind"] == "op"
    )
    phases = Counter(phase or "none" for phase, _ in ev.final.values())
    answers = authz.outcomes(ev.auth.log)
    lines += [
        "",
        f"operations issued {campaign.issued}: {dict(sorted(ops.items()))}",
        f"postings by final phase: {dict(sorted(phases.items()))}",
        f"authorization stories {campaign.auth_issued}, requests by answer: "
        f"{dict(sorted(answers.items()))}",
        f"authorization attempts {len(ev.auth.log)} (cut by a fault and sent again: "
        f"{sum(1 for x in ev.auth.log if x['retry'])}), holds {len(ev.auth.rows)}, "
        f"capture journals {len(ev.auth.capture_journals)}",
        f"journals {len(ev.journals)}, outbox events {len(ev.outbox)}, "
        f"webhook deliveries {len(ev.received)}, rewards rows {len(ev.rewards)}",
        f"quiesced in {campaign.quiesce_seconds:.1f} s",
        "churned cards, on the API / ledger account: "
        + str(
            dict(sorted(Counter(f"{api}/{acct}" for api, acct, _ in ev.churned.values()).items()))
        ),
        "card states, spec / status / ledger: "
        + ", ".join(
            f"{name} {spec}/{phase}/{'frozen' if frozen else 'open'}"
            for name, (spec, phase, frozen) in ev.card_states.items()
        ),
        "",
    ]
    verdict = Counter(v.kind for v in violations)
    lines.append(" / ".join(f"{k} {verdict[k]}" for k in ("lost", "doubled", "stuck", "wrong")))
    lines.append(f"every violation: {campaign.violations_path}")
    # The first 20, then the first 5 of each other kind, so that a flood of one kind (thousands
    # of stuck postings) does not hide the rest.
    shown = violations[:20]
    for kind in ("lost", "doubled", "wrong", "stuck"):
        shown += [v for v in violations[20:] if v.kind == kind][: 5 if kind not in
                  {x.kind for x in shown} else 0]  # fmt: skip
    lines += [f"VIOLATION {v.kind}: {v.what}" for v in shown]
    return "\n".join(lines)
