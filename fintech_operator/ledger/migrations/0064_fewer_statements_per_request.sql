-- 0064: the hot path's functions in fewer SQL statements per request (issue 13, performance).
--
-- Every statement a PL/pgSQL function runs pays the executor's start-up and shut-down (a plan
-- cache check, a snapshot, the relations' locks and their index lists, trigger bookkeeping):
-- 11-14% of the backend's CPU in the profile of bench/RESULTS.md. Counted with
-- pg_stat_statements (track = all; bench/count_authorization_statements.py), an approved
-- authorization ran 12 statements (functions' and triggers'), a final capture 47 (33 of them
-- the entries' triggers), a void 15 and an increment 16. Here the same reads, checks, writes
-- and bytes take fewer statements:
--
--   * reads that run under the card account's row lock are joined into one statement: the
--     card's terms, the namespace's first breached risk rule and the spend window (authorize);
--     the terms, the authorization's row lock and the settlement account (capture);
--   * the request-id probe, the authorization's account and the account's row lock are one
--     statement (capture, void, increment): the probe is an uncorrelated sub-select evaluated
--     before any lock, as the separate statement was, and the join finds the account through
--     the authorization's account_id, which never changes (authorization_before_update);
--   * the writes of a step that do not read each other's effects are one statement with
--     data-modifying WITH clauses (each ModifyTable still fires its rows' triggers and checks
--     its constraints; AFTER triggers and foreign keys run at the end of the one statement,
--     as they ran at the end of each): the authorization, the card's held amount, the event
--     and the stored answer (authorize); the authorization, the card, the capture row and the
--     spend window read back (capture, void, increment); the event and the answer.
--   * void and increment of a pending authorization get the flat path 0059 gave capture; every
--     other case (a replay or conflict, an unknown or resolved authorization, and for increment
--     an inactive card) goes to 0050/0054's functions, renamed *_other, which take the same
--     locks again in the same order in the same transaction.
--
-- A journal and its entries stay two statements: the entries' triggers read their journal.
-- Answers are jsonb text, whose key order is jsonb's own (by key length, then bytes), so the
-- bytes depend only on the keys and values, which are those of 0050-0059 (tests compare the
-- flat and the general paths on twin cards, and every decline reason in its precedence).

-- Authorize ---------------------------------------------------------------------------------

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
        available := available - p_amount;  -- NULL (no limit) stays NULL
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

-- Follow-ups -------------------------------------------------------------------------------

-- The 409 of a follow-up of an authorization that is no longer pending, stored as
-- authorization_answer stores it, with authorization_not_pending's body: one statement.
CREATE FUNCTION authorization_store_not_pending(
    p_request_id text, p_kind text, a authorizations, p_request jsonb
) RETURNS bytea LANGUAGE plpgsql AS $$
DECLARE
    answer bytea := convert_to(authorization_refusal(
        CASE WHEN a.status = 'expired' THEN 'AuthorizationExpired'
             WHEN a.status = 'declined' THEN 'AuthorizationDeclined'
             WHEN a.closed_by = 'void' THEN 'AuthorizationVoided'
             ELSE 'AuthorizationCaptured' END,
        a.id,
        format('authorization %s is %s%s: nothing is held any more', a.id, a.status,
               CASE WHEN a.closed_by IS NULL THEN '' ELSE ' by ' || a.closed_by END))::text,
        'UTF8');
BEGIN
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_request_id, p_kind, a.id, p_request,
            encode(sha256(convert_to(p_request::text, 'UTF8')), 'hex'), 409, answer);
    RETURN answer;
END $$;

-- Capture -----------------------------------------------------------------------------------

