"""Run sources against the real API server and a loopback HTTP server, and a 100,000-record run.

ConfigMaps and Secrets live in the session's kube-apiserver; URLs are served by a small HTTP
server on 127.0.0.1 started here (an unreachable URL is an unused loopback port). A bad source
must fail the run with a clear reason and leave no exceptions behind.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import json
import resource
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fintech_operator import api
from fintech_operator import kube as kube_client
from fintech_operator.ledger import engine, model
from fintech_operator.recon import plans, sources, store
from tests.conftest import Kubectl, RunningPlatform

pytestmark = pytest.mark.integration

HEADER = "reference,amount,currency,occurredAt\n"
T0 = datetime.datetime(2024, 9, 1, tzinfo=datetime.UTC)
TOKEN = "s3cret-token"


class _Files(http.server.BaseHTTPRequestHandler):
    """Serves files from ``root``; paths under /private/ need the bearer token; /hop/N/FILE
    redirects N times before it serves FILE; /stuck/FILE answers 302 with no Location;
    /garbled/FILE claims a gzip body that is not one."""

    root: Path

    def do_GET(self) -> None:
        if self.path.startswith("/hop/"):
            _, _, hops, name = self.path.split("/", 3)
            if int(hops) > 0:
                self.send_response(302)
                self.send_header("Location", f"/hop/{int(hops) - 1}/{name}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
        if self.path.startswith("/garbled/"):
            self.send_response(200)
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", "12")
            self.end_headers()
            self.wfile.write(b"not gzip at all"[:12])
            return
        if self.path.startswith("/stuck/"):
            self.send_response(302)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/private/") and (
            self.headers.get("Authorization") != f"Bearer {TOKEN}"
        ):
            self.send_error(401)
            return
        path = self.root / self.path.rsplit("/", 1)[-1]
        if not path.is_file():
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/csv; charset=utf-8")
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        with path.open("rb") as body:
            while chunk := body.read(1 << 16):
                self.wfile.write(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the tests say what matters."""


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server and the folder it serves: (base URL, folder)."""
    root = tmp_path_factory.mktemp("served")
    handler = type("Files", (_Files,), {"root": root})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


@pytest.fixture
def kube(platform_running: RunningPlatform, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Point the source readers at the session's API server."""
    monkeypatch.setenv("KUBECONFIG", str(platform_running.kubeconfig))
    kube_client.api_client.cache_clear()
    yield
    kube_client.api_client.cache_clear()


def unused_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def execute(dsn: str, namespace: str, spec: dict[str, Any]) -> store.RunState:
    run_spec = api.ReconciliationRunSpec.model_validate(
        {
            "checks": ["Settlement"],
            "window": {"start": "2024-09-01T00:00:00Z", "end": "2024-09-02T00:00:00Z"},
            **spec,
        }
    )
    return store.execute(
        dsn,
        store.RunKey(str(uuid.uuid4()), namespace, f"run-{uuid.uuid4().hex[:6]}"),
        plans.plan_of(run_spec),
        sources.opener(run_spec, namespace, sources.Limits()),
    )


def exception_count(dsn: str, run_id: int) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM recon_exceptions WHERE run_id = %s", (run_id,)
        ).fetchone()
    return int(row[0]) if row else -1


@pytest.mark.usefixtures("kube")
def test_bad_sources_fail_with_a_clear_reason(
    migrated_database_url: str, kubectl: Kubectl, namespace: str, files: tuple[str, Path]
) -> None:
    """Missing ConfigMap, missing key, a malformed row, an unreachable URL, a 404, and missing
    credentials each fail the run with their reason and a message naming what to fix."""
    good = HEADER + "R-1,100,USD,2024-09-01T10:00:00Z\n"
    bad_row = good + "R-2,12.50,USD,2024-09-01T10:00:00Z\n"
    kubectl(
        "create",
        "configmap",
        "settlement",
        "-n",
        namespace,
        f"--from-literal=good.csv={good}",
        f"--from-literal=bad.csv={bad_row}",
    )
    base, _root = files
    port = unused_loopback_port()
    cases = [
        (
            {"configMapKeyRef": {"name": "nowhere", "key": "x.csv"}},
            "SourceNotFound",
            f"ConfigMap {namespace}/nowhere does not exist",
        ),
        (
            {"configMapKeyRef": {"name": "settlement", "key": "x.csv"}},
            "SourceNotFound",
            "has no key x.csv (keys: bad.csv, good.csv)",
        ),
        (
            {"configMapKeyRef": {"name": "settlement", "key": "bad.csv"}},
            "SourceMalformed",
            "line 3: amount must be an integer of minor units (1250 = 12.50), got '12.50'",
        ),
        (
            {"http": {"url": f"http://127.0.0.1:{port}/s.csv", "attempts": 1, "timeoutSeconds": 5}},
            "SourceUnreachable",
            f"cannot reach http://127.0.0.1:{port}/s.csv",
        ),
        (
            {"http": {"url": f"{base}/missing.csv", "attempts": 1}},
            "SourceUnreachable",
            "answered 404",
        ),
        (
            {"http": {"url": f"{base}/x.csv", "credentialsSecretRef": {"name": "none"}}},
            "CredentialsNotFound",
            f"Secret {namespace}/none does not exist",
        ),
    ]
    for source, reason, fragment in cases:
        outcome = execute(migrated_database_url, namespace, {"source": source})
        assert (outcome.state, outcome.reason) == ("failed", reason), (source, outcome)
        assert outcome.message is not None
        assert fragment in outcome.message, outcome.message
        assert outcome.completed_at is not None
        assert exception_count(migrated_database_url, outcome.run_id) == 0


