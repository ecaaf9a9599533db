"""What a real-time decision needs, mirrored into PostgreSQL by the operator (issue 13).

The gateway never reads the Kubernetes API in a request: a card's token, account, product and
spend limit, its product's terms, and its namespace's purchase risk rules are written here by
the operator's handlers when they change (and again on every operator start), and the
``authorization_*`` functions of migration 0050 read them in the request's one statement.

A card's state is not mirrored: a freeze sets ``accounts.frozen_at`` and a close the account's
status (the ledger's own columns, written with the events that announce them), and the
functions read those. Each write here is one idempotent upsert.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import psycopg

from fintech_operator import api
from fintech_operator.api import riskpolicy

_PRODUCT: Final = """
INSERT INTO authorization_products AS p
    (product, currency, spend_limit_minor, spend_interval, rewards_rate_bps, earn_on,
     over_capture_bps, authorization_ttl_seconds, force_post)
VALUES (%(product)s, %(currency)s, %(limit)s, %(interval)s, %(rate)s, %(earn_on)s,
        %(over)s, %(ttl)s, %(force)s)
ON CONFLICT (product) DO UPDATE
   SET currency = excluded.currency, spend_limit_minor = excluded.spend_limit_minor,
       spend_interval = excluded.spend_interval, rewards_rate_bps = excluded.rewards_rate_bps,
       earn_on = excluded.earn_on, over_capture_bps = excluded.over_capture_bps,
       authorization_ttl_seconds = excluded.authorization_ttl_seconds,
       force_post = excluded.force_post, updated_at = now()
 WHERE (p.currency, p.spend_limit_minor, p.spend_interval, p.rewards_rate_bps, p.earn_on,
        p.over_capture_bps, p.authorization_ttl_seconds, p.force_post)
       IS DISTINCT FROM
       (excluded.currency, excluded.spend_limit_minor, excluded.spend_interval,
        excluded.rewards_rate_bps, excluded.earn_on, excluded.over_capture_bps,
        excluded.authorization_ttl_seconds, excluded.force_post)
"""

_CARD: Final = """
INSERT INTO authorization_cards AS c
    (account_id, token, card, namespace, product, spend_limit_minor, spend_interval)
SELECT a.id, %(token)s, %(card)s, %(namespace)s, %(product)s, %(limit)s, %(interval)s
  FROM accounts a WHERE a.code = %(account)s AND a.kind = 'card'
ON CONFLICT (account_id) DO UPDATE
   SET token = excluded.token, product = excluded.product,
       spend_limit_minor = excluded.spend_limit_minor, spend_interval = excluded.spend_interval,
       updated_at = now()
 WHERE (c.token, c.product, c.spend_limit_minor, c.spend_interval)
       IS DISTINCT FROM
       (excluded.token, excluded.product, excluded.spend_limit_minor, excluded.spend_interval)
"""

_CARD_LIMIT: Final = """
UPDATE authorization_cards SET spend_limit_minor = %(limit)s, spend_interval = %(interval)s
 WHERE card = %(card)s
   AND (spend_limit_minor, spend_interval) IS DISTINCT FROM (%(limit)s, %(interval)s)
"""

_RETIRE: Final = """
UPDATE authorization_cards SET retired_at = now() WHERE card = %s AND retired_at IS NULL
"""

_RULES_DELETE: Final = "DELETE FROM authorization_risk_rules WHERE namespace = %s"
_RULE_INSERT: Final = """
INSERT INTO authorization_risk_rules (namespace, rule, policy, amount_minor, currency, codes)
VALUES (%s, %s, %s, %s, %s, %s)
"""


def _limit(limit: api.SpendLimit | None) -> dict[str, object]:
    if limit is None:
        return {"limit": None, "interval": None}
    return {"limit": limit.amount_minor, "interval": limit.interval.value}


async def put_product(
    conn: psycopg.AsyncConnection[Any], namespace: str, name: str, spec: api.CardProductSpec
) -> None:
    """Mirror a CardProduct's terms (currency, default limit, rewards, over-capture, TTL)."""
    await conn.execute(
        _PRODUCT,
        {
            "product": f"{namespace}/{name}",
            "currency": spec.currency,
            **_limit(spec.spend_limit),
            "rate": spec.rewards_rate_bps,
            "earn_on": [posting_type.value for posting_type in spec.earn_on],
            "over": spec.over_capture_bps,
            "ttl": spec.authorization_ttl_seconds,
            "force": spec.force_post,
        },
    )


async def put_card(
    conn: psycopg.AsyncConnection[Any],
    *,
    namespace: str,
    name: str,
    account: str,
    token: str,
    spec: api.CardSpec,
) -> bool:
    """Mirror an issued card: its token, account, product and own spend limit.

    Returns False when the account does not exist (nothing to authorize against yet).
    """
    cur = await conn.execute(
        _CARD,
        {
            "account": account,
            "token": token,
            "card": f"{namespace}/{name}",
            "namespace": namespace,
            "product": f"{namespace}/{spec.product}",
            **_limit(spec.spend_limit),
        },
    )
    if cur.rowcount > 0:
        return True
    found = await conn.execute("SELECT 1 FROM accounts WHERE code = %s", (account,))
    return await found.fetchone() is not None


