"""The card processor's side of the campaign: real-time authorizations through the gateway,
signed as the processor signs them, each followed by its captures (partial and final),
increments, voids, or nothing (left to expire); every attempt and its exact answer bytes a
line in the client's record.

A request cut by a fault (no answer, or a decline the gateway gave without the ledger:
``Overloaded`` or ``IssuerUnavailable`` not marked replayed) is sent again with the same id and
body until the ledger answers, as a processor that wants to know the outcome does; so the
record ends with one ledger answer for every request, and the model the checker replays is
complete. A deadline decline is the gateway's word, not the ledger's: an earlier attempt of the
same id may have committed an answer, which stands (migration 0056), and the retry gets it; if
nothing had committed, the retry gets the stored decline, replayed. Some requests are sent
again on purpose after their answer: the retry must get the same bytes, marked replayed.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from fintech_operator.notify import signing
from tests.faults import authcheck, workload

HTTP_TIMEOUT_SECONDS = 5.0
RETRY_INTERVAL_SECONDS = 2.0
# A request is retried this long; the longest fault (a paused gateway, a Kafka restart under
# load) is well under it. One still unanswered after it is reported stuck by the checker.
RETRY_FOR_SECONDS = 300.0
WORKERS_MAX = 24
STEP_DELAY_SECONDS = (0.2, 3.0)
REPLAY_PROBABILITY = 0.2
MERCHANT = {"name": "Fault Campaign Diner", "mcc": "5812", "country": "US"}
# Each story's weight: what the processor does after an approval.
STORIES = {
    "capture": 30,
    "partial-capture": 20,
    "increment": 15,
    "void": 15,
    "partial-void": 5,
    "expire": 15,
}


@dataclass
class Processor:
    """Sends signed requests to the gateway and records every attempt."""

    base_url: str
    secret_file: Path
    record: workload.Journal
    tokens: dict[str, str]  # card name -> token
    _key: bytes | None = None

    def key(self) -> bytes:
        if self._key is None:
            first = self.secret_file.read_text().split()[0]
            self._key = signing.parse_secret(first)
        return self._key

    def attempt(self, client: httpx.Client, path: str, content: bytes) -> httpx.Response | str:
        headers = signing.headers(self.key(), f"msg_{uuid.uuid4().hex}", int(time.time()), content)
        headers["content-type"] = "application/json"
        try:
            return client.post(self.base_url + path, content=content, headers=headers)
        except httpx.HTTPError as exc:
            return repr(exc)[:200]

    def send(self, client: httpx.Client, step: Step, *, replay: bool = False) -> dict[str, Any]:
        """Send until answered (or RETRY_FOR_SECONDS); the last attempt's record."""
        content = json.dumps(step.body, separators=(",", ":")).encode()
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            got = self.attempt(client, step.path, content)
            line: dict[str, Any] = {
                "kind": "auth",
                "op": step.kind,
                "req": step.body["id"],
                "auth": step.auth,
                "card": step.card,
                "body": step.body,
                "attempt": attempt,
                "replay": replay,
                "status": None,
                "answer": None,
                "replayed": False,
            }
            if isinstance(got, str):
                line["error"] = got
            else:
                line["status"] = got.status_code
                line["answer"] = got.content.decode("utf-8", "replace")
                line["replayed"] = got.headers.get("Idempotent-Replayed") == "true"
            line["retry"] = authcheck.retryable(line["status"], line["answer"], line["replayed"])
            self.record.write(**line)
            if not line["retry"] or time.monotonic() - started > RETRY_FOR_SECONDS:
                return line
            time.sleep(RETRY_INTERVAL_SECONDS)


@dataclass(frozen=True)
class Step:
    kind: str  # authorize | increment | capture | void
    auth: str
    card: str
    path: str
    body: dict[str, Any]


def _approved(line: dict[str, Any]) -> bool:
    if line["status"] != 200 or line["answer"] is None:
        return False
    return bool(json.loads(line["answer"]).get("approved"))