-- 0059's flat capture, in six statements (was fourteen): everything it did not take stays with
-- authorization_capture_other, on the same conditions.
CREATE OR REPLACE FUNCTION authorization_capture(
    p_authorization_id text, p_request_id text, p_amount bigint, p_final boolean,
    p_token text DEFAULT NULL, p_currency text DEFAULT NULL, p_headers jsonb DEFAULT '{}'
) RETURNS TABLE (status_code integer, answer bytea, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    req jsonb := jsonb_strip_nulls(jsonb_build_object(
        'kind', 'capture', 'authorization', p_authorization_id, 'amount', p_amount,
        'final', p_final, 'card', p_token, 'currency', p_currency));
    key text := 'authorization-capture/' || p_request_id;
    account bigint;
    found_row record;
    a authorizations;
    remaining bigint;
    consumed bigint;
    released bigint;
    journal bigint;
    card_held bigint;
    spent bigint;
    available bigint;
    event_id uuid;
    view jsonb;
BEGIN
    -- The request id not answered yet, and the card account's row lock (authorize's order,
    -- and every Posting's), in one statement.
    SELECT x.id INTO account
      FROM authorizations y JOIN accounts x ON x.id = y.account_id
     WHERE y.id = p_authorization_id
       AND NOT EXISTS (SELECT 1 FROM authorization_requests r WHERE r.request_id = p_request_id)
       FOR NO KEY UPDATE OF x;
    IF account IS NULL THEN
        RETURN QUERY SELECT * FROM authorization_capture_other(
            p_authorization_id, p_request_id, p_amount, p_final, p_token, p_currency, p_headers);
        RETURN;
    END IF;
    -- Then the card's terms, the authorization itself (locked) and the settlement account of
    -- its currency, read fresh after the account's lock.
    SELECT x.namespace AS card_namespace,
           x.status = 'open' AND x.frozen_at IS NULL AS card_ok,
           CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_limit_minor
                ELSE p.spend_limit_minor END AS limit_minor,
           CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_interval
                ELSE p.spend_interval END AS limit_interval,
           y AS a,
           (SELECT s.id FROM accounts s
             WHERE s.code = 'system:network_settlement:' || y.currency) AS settlement_id
      INTO found_row
      FROM accounts x
      JOIN authorization_cards c ON c.account_id = x.id
      LEFT JOIN authorization_products p ON p.product = c.product
     CROSS JOIN authorizations y
     WHERE x.id = account AND y.id = p_authorization_id
       FOR UPDATE OF y;
    a := found_row.a;
    IF a.status = 'closed' THEN
        status_code := 409;
        answer := authorization_store_not_pending(p_request_id, 'capture', a, req);
        replayed := false;
        RETURN NEXT;
        RETURN;
    END IF;
    IF a.id IS NULL OR a.status <> 'pending' OR found_row.card_ok IS NOT TRUE
       OR found_row.settlement_id IS NULL
       OR (a.captured_minor + p_amount) * 10000 > a.held_minor * (10000 + a.over_capture_bps)
    THEN
        RETURN QUERY SELECT * FROM authorization_capture_other(
            p_authorization_id, p_request_id, p_amount, p_final, p_token, p_currency, p_headers);
        RETURN;
    END IF;
    remaining := a.held_minor - a.consumed_minor - a.released_minor;
    consumed := least(p_amount, remaining);
    released := CASE WHEN p_final THEN remaining - consumed ELSE 0 END;
    -- The Purchase journal (authorization_post_capture): the ledger's own tables and triggers.
    INSERT INTO journals (idempotency_key, request_hash, kind, reference, occurred_at, metadata,
                          namespace)
    VALUES (key,
            encode(sha256(convert_to(jsonb_build_object(
                'key', key, 'amount', p_amount, 'currency', a.currency)::text, 'UTF8')), 'hex'),
            'Purchase', a.id, now(),
            jsonb_build_object('authorization', a.id, 'capture', p_request_id,
                               'forcePost', false, 'card', a.card, 'merchant', a.merchant),
            found_row.card_namespace)
    RETURNING id INTO journal;
    INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)
    SELECT journal, l.account_id, l.direction, p_amount, a.currency
      FROM (VALUES (account, 'debit'), (found_row.settlement_id, 'credit'))
           AS l(account_id, direction)
     ORDER BY l.account_id;
    -- The authorization, the card's held amount and the capture row, and the spend window as
    -- the entries' triggers left it (this statement's snapshot is taken after them).
    WITH authorization_row AS (
        UPDATE authorizations y
           SET captured_minor = y.captured_minor + p_amount,
               consumed_minor = y.consumed_minor + consumed,
               released_minor = y.released_minor + released,
               status = CASE WHEN p_final THEN 'closed' ELSE 'pending' END,
               closed_by = CASE WHEN p_final THEN 'capture' END
         WHERE y.id = a.id
    ), capture_row AS (
        INSERT INTO authorization_captures
            (id, authorization_id, account_id, amount_minor, final, force_post, journal_id)
        VALUES (p_request_id, a.id, account, p_amount, p_final, false, journal)
    ), card_row AS (
        UPDATE authorization_cards c SET held_minor = c.held_minor - consumed - released
         WHERE c.account_id = account
        RETURNING c.held_minor
    )
    SELECT c.held_minor,
           coalesce((SELECT sum(s.spent_minor)
                       FROM account_spend_windows s
                      WHERE s.account_id = account
                        AND s.spend_interval = found_row.limit_interval
                        AND s.window_start >= CASE found_row.limit_interval
                                WHEN 'Daily' THEN date_trunc('day', now() AT TIME ZONE 'UTC')
                                                  AT TIME ZONE 'UTC'
                                WHEN 'Monthly' THEN date_trunc('month', now() AT TIME ZONE 'UTC')
                                                    AT TIME ZONE 'UTC'
                                ELSE '-infinity' END), 0)
      INTO card_held, spent
      FROM card_row c;
    -- The authorization as the update left it (its trigger only stamps updated_at).
    a.captured_minor := a.captured_minor + p_amount;
    a.consumed_minor := a.consumed_minor + consumed;
    a.released_minor := a.released_minor + released;
    a.status := CASE WHEN p_final THEN 'closed' ELSE 'pending' END;
    a.closed_by := CASE WHEN p_final THEN 'capture' END;
    -- authorization_available, inlined: the running spend window already counts this capture.
    IF found_row.limit_minor IS NOT NULL THEN
        available := found_row.limit_minor;
        IF found_row.limit_interval <> 'PerTransaction' THEN
            available := available - card_held - spent;
        END IF;
    END IF;
    -- authorization_view(a, available), inlined.
    view := jsonb_build_object(
        'authorization', a.id,
        'approved', true,
        'reason', a.reason,
        'status', a.status,
        'currency', a.currency,
        'amount', a.amount_minor,
        'held', a.held_minor - a.consumed_minor - a.released_minor,
        'captured', a.captured_minor,
        'released', a.released_minor,
        'available', available,
        'expiresAt', to_char(a.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'));
    status_code := 200;
    answer := convert_to((view || jsonb_build_object('request', p_request_id,
                                                     'forcePost', false))::text, 'UTF8');
    replayed := false;
    -- authorization_event('captured', ...) and the stored answer, in one statement. A racer
    -- with the same id that committed first makes this a unique violation: the whole
    -- transaction rolls back and the caller asks again, getting the racer's answer.
    event_id := gen_random_uuid();
    WITH event_row AS (
        INSERT INTO outbox (event_id, topic, key, payload, headers, journal_id)
        VALUES (
            event_id, 'authorizations', a.card,
            jsonb_build_object(
                'specversion', '1.0',
                'id', event_id::text,
                'source', '/fintech-operator/authorizations',
                'type', 'dev.fintech.authorization.captured.v1',
                'subject', 'namespaces/' || split_part(a.card, '/', 1) || '/cards/'
                           || split_part(a.card, '/', 2),
                'time', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                'datacontenttype', 'application/json',
                'partitionkey', a.card,
                'data', jsonb_strip_nulls(
                    view - 'approved' - 'available'
                    || jsonb_build_object('card', a.card, 'merchant', a.merchant,
                                          'request', p_request_id, 'stepAmount', p_amount,
                                          'final', p_final, 'forcePost', false,
                                          'journalId', journal,
                                          'rewardsRateBps', a.rewards_rate_bps,
                                          'earnOn', to_jsonb(a.earn_on)))),
            coalesce(p_headers, '{}'::jsonb),
            journal)
    )
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_request_id, 'capture', a.id, req,
            encode(sha256(convert_to(req::text, 'UTF8')), 'hex'), 200, answer);
    RETURN NEXT;
END $$;

-- Void --------------------------------------------------------------------------------------

-- 0050's void stays, renamed, for everything but the void of a pending authorization.
ALTER FUNCTION authorization_void(text, text, jsonb) RENAME TO authorization_void_other;

-- The void of a pending authorization in four statements (0050's took fifteen): the probe and
-- the account's lock; the card's terms and the authorization's lock; the authorization, the
-- card and the spend window; the event and the answer.
CREATE FUNCTION authorization_void(
    p_authorization_id text, p_request_id text, p_headers jsonb DEFAULT '{}'
) RETURNS TABLE (status_code integer, answer bytea, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    req jsonb := jsonb_build_object('kind', 'void', 'authorization', p_authorization_id);
    account bigint;
    found_row record;
    a authorizations;
    remaining bigint;
    card_held bigint;
    spent bigint;
    available bigint;
    event_id uuid;
    view jsonb;
BEGIN
    SELECT x.id INTO account
      FROM authorizations y JOIN accounts x ON x.id = y.account_id
     WHERE y.id = p_authorization_id
       AND NOT EXISTS (SELECT 1 FROM authorization_requests r WHERE r.request_id = p_request_id)
       FOR NO KEY UPDATE OF x;
    IF account IS NULL THEN
        RETURN QUERY SELECT * FROM authorization_void_other(
            p_authorization_id, p_request_id, p_headers);
        RETURN;
    END IF;
    SELECT CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_limit_minor
                ELSE p.spend_limit_minor END AS limit_minor,
           CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_interval
                ELSE p.spend_interval END AS limit_interval,
           y AS a
      INTO found_row
      FROM authorization_cards c
      LEFT JOIN authorization_products p ON p.product = c.product
     CROSS JOIN authorizations y
     WHERE c.account_id = account AND y.id = p_authorization_id
       FOR UPDATE OF y;
    a := found_row.a;
    IF a.status <> 'pending' THEN
        status_code := 409;
        answer := authorization_store_not_pending(p_request_id, 'void', a, req);
        replayed := false;
        RETURN NEXT;
        RETURN;
    END IF;
    IF a.id IS NULL THEN
        RETURN QUERY SELECT * FROM authorization_void_other(
            p_authorization_id, p_request_id, p_headers);
        RETURN;
    END IF;
    remaining := a.held_minor - a.consumed_minor - a.released_minor;
    WITH authorization_row AS (
        UPDATE authorizations y
           SET released_minor = y.released_minor + remaining, status = 'closed',
               closed_by = 'void'
         WHERE y.id = a.id
    ), card_row AS (
        UPDATE authorization_cards c SET held_minor = c.held_minor - remaining
         WHERE c.account_id = account
        RETURNING c.held_minor
    )
    SELECT c.held_minor,
           coalesce((SELECT sum(s.spent_minor)
                       FROM account_spend_windows s
                      WHERE s.account_id = account
                        AND s.spend_interval = found_row.limit_interval
                        AND s.window_start >= CASE found_row.limit_interval
                                WHEN 'Daily' THEN date_trunc('day', now() AT TIME ZONE 'UTC')
                                                  AT TIME ZONE 'UTC'
                                WHEN 'Monthly' THEN date_trunc('month', now() AT TIME ZONE 'UTC')
                                                    AT TIME ZONE 'UTC'
                                ELSE '-infinity' END), 0)
      INTO card_held, spent
      FROM card_row c;
    -- The authorization as the update left it (its trigger only stamps updated_at).
    a.released_minor := a.released_minor + remaining;
    a.status := 'closed';
    a.closed_by := 'void';
    IF found_row.limit_minor IS NOT NULL THEN
        available := found_row.limit_minor;
        IF found_row.limit_interval <> 'PerTransaction' THEN
            available := available - card_held - spent;
        END IF;
    END IF;
    view := jsonb_build_object(
        'authorization', a.id,
        'approved', true,
        'reason', a.reason,
        'status', a.status,
        'currency', a.currency,
        'amount', a.amount_minor,
        'held', a.held_minor - a.consumed_minor - a.released_minor,
        'captured', a.captured_minor,
        'released', a.released_minor,
        'available', available,
        'expiresAt', to_char(a.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'));
    status_code := 200;
    answer := convert_to((view || jsonb_build_object('request', p_request_id))::text, 'UTF8');
    replayed := false;
    event_id := gen_random_uuid();
    WITH event_row AS (
        INSERT INTO outbox (event_id, topic, key, payload, headers, journal_id)
        VALUES (
            event_id, 'authorizations', a.card,
            jsonb_build_object(
                'specversion', '1.0',
                'id', event_id::text,
                'source', '/fintech-operator/authorizations',
                'type', 'dev.fintech.authorization.voided.v1',
                'subject', 'namespaces/' || split_part(a.card, '/', 1) || '/cards/'
                           || split_part(a.card, '/', 2),
                'time', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                'datacontenttype', 'application/json',
                'partitionkey', a.card,
                'data', jsonb_strip_nulls(
                    view - 'approved' - 'available'
                    || jsonb_build_object('card', a.card, 'merchant', a.merchant,
                                          'request', p_request_id, 'stepAmount', remaining))),
            coalesce(p_headers, '{}'::jsonb),
            NULL)
    )
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_request_id, 'void', a.id, req,
            encode(sha256(convert_to(req::text, 'UTF8')), 'hex'), 200, answer);
    RETURN NEXT;
END $$;

-- Increment ---------------------------------------------------------------------------------

-- 0054's increment stays, renamed, for everything but an increment of a pending authorization.
ALTER FUNCTION authorization_increment(text, text, bigint, jsonb)
    RENAME TO authorization_increment_other;

-- An increment of a pending authorization, approved or declined, in four statements (0054's
-- took sixteen), with 0054's decision: CardNotActive, then the limit (a per-transaction limit
-- bounds the authorization as a whole), and available read once.
CREATE FUNCTION authorization_increment(
    p_authorization_id text, p_request_id text, p_amount bigint, p_headers jsonb DEFAULT '{}'
) RETURNS TABLE (status_code integer, answer bytea, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    req jsonb := jsonb_build_object('kind', 'increment', 'authorization', p_authorization_id,
                                    'amount', p_amount);
    account bigint;
    found_row record;
    a authorizations;
    verdict text := 'Approved';
    approved boolean;
    available bigint;
    room bigint;
    event_id uuid;
    view jsonb;
BEGIN
    SELECT x.id INTO account
      FROM authorizations y JOIN accounts x ON x.id = y.account_id
     WHERE y.id = p_authorization_id
       AND NOT EXISTS (SELECT 1 FROM authorization_requests r WHERE r.request_id = p_request_id)
       FOR NO KEY UPDATE OF x;
    IF account IS NULL THEN
        RETURN QUERY SELECT * FROM authorization_increment_other(
            p_authorization_id, p_request_id, p_amount, p_headers);
        RETURN;
    END IF;
    -- The card's terms and what it holds and spent, and the authorization (locked).
    SELECT x.status = 'open' AND x.frozen_at IS NULL AND c.retired_at IS NULL AS card_ok,
           l.limit_minor, l.limit_interval, c.held_minor,
           coalesce((SELECT sum(s.spent_minor)
                       FROM account_spend_windows s
                      WHERE s.account_id = account
                        AND s.spend_interval = l.limit_interval
                        AND s.window_start >= CASE l.limit_interval
                                WHEN 'Daily' THEN date_trunc('day', now() AT TIME ZONE 'UTC')
                                                  AT TIME ZONE 'UTC'
                                WHEN 'Monthly' THEN date_trunc('month', now() AT TIME ZONE 'UTC')
                                                    AT TIME ZONE 'UTC'
                                ELSE '-infinity' END), 0) AS spent_minor,
           y AS a
      INTO found_row
      FROM accounts x
      JOIN authorization_cards c ON c.account_id = x.id
      LEFT JOIN authorization_products p ON p.product = c.product
     CROSS JOIN LATERAL (SELECT
           CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_limit_minor
                ELSE p.spend_limit_minor END AS limit_minor,
           CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_interval
                ELSE p.spend_interval END AS limit_interval) l
     CROSS JOIN authorizations y
     WHERE x.id = account AND y.id = p_authorization_id
       FOR UPDATE OF y;
    a := found_row.a;
    IF a.status <> 'pending' THEN
        status_code := 409;
        answer := authorization_store_not_pending(p_request_id, 'increment', a, req);
        replayed := false;
        RETURN NEXT;
        RETURN;
    END IF;
    IF a.id IS NULL THEN
        RETURN QUERY SELECT * FROM authorization_increment_other(
            p_authorization_id, p_request_id, p_amount, p_headers);
        RETURN;
    END IF;
    -- authorization_available (0054).
    IF found_row.limit_minor IS NOT NULL THEN
        available := found_row.limit_minor;
        IF found_row.limit_interval <> 'PerTransaction' THEN
            available := available - found_row.held_minor - found_row.spent_minor;
        END IF;
    END IF;
    IF found_row.card_ok IS NOT TRUE THEN
        verdict := 'CardNotActive';
    ELSE
        room := available;
        IF found_row.limit_interval = 'PerTransaction' THEN
            room := room - a.held_minor;  -- the authorization as a whole is one purchase
        END IF;
        IF room IS NOT NULL AND p_amount > room THEN
            verdict := 'SpendLimitExceeded';
        END IF;
    END IF;
    approved := verdict = 'Approved';
    IF approved THEN
        a.held_minor := a.held_minor + p_amount;  -- what the update below leaves
        IF found_row.limit_interval IS DISTINCT FROM 'PerTransaction' THEN
            available := available - p_amount;  -- NULL (no limit) stays NULL
        END IF;
        event_id := gen_random_uuid();
    END IF;
    view := jsonb_build_object(
        'authorization', a.id,
        'approved', true,
        'reason', a.reason,
        'status', a.status,
        'currency', a.currency,
        'amount', a.amount_minor,
        'held', a.held_minor - a.consumed_minor - a.released_minor,
        'captured', a.captured_minor,
        'released', a.released_minor,
        'available', available,
        'expiresAt', to_char(a.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'));
    status_code := 200;
    answer := convert_to((view || jsonb_build_object('approved', approved, 'reason', verdict,
                                                     'request', p_request_id))::text, 'UTF8');
    replayed := false;
    -- The writes of an approval (none for a decline) and the stored answer, in one statement.
    WITH authorization_row AS (
        UPDATE authorizations y SET held_minor = y.held_minor + p_amount
         WHERE approved AND y.id = a.id
    ), card_row AS (
        UPDATE authorization_cards c SET held_minor = c.held_minor + p_amount
         WHERE approved AND c.account_id = account
    ), event_row AS (
        INSERT INTO outbox (event_id, topic, key, payload, headers, journal_id)
        SELECT event_id, 'authorizations', a.card,
            jsonb_build_object(
                'specversion', '1.0',
                'id', event_id::text,
                'source', '/fintech-operator/authorizations',
                'type', 'dev.fintech.authorization.incremented.v1',
                'subject', 'namespaces/' || split_part(a.card, '/', 1) || '/cards/'
                           || split_part(a.card, '/', 2),
                'time', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                'datacontenttype', 'application/json',
                'partitionkey', a.card,
                'data', jsonb_strip_nulls(
                    view - 'approved' - 'available'
                    || jsonb_build_object('card', a.card, 'merchant', a.merchant,
                                          'request', p_request_id, 'stepAmount', p_amount))),
            coalesce(p_headers, '{}'::jsonb),
            NULL
         WHERE approved
    )
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_request_id, 'increment', a.id, req,
            encode(sha256(convert_to(req::text, 'UTF8')), 'hex'), 200, answer);
    RETURN NEXT;
END $$;