async def put_card_limit(
    conn: psycopg.AsyncConnection[Any], namespace: str, name: str, limit: api.SpendLimit | None
) -> None:
    """A card's ``spec.spendLimit`` changed: the next authorization sees the new one."""
    await conn.execute(_CARD_LIMIT, {"card": f"{namespace}/{name}", **_limit(limit)})


async def retire_card(conn: psycopg.AsyncConnection[Any], namespace: str, name: str) -> None:
    """The Card object is deleted: its token authorizes nothing from now on."""
    await conn.execute(_RETIRE, (f"{namespace}/{name}",))


_LIVE: Final = """
SELECT a.code, split_part(a.metadata ->> 'card', '/', 2), a.metadata ->> 'uid',
       a.frozen_at IS NOT NULL
  FROM accounts a
  LEFT JOIN authorization_cards c ON c.account_id = a.id
 WHERE a.namespace = %s AND a.kind = 'card' AND a.status = 'open'
   AND a.metadata ->> 'card' LIKE '%%/%%'
   AND (c.retired_at IS NULL
        OR (SELECT sum(r.debits_minor) = sum(r.credits_minor)
              FROM account_balance_rows r WHERE r.account_id = a.id))
 ORDER BY a.id
 LIMIT %s
"""


@dataclass(frozen=True)
class LiveAccount:
    """An open card account that can still take money (its token is not retired, or it has
    none) or that a deletion retired and did not close although its balance is zero. ``uid``
    is the Card uid it was opened for (None before uids were recorded)."""

    code: str
    name: str
    uid: str | None
    frozen: bool


async def live_card_accounts(
    conn: psycopg.AsyncConnection[Any], namespace: str, limit: int
) -> list[LiveAccount]:
    """The namespace's :class:`LiveAccount` rows, oldest first, at most ``limit``. A deleted
    card's debt (an open account with a balance, its token retired) is not one of them:
    nothing can spend from it, and it stays open with its history by design."""
    if type(limit) is not int or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    cur = await conn.execute(_LIVE, (namespace, limit))
    return [
        LiveAccount(str(code), str(name), None if uid is None else str(uid), bool(frozen))
        for code, name, uid, frozen in await cur.fetchall()
    ]


_HOLDS: Final = """
SELECT a.code, c.held_minor,
       authorization_available(
           c.account_id,
           CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_limit_minor
                ELSE p.spend_limit_minor END,
           CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_interval
                ELSE p.spend_interval END,
           c.held_minor)
  FROM authorization_cards c
  JOIN accounts a ON a.id = c.account_id
  LEFT JOIN authorization_products p ON p.product = c.product
 WHERE a.code = ANY(%s)
"""


async def holds_of(
    conn: psycopg.AsyncConnection[Any], accounts: Sequence[str]
) -> dict[str, tuple[int, int | None]]:
    """:func:`holds` of many card accounts in one statement (those never mirrored are absent)."""
    cur = await conn.execute(_HOLDS, (list(accounts),))
    return {
        str(code): (int(held), None if available is None else int(available))
        for code, held, available in await cur.fetchall()
    }


async def holds(conn: psycopg.AsyncConnection[Any], account: str) -> tuple[int, int | None] | None:
    """(held, available) of the card account ``account``; None when it was never mirrored.

    ``available`` is None when the card has no spend limit.
    """
    return (await holds_of(conn, [account])).get(account)


def risk_rules(spec: api.RiskPolicySpec) -> list[tuple[str, int | None, str | None, list[str]]]:
    """The purchase rules of a policy a real-time decision applies: those whose action is
    Decline (a Review cannot wait for a reviewer within the network's deadline)."""
    decline = riskpolicy.RuleAction.DECLINE
    rules: list[tuple[str, int | None, str | None, list[str]]] = []
    amount = spec.max_amount_per_transaction
    if amount is not None and amount.action is decline:
        rules.append(("MaxAmountPerTransaction", amount.amount_minor, amount.currency, []))
    mccs = spec.blocked_mccs
    if mccs is not None and mccs.action is decline:
        rules.append(("BlockedMcc", None, None, sorted(mccs.codes)))
    countries = spec.blocked_merchant_countries
    if countries is not None and countries.action is decline:
        rules.append(("BlockedMerchantCountry", None, None, sorted(countries.countries)))
    purchase = api.PostingType.PURCHASE
    return rules if purchase in spec.posting_types else []


async def put_risk_rules(
    conn: psycopg.AsyncConnection[Any], namespace: str, policy: str, spec: api.RiskPolicySpec
) -> None:
    """Replace the namespace's mirrored purchase rules with ``policy``'s, in one transaction."""
    async with conn.transaction():
        await conn.execute(_RULES_DELETE, (namespace,))
        for rule, amount, currency, codes in risk_rules(spec):
            await conn.execute(_RULE_INSERT, (namespace, rule, policy, amount, currency, codes))


async def drop_risk_rules(
    conn: psycopg.AsyncConnection[Any], namespace: str, *, policy: str | None = None
) -> None:
    """No purchase rule of the namespace (or only of ``policy``, when given) applies any more."""
    if policy is None:
        await conn.execute(_RULES_DELETE, (namespace,))
    else:
        await conn.execute(_RULES_DELETE + " AND policy = %s", (namespace, policy))


__all__ = [
    "LiveAccount",
    "drop_risk_rules",
    "holds",
    "live_card_accounts",
    "put_card",
    "put_card_limit",
    "put_product",
    "put_risk_rules",
    "retire_card",
    "risk_rules",
]