@pytest.mark.usefixtures("kube")
def test_redirects_are_followed_up_to_five_and_more_fail_at_once(
    migrated_database_url: str, namespace: str, files: tuple[str, Path]
) -> None:
    """docs/reconciliation.md: an http source's redirects are followed, up to 5. A sixth (a
    redirect loop, say) fails the run at once as SourceUnreachable, without the retries a
    connection failure gets (a loop stays a loop), and so do a redirect with no Location, a
    body whose Content-Encoding does not decode and a URL the schema's pattern lets through but
    httpx cannot parse: none becomes a handler error that kopf retries every minute with the
    run left Running."""
    base, root = files
    (root / "hops.csv").write_text(HEADER + "R-1,100,USD,2024-09-01T10:00:00Z\n")
    followed = execute(
        migrated_database_url, namespace, {"source": {"http": {"url": f"{base}/hop/5/hops.csv"}}}
    )
    assert followed.state == "succeeded", followed
    assert followed.summary is not None
    assert followed.summary["recordsRead"] == 1, followed
    for url, fragment in [
        (f"{base}/hop/6/hops.csv", "redirected more than 5 times"),
        (f"{base}/stuck/hops.csv", "answered 302 Found with no Location to follow"),
        (f"{base}/garbled/hops.csv", "failed part way: DecodingError"),
        ("http://127.0.0.1:port/hops.csv", "not a URL that can be fetched: Invalid port"),
    ]:
        started = time.monotonic()
        outcome = execute(
            migrated_database_url, namespace, {"source": {"http": {"url": url, "attempts": 3}}}
        )
        assert (outcome.state, outcome.reason) == ("failed", "SourceUnreachable"), outcome
        assert outcome.message is not None
        assert fragment in outcome.message, outcome.message
        assert url in outcome.message, outcome.message
        # Retried, the three attempts would wait 1 s and 2 s between them: 3 s at least.
        assert time.monotonic() - started < 2.5, "tried once: no backoff ran"


@pytest.mark.usefixtures("kube")
def test_configmap_secret_and_private_url_sources_are_read(
    migrated_database_url: str, kubectl: Kubectl, namespace: str, files: tuple[str, Path]
) -> None:
    """The same one-record file is read from a ConfigMap, a Secret, and a URL that needs a
    bearer token from a Secret; JSON Lines is read like CSV."""
    text = HEADER + "R-SRC,100,USD,2024-09-01T10:00:00Z\n"
    line = json.dumps(
        {
            "reference": "R-SRC",
            "amount": 100,
            "currency": "USD",
            "occurredAt": "2024-09-01T10:00:00Z",
        }
    )
    base, root = files
    (root / "private.csv").write_text(text)
    kubectl(
        "create",
        "configmap",
        "file",
        "-n",
        namespace,
        f"--from-literal=s.csv={text}",
        f"--from-literal=s.jsonl={line}\n",
    )
    kubectl("create", "secret", "generic", "file", "-n", namespace, f"--from-literal=s.csv={text}")
    kubectl(
        "create", "secret", "generic", "creds", "-n", namespace, f"--from-literal=token={TOKEN}"
    )
    cases: list[dict[str, Any]] = [
        {"source": {"configMapKeyRef": {"name": "file", "key": "s.csv"}}},
        {"source": {"configMapKeyRef": {"name": "file", "key": "s.jsonl"}}, "format": "json"},
        {"source": {"secretKeyRef": {"name": "file", "key": "s.csv"}}},
        {
            "source": {
                "http": {
                    "url": f"{base}/private/private.csv",
                    "credentialsSecretRef": {"name": "creds"},
                }
            }
        },
    ]
    for spec in cases:
        outcome = execute(migrated_database_url, namespace, spec)
        assert outcome.state == "succeeded", (spec, outcome)
        assert outcome.summary is not None
        assert (outcome.summary["recordsRead"], outcome.summary["missingInLedger"]) == (1, 1)
    denied = execute(
        migrated_database_url,
        namespace,
        {"source": {"http": {"url": f"{base}/private/private.csv", "attempts": 1}}},
    )
    assert (denied.state, denied.reason) == ("failed", "SourceUnreachable")
    assert "401" in (denied.message or "")
    assert base64.b64encode(TOKEN.encode()).decode() not in (denied.message or "")


