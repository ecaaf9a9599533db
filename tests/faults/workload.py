"""The open-loop client: kubectl operations at a fixed rate, whatever the platform's state,
each recorded with what the client was told; and an observer of the postings' phases."""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GROUP = "fintech.dev/v1alpha1"
KUBECTL_TIMEOUT_SECONDS = 30
WORKERS_MAX = 6
UNFREEZE_ATTEMPTS_MAX = 40
# Card churn: a new card deleted 0 to 4 s after it is applied (while it is issued, or just
# after), under whatever fault is running; its ledger account must end closed, its token
# retired (the deletion's finalizer, the card queue, or the refresh's orphan sweep).
CHURN_PREFIX = "churn-"
CHURN_SHARE = 0.03
CHURN_DELETE_AFTER_SECONDS_MAX = 4.0
CHURN_DELETE_ATTEMPTS_MAX = 20
# Sign of each type on the card account (debit-normal: + is what the user owes).
SIGN = {"Purchase": 1, "Fee": 1, "Refund": -1, "Payment": -1}


def running(started: float, duration_seconds: float, faults_over: threading.Event | None) -> bool:
    if time.monotonic() - started < duration_seconds:
        return True
    return faults_over is not None and not faults_over.is_set()


def kubectl(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--request-timeout=20s", *args],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=KUBECTL_TIMEOUT_SECONDS,
        check=False,
    )


def posting_doc(namespace: str, name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": GROUP,
            "kind": "Posting",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
    )


@dataclass
class Journal:
    """The client's record: one JSON line per operation or observation, in a file."""

    path: Path
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, **record: Any) -> None:
        record["t"] = round(time.time(), 3)
        with self._lock, self.path.open("a") as sink:
            sink.write(json.dumps(record, sort_keys=True) + "\n")

    def read(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]


