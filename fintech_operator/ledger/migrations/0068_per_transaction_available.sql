-- 0068: an approved authorization on a card with a PerTransaction limit answers available = the
-- limit, as its increments, its GET and `kubectl get cards` do (docs/authorizations.md: "available
-- is the limit"). 0051's flattened authorize subtracted the approved amount from available for
-- every limit kind; for PerTransaction that answered limit - amount (a 50.00 limit and a 10.00
-- approval answered 40.00, then 50.00 on the authorization's GET). Found walking the docs on
-- `make dev`. Only the answer's `available` of new approvals on PerTransaction cards changes:
-- the decision, the hold, the event (which never carries available) and every stored answer
-- stay as they are (a replay returns the bytes first answered).
--
-- 0064's authorization_authorize, with that one change.

CREATE OR REPLACE FUNCTION authorization_authorize(
    p_id text, p_token text, p_amount bigint, p_currency text,
    p_merchant_name text, p_mcc text, p_country text, p_headers jsonb DEFAULT '{}'
) RETURNS TABLE (status_code integer, answer bytea, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    req jsonb := jsonb_build_object(
        'kind', 'authorize', 'card', p_token, 'amount', p_amount, 'currency', p_currency,
        'merchant.name', p_merchant_name, 'merchant.mcc', p_mcc, 'merchant.country', p_country);
    merchant jsonb := jsonb_build_object('name', p_merchant_name, 'mcc', p_mcc,
                                         'country', p_country);
    account bigint;
    card_account bigint;
    card_name text;
    card_namespace text;
    card_currency text;
    card_open boolean;
    card_frozen boolean;
    card_retired boolean;
    card_limit bigint;
    card_interval text;
    card_held bigint;
    card_rewards_bps integer;
    card_earn_on text[];
    card_over_capture_bps integer;
    card_ttl_seconds integer;
    risk_rule text;
    spent bigint;
    verdict text := 'Approved';
    available bigint;
    approved boolean;
    event_id uuid;
    view jsonb;
    expires text;
BEGIN
    -- The request id not answered yet, and then the card account's row lock (the one every
    -- Posting of the card takes), in one statement: the probe is an uncorrelated sub-select,
    -- evaluated once before any lock, as 0054's statement of its own was. What the card holds
    -- and spent is read after the lock, by a fresh statement, so nothing that committed while
    -- this waited is missed.
    SELECT c.account_id INTO account
      FROM authorization_cards c JOIN accounts x ON x.id = c.account_id
     WHERE c.token = p_token
       AND NOT EXISTS (SELECT 1 FROM authorization_requests r WHERE r.request_id = p_id)
       FOR NO KEY UPDATE OF x;
    IF account IS NULL THEN
        -- An unknown token, or an answered request id (a replay takes no lock).
        PERFORM 1 FROM authorization_requests r WHERE r.request_id = p_id;
        IF FOUND THEN
            RETURN QUERY SELECT x.status_code, x.answer, x.replayed
                           FROM authorization_replay(p_id, req) x;
            RETURN;
        END IF;
    END IF;
    IF account IS NOT NULL THEN
        -- 0054's terms, with the first Decline rule the purchase breaks
        -- (authorization_risk_rule) and the spend window (authorization_spent_in_window)
        -- read by the same statement: both only matter when the checks before them pass, and
        -- both are one index probe.
        SELECT c.account_id, c.card, c.namespace, x.currency, x.status = 'open',
               x.frozen_at IS NOT NULL, c.retired_at IS NOT NULL,
               l.limit_minor, l.limit_interval, c.held_minor,
               coalesce(p.rewards_rate_bps, 0), coalesce(p.earn_on, '{Purchase}'),
               coalesce(p.over_capture_bps, 0), coalesce(p.authorization_ttl_seconds, 604800),
               (SELECT r.rule
                  FROM authorization_risk_rules r
                 WHERE r.namespace = c.namespace
                   AND ((r.rule = 'MaxAmountPerTransaction' AND r.currency = p_currency
                         AND p_amount > r.amount_minor)
                        OR (r.rule = 'BlockedMcc' AND p_mcc = ANY (r.codes))
                        OR (r.rule = 'BlockedMerchantCountry' AND p_country = ANY (r.codes)))
                 ORDER BY r.rule
                 LIMIT 1),
               coalesce((SELECT sum(s.spent_minor)
                           FROM account_spend_windows s
                          WHERE s.account_id = c.account_id
                            AND s.spend_interval = l.limit_interval
                            AND s.window_start >= CASE l.limit_interval
                                    WHEN 'Daily' THEN date_trunc('day', now() AT TIME ZONE 'UTC')
                                                      AT TIME ZONE 'UTC'
                                    WHEN 'Monthly' THEN date_trunc('month', now() AT TIME ZONE 'UTC')
                                                        AT TIME ZONE 'UTC'
                                    ELSE '-infinity' END), 0)
          INTO card_account, card_name, card_namespace, card_currency, card_open, card_frozen,
               card_retired, card_limit, card_interval, card_held, card_rewards_bps,
               card_earn_on, card_over_capture_bps, card_ttl_seconds, risk_rule, spent
          FROM authorization_cards c
          JOIN accounts x ON x.id = c.account_id
          LEFT JOIN authorization_products p ON p.product = c.product
         CROSS JOIN LATERAL (SELECT
               CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_limit_minor
                    ELSE p.spend_limit_minor END AS limit_minor,
               CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_interval
                    ELSE p.spend_interval END AS limit_interval) l
         WHERE c.account_id = account;
        -- What the card may spend: authorization_available's figure (0054).
        IF card_limit IS NOT NULL THEN
            available := card_limit;
            IF card_interval <> 'PerTransaction' THEN
                available := available - card_held - spent;
            END IF;
        END IF;
    END IF;
    IF card_account IS NULL THEN
        verdict := 'CardNotFound';
    ELSIF NOT card_open OR card_frozen OR card_retired THEN
        verdict := 'CardNotActive';
    ELSIF card_currency <> p_currency THEN
        verdict := 'CurrencyMismatch';
    ELSIF risk_rule IS NOT NULL THEN
        verdict := 'RiskDeclined:' || risk_rule;
    ELSIF available IS NOT NULL AND p_amount > available THEN
        verdict := 'SpendLimitExceeded';
    END IF;
    approved := verdict = 'Approved';
    IF approved THEN
        expires := to_char((now() + make_interval(secs => card_ttl_seconds))
                           AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
        -- A per-transaction limit is its own available amount (authorization_available, 0050):
        -- a hold does not use it up. NULL (no limit) stays NULL.
        IF card_interval IS DISTINCT FROM 'PerTransaction' THEN
            available := available - p_amount;
        END IF;
    END IF;
    view := jsonb_build_object(
        'authorization', p_id, 'approved', approved, 'reason', verdict,
        'status', CASE WHEN approved THEN 'pending' ELSE 'declined' END,
        'currency', p_currency, 'amount', p_amount,
        'held', CASE WHEN approved THEN p_amount ELSE 0 END, 'captured', 0, 'released', 0,
        'available', available, 'expiresAt', expires);
    status_code := 200;
    answer := convert_to(view::text, 'UTF8');
    replayed := false;
    IF card_name IS NOT NULL THEN
        event_id := gen_random_uuid();
    END IF;
    -- One statement for the four writes. A decline of an unknown token has no card to announce
    -- it on (no event: its record is the authorization row). A racer with the same id that
    -- committed first makes one of the inserts a unique violation: the whole transaction rolls
    -- back and the caller asks again, getting the racer's answer.
    WITH authorization_row AS (
        INSERT INTO authorizations (id, account_id, card, card_token, currency, amount_minor,
                                    held_minor, over_capture_bps, status, reason, merchant,
                                    rewards_rate_bps, earn_on, expires_at)
        VALUES (p_id, card_account, card_name, p_token, p_currency, p_amount,
                CASE WHEN approved THEN p_amount ELSE 0 END, coalesce(card_over_capture_bps, 0),
                CASE WHEN approved THEN 'pending' ELSE 'declined' END, verdict, merchant,
                coalesce(card_rewards_bps, 0), coalesce(card_earn_on, '{Purchase}'),
                CASE WHEN approved THEN now() + make_interval(secs => card_ttl_seconds)
                END)
    ), card_row AS (
        UPDATE authorization_cards c SET held_minor = c.held_minor + p_amount
         WHERE approved AND c.account_id = card_account
    ), event_row AS (
        INSERT INTO outbox (event_id, topic, key, payload, headers)
        SELECT event_id, 'authorizations', card_name, jsonb_build_object(
            'specversion', '1.0',
            'id', event_id::text,
            'source', '/fintech-operator/authorizations',
            'type', CASE WHEN approved THEN 'dev.fintech.authorization.approved.v1'
                         ELSE 'dev.fintech.authorization.declined.v1' END,
            'subject', 'namespaces/' || card_namespace || '/cards/' || split_part(card_name, '/', 2),
            'time', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'datacontenttype', 'application/json',
            'partitionkey', card_name,
            'data', jsonb_strip_nulls(view - 'approved' - 'available'
                                      || jsonb_build_object('card', card_name, 'merchant', merchant))),
            coalesce(p_headers, '{}'::jsonb)
         WHERE event_id IS NOT NULL
    )
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_id, 'authorize', p_id, req, encode(sha256(convert_to(req::text, 'UTF8')), 'hex'),
            200, answer);
    RETURN NEXT;
END $$;