# --- 100,000 records ----------------------------------------------------------------------------

SCALE = 100_000
_BULK = """
WITH j AS (
    INSERT INTO journals (idempotency_key, request_hash, kind, reference, occurred_at, namespace)
    SELECT 'bulk-' || g, repeat('0', 64), 'Purchase', 'B-' || g,
           %(t0)s::timestamptz + g * interval '100 ms', 'scale'
      FROM generate_series(%(low)s::bigint, %(high)s::bigint) AS g
    RETURNING id, reference
)
INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)
SELECT j.id, x.account_id, x.direction, 1000 + substr(j.reference, 3)::bigint %% 997, 'USD'
  FROM j CROSS JOIN (VALUES (%(card)s::bigint, 'debit'), (%(settlement)s::bigint, 'credit'))
       AS x(account_id, direction)
"""


async def bulk_ledger(dsn: str, count: int) -> None:
    """``count`` balanced purchases B-1..B-count through the ledger's own tables and triggers,
    1,000 journals per transaction (one engine.post per journal would take many minutes)."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        card = await engine.open_card_account(conn, "scale", "bulk", "USD")
        await engine.ensure_system_accounts(conn, "USD")
        settlement = await engine.account(
            conn, model.system_account_code(model.SystemAccount.NETWORK_SETTLEMENT, "USD")
        )
        for low in range(1, count + 1, 1000):
            async with conn.transaction():
                await conn.execute(
                    _BULK,
                    {
                        "t0": T0,
                        "low": low,
                        "high": min(low + 999, count),
                        "card": card.id,
                        "settlement": settlement.id,
                    },
                )


def write_settlement(path: Path, count: int) -> None:
    """Every journal's record, except B-7 (missing in source), B-9 off by 50, plus X-1."""
    with path.open("w") as out:
        out.write(HEADER)
        for n in range(1, count + 1):
            if n == 7:
                continue
            amount = 1000 + n % 997 + (50 if n == 9 else 0)
            moment = T0 + datetime.timedelta(milliseconds=100 * n)
            out.write(f"B-{n},{amount},USD,{moment.isoformat().replace('+00:00', 'Z')}\n")
        out.write("X-1,5,USD,2024-09-01T12:00:00Z\n")


async def test_a_100k_record_run_completes(
    migrated_database_url: str, files: tuple[str, Path]
) -> None:
    """100,000 records streamed from a URL are matched against 100,000 postings; the three
    planted discrepancies are found and everything else matches. Prints time and memory."""
    await bulk_ledger(migrated_database_url, SCALE)
    base, root = files
    write_settlement(root / "scale.csv", SCALE)
    spec = {"source": {"http": {"url": f"{base}/scale.csv"}}, "window": None}
    rss_before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    outcome = execute(migrated_database_url, "scale", spec)
    seconds = time.monotonic() - started
    rss_after_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        f"\n100,000-record run: {seconds:.1f}s; process peak RSS {rss_after_kib / 1024:.0f} MiB "
        f"(was {rss_before_kib / 1024:.0f} MiB before the run)"
    )
    assert outcome.state == "succeeded", outcome
    summary = outcome.summary
    assert summary is not None
    assert summary["recordsRead"] == SCALE
    assert summary["matched"] == SCALE - 2
    assert (summary["missingInSource"], summary["missingInLedger"]) == (1, 1)
    assert summary["amountMismatches"] == 1
    assert summary["exceptions"] == 3
