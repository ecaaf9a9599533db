-- 0073: the currency a capture names must be its authorization's.
--
-- CaptureRequest.currency (with card) says whose money a force post is, for an authorization
-- the issuer holds nothing for; a force post in another currency than the card's was already
-- refused (CurrencyMismatch). But a capture of a PENDING authorization never read it: a
-- processor's capture of 100 EUR against a USD authorization was approved and posted as 100
-- USD (found walking docs/authorizations.md on make dev). It is now refused with 409
-- CurrencyMismatch, stored, and replayed to a retry, like every refusal of an existing
-- authorization. A capture without currency is unchanged (the authorization's currency).
--
-- The function is 0064's authorization_capture with that one check added after the closed
-- check; authorization_capture_other (expired, declined or unknown authorizations: force posts)
-- already checks the currency.

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
    -- 0073: a capture that names a currency names the authorization's. Before, the currency of
    -- a capture of a pending authorization was never read, and a capture of 100 EUR against a
    -- USD authorization captured 100 USD. Stored like every refusal of an existing
    -- authorization, so a retry gets it again.
    IF a.status = 'pending' AND p_currency IS NOT NULL AND p_currency <> a.currency THEN
        status_code := 409;
        answer := convert_to(authorization_refusal('CurrencyMismatch', a.id,
            format('the capture is in %s, the authorization in %s', p_currency, a.currency))::text,
            'UTF8');
        INSERT INTO authorization_requests
            (request_id, kind, authorization_id, request, request_hash, status_code, answer)
        VALUES (p_request_id, 'capture', a.id, req,
                encode(sha256(convert_to(req::text, 'UTF8')), 'hex'), 409, answer);
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