@dataclass
class Workload:
    env: dict[str, str]
    namespace: str
    cards: list[str]
    record: Journal
    rng: random.Random
    specs: dict[str, dict[str, Any]] = field(default_factory=dict)
    frozen: dict[str, bool] = field(default_factory=dict)
    reversed_: set[str] = field(default_factory=set)
    posted: dict[str, str] = field(default_factory=dict)  # name -> journalId, as observed
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0
    _churned: int = 0

    def run(
        self,
        duration_seconds: float,
        rate_per_second: float,
        stop: threading.Event,
        faults_over: threading.Event | None = None,
    ) -> int:
        """Start one operation every 1/rate seconds (open loop) until the duration is over
        and, when given, ``faults_over`` is set: no fault hits an idle system."""
        started, issued = time.monotonic(), 0
        with ThreadPoolExecutor(WORKERS_MAX) as pool:
            while not stop.is_set() and running(started, duration_seconds, faults_over):
                pool.submit(self._guarded, self._choose())
                issued += 1
                next_at = started + issued / rate_per_second
                stop.wait(max(0.0, next_at - time.monotonic()))
        return issued

    def _choose(self) -> tuple[str, tuple[Any, ...]]:
        with self._lock:
            if self.rng.random() < CHURN_SHARE:  # its own draw: the other ops keep their mix
                return ("churn", ())
            roll = self.rng.random()
            posted = sorted(n for n in self.posted if n not in self.reversed_)
            if roll < 0.08 and posted:
                return ("delete_reapply", (self.rng.choice(posted),))
            if roll < 0.14 and posted:
                target = self.rng.choice(posted)
                if self.specs[target].get("reverses") is None:
                    self.reversed_.add(target)
                    return ("reverse", (target,))
            if roll < 0.20:
                return ("freeze", (self.rng.choice(self.cards),))
            if roll < 0.24 and self.specs:
                return ("reapply", (self.rng.choice(sorted(self.specs)),))
            kind = self.rng.choices(["Purchase", "Refund", "Payment", "Fee"], [70, 10, 10, 10])[0]
            high = 20_000 if kind == "Purchase" else 2_000
            return ("post", (kind, self.rng.choice(self.cards), self.rng.randint(100, high)))

    def _guarded(self, choice: tuple[str, tuple[Any, ...]]) -> None:
        op, args = choice
        try:
            getattr(self, f"_{op}")(*args)
        except Exception as exc:  # a timeout is an answer too: none
            self.record.write(kind="op", op=op, args=list(args), rc=None, error=repr(exc)[:300])

    def _new_name(self) -> str:
        with self._lock:
            self._count += 1
            return f"p-{self._count:05d}"

    def _apply(self, op: str, name: str, spec: dict[str, Any]) -> None:
        with self._lock:
            self.specs[name] = spec
        out = kubectl(self.env, "apply", "-f", "-", stdin=posting_doc(self.namespace, name, spec))
        self.record.write(
            kind="op",
            op=op,
            posting=name,
            spec=spec,
            rc=out.returncode,
            error=out.stderr.strip()[-300:] or None,
        )

    def _post(self, kind: str, card: str, amount: int) -> None:
        spec = {"card": card, "type": kind, "amount": amount, "currency": "USD"}
        self._apply("post", self._new_name(), spec)

    def _reverse(self, target: str) -> None:
        original = self.specs[target]
        spec = {k: original[k] for k in ("card", "type", "amount", "currency")}
        self._apply("reverse", self._new_name(), {**spec, "reverses": target})

    def _reapply(self, name: str) -> None:
        self._apply("reapply", name, self.specs[name])

    def _delete_reapply(self, name: str) -> None:
        out = kubectl(self.env, "delete", "posting", "-n", self.namespace, name, "--timeout=25s")
        self.record.write(
            kind="op",
            op="delete",
            posting=name,
            rc=out.returncode,
            error=out.stderr.strip()[-300:] or None,
        )
        self._apply("reapply", name, self.specs[name])

    def _churn(self) -> None:
        """Apply a new card, then delete it a few seconds later, retrying the delete through
        outages: a card the client was told is deleted must leave nothing that can spend."""
        with self._lock:
            self._churned += 1
            name = f"{CHURN_PREFIX}{self._churned:04d}"
            wait_seconds = self.rng.uniform(0.0, CHURN_DELETE_AFTER_SECONDS_MAX)
        doc = {
            "apiVersion": GROUP,
            "kind": "Card",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "userId": f"u_{name}",
                "product": "standard",
                "holder": {"name": "Fault Campaign", "country": "US", "kycStatus": "Accepted"},
            },
        }
        out = kubectl(self.env, "apply", "-f", "-", stdin=json.dumps(doc))
        self._churn_record("card_create", name, out)
        time.sleep(wait_seconds)
        for _ in range(CHURN_DELETE_ATTEMPTS_MAX):
            out = kubectl(
                self.env, "delete", "card", "-n", self.namespace, name, "--ignore-not-found",
                "--wait=false",
            )  # fmt: skip
            self._churn_record("card_delete", name, out)
            if out.returncode == 0:
                return
            time.sleep(3.0)

    def _churn_record(self, op: str, name: str, out: subprocess.CompletedProcess[str]) -> None:
        self.record.write(
            kind="op", op=op, card=name, rc=out.returncode, error=out.stderr.strip()[-300:] or None
        )

    def _freeze(self, card: str) -> None:
        """Freeze a card for a few seconds, then unfreeze it: postings in between are refused."""
        with self._lock:
            if self.frozen.get(card):
                return
            self.frozen[card] = True
            frozen_seconds = self.rng.uniform(2.0, 6.0)
        try:
            self._card_state(card, "Frozen")
            time.sleep(frozen_seconds)
        finally:
            # The unfreeze must land, outage or not, or the card refuses everything after.
            for _ in range(UNFREEZE_ATTEMPTS_MAX):
                if self._card_state(card, "Active"):
                    break
                time.sleep(3.0)
            with self._lock:
                self.frozen[card] = False

    def _card_state(self, card: str, state: str) -> bool:
        patch = json.dumps({"spec": {"state": state}})
        out = kubectl(
            self.env, "patch", "card", "-n", self.namespace, card, "--type=merge", "-p", patch
        )
        self.record.write(
            kind="op",
            op="card_state",
            card=card,
            state=state,
            rc=out.returncode,
            error=out.stderr.strip()[-300:] or None,
        )
        return out.returncode == 0

    def observe(self) -> dict[str, tuple[str, str]]:
        """Each posting's (phase, journalId) now, recorded when it changed; {} if unreachable."""
        out = kubectl(
            self.env,
            "get",
            "postings",
            "-n",
            self.namespace,
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.status.phase} "
            '{.status.journalId}{"\\n"}{end}',
        )
        if out.returncode != 0:
            return {}
        seen: dict[str, tuple[str, str]] = {}
        for line in out.stdout.splitlines():
            name, phase, journal = ([*line.split(), "", ""])[:3]
            seen[name] = (phase, journal)
        return seen

    def observer(self, stop: threading.Event, interval_seconds: float) -> None:
        last: dict[str, tuple[str, str]] = {}
        while not stop.is_set():
            for name, state in self.observe().items():
                if last.get(name) != state:
                    last[name] = state
                    self.record.write(kind="seen", posting=name, phase=state[0], journal=state[1])
                    if state[0] == "Posted":
                        with self._lock:
                            self.posted[name] = state[1]
            stop.wait(interval_seconds)