@dataclass
class Authorizations:
    """The open-loop authorization workload: one story started every 1/rate seconds."""

    processor: Processor
    rng: random.Random
    cards: list[str]
    stories: dict[str, str] = field(default_factory=dict)  # auth id -> story
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _count: int = 0
    _local: threading.local = field(default_factory=threading.local)
    _clients: list[httpx.Client] = field(default_factory=list)

    def run(
        self,
        duration_seconds: float,
        rate_per_second: float,
        stop: threading.Event,
        faults_over: threading.Event | None = None,
    ) -> int:
        """As :meth:`workload.Workload.run`; every story is over when this returns."""
        started, issued = time.monotonic(), 0
        try:
            with ThreadPoolExecutor(WORKERS_MAX) as pool:
                while not stop.is_set() and workload.running(
                    started, duration_seconds, faults_over
                ):
                    pool.submit(self._guarded, self._plan())
                    issued += 1
                    stop.wait(max(0.0, started + issued / rate_per_second - time.monotonic()))
        finally:
            with self._lock:
                for client in self._clients:
                    client.close()
                self._clients.clear()
        return issued

    def _plan(self) -> tuple[str, str, list[float], list[int], list[bool]]:
        """Everything random about one story, drawn under the lock so a seed replays it."""
        with self._lock:
            self._count += 1
            auth = f"a-{self._count:05d}"
            story = self.rng.choices(list(STORIES), list(STORIES.values()))[0]
            self.stories[auth] = story
            card = self.rng.choice(self.cards)
            amounts = [self.rng.randint(100, 20_000) for _ in range(3)]
            delays = [self.rng.uniform(*STEP_DELAY_SECONDS) for _ in range(4)]
            replays = [self.rng.random() < REPLAY_PROBABILITY for _ in range(4)]
        return (f"{auth}|{story}|{card}", story, delays, amounts, replays)

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(timeout=HTTP_TIMEOUT_SECONDS)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _guarded(self, plan: tuple[str, str, list[float], list[int], list[bool]]) -> None:
        try:
            self._story(*plan)
        except Exception as exc:  # the record shows it; the checker judges what is missing
            self.processor.record.write(kind="auth-error", plan=plan[0], error=repr(exc)[:300])

    def _story(
        self, who: str, story: str, delays: list[float], amounts: list[int], replays: list[bool]
    ) -> None:
        auth, _, card = who.split("|")
        steps = self._steps(auth, card, story, amounts)
        for index, make in enumerate(steps):
            step = make()
            line = self.processor.send(self._client(), step)
            if line["retry"]:
                return  # never answered: the checker reports it
            if index == 0 and not _approved(line):
                return  # a decline holds nothing: there is nothing to follow up
            if replays[index]:
                self.processor.send(self._client(), step, replay=True)
            time.sleep(delays[index])

    def _steps(
        self, auth: str, card: str, story: str, amounts: list[int]
    ) -> list[Callable[[], Step]]:
        token = self.processor.tokens[card]
        first, second, third = amounts
        base = f"/v1/authorizations/{auth}"

        def authorize() -> Step:
            body = {
                "id": auth,
                "card": token,
                "amount": first,
                "currency": "USD",
                "merchant": MERCHANT,
            }
            return Step("authorize", auth, card, "/v1/authorizations", body)

        def capture(suffix: str, amount: int, final: bool) -> Callable[[], Step]:
            body = {"id": f"{auth}-{suffix}", "amount": amount, "final": final}
            return lambda: Step("capture", auth, card, f"{base}/captures", body)

        def increment() -> Step:
            body = {"id": f"{auth}-inc", "amount": second}
            return Step("increment", auth, card, f"{base}/increments", body)

        def void() -> Step:
            return Step("void", auth, card, f"{base}/void", {"id": f"{auth}-void"})

        part = max(1, first * (second % 90 + 5) // 100)  # 5 to 94 % of the hold
        plans: dict[str, list[Callable[[], Step]]] = {
            "capture": [authorize, capture("cap", first, True)],
            "partial-capture": [
                authorize,
                capture("cap1", part, False),
                capture("cap2", max(1, (first - part) * (third % 100 + 1) // 100), True),
            ],
            "increment": [authorize, increment, capture("cap", first + second, True)],
            "void": [authorize, void],
            "partial-void": [authorize, capture("cap1", part, False), void],
            "expire": [authorize],
        }
        return plans[story]


def read_tokens(env: dict[str, str], namespace: str, cards: list[str]) -> dict[str, str]:
    tokens: dict[str, str] = {}
    for card in cards:
        out = workload.kubectl(
            env, "get", "card", "-n", namespace, card, "-o", "jsonpath={.status.token}"
        )
        if out.returncode != 0 or not out.stdout.strip():
            raise RuntimeError(f"card {card} has no token: {out.stderr}")
        tokens[card] = out.stdout.strip()
    return tokens


def outcomes(log: list[dict[str, Any]]) -> Counter[str]:
    """Each request's first kept answer, as "op reason" (or "op unanswered")."""
    first: dict[str, str] = {}
    for line in log:
        if line["replay"] or (line["req"] in first and not first[line["req"]].endswith("-")):
            continue
        if line["retry"]:
            first.setdefault(line["req"], f"{line['op']} -")
            continue
        body = json.loads(line["answer"]) if line["answer"] else {}
        reason = body.get("reason") or body.get("error") or str(line["status"])
        first[line["req"]] = f"{line['op']} {reason}"
    return Counter(v if not v.endswith("-") else v[:-1] + "unanswered" for v in first.values())
