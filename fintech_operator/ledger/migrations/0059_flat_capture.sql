-- 0059: the common capture, a capture of a pending authorization, on one flat statement path.
--
-- 0050's authorization_capture reaches a capture through four nested PL/pgSQL calls
-- (authorization_replay, authorization_lock -> authorization_lock_card,
-- authorization_capture_pending -> authorization_post_capture -> authorization_hash,
-- authorization_event, authorization_view, authorization_available ->
-- authorization_spent_in_window, authorization_answer), each one a function call with its
-- own plan cache lookups and record copies. The capture of a pending authorization of an
-- active card within its over-capture allowance (what the network sends almost every time)
-- is now one straight run of statements with no call and no loop; everything else (a replay
-- or an idempotency conflict, an unknown, declined, expired or resolved authorization, an
-- over-capture, a frozen or closed card, a force post, the first capture of a currency before
-- its settlement account exists) goes to the general function, unchanged and renamed
-- authorization_capture_other. It takes the same locks again, in the same order, within the
-- same transaction, so what it decides is what 0050 decided.
--
-- Every row, every byte of the answer and of the event is what 0050 (with 0053's namespaced
-- journal) writes: the answer is authorization_view || {request, forcePost}, the event is
-- authorization_event's, the journal's hash is authorization_hash's.
--
-- WAL: authorization_cards and authorizations are updated on every request of the mix and
-- their updated columns are in no index, so they get room for HOT updates (an update on the
-- same page, with no new index entries): fillfactor applies to pages written from now on.

ALTER FUNCTION authorization_capture(text, text, bigint, boolean, text, text, jsonb)
    RENAME TO authorization_capture_other;

CREATE FUNCTION authorization_capture(
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
    card_namespace text;
    card_ok boolean;
    limit_minor bigint;
    limit_interval text;
    a authorizations;
    remaining bigint;
    consumed bigint;
    released bigint;
    settlement_id bigint;
    journal bigint;
    card_held bigint;
    available bigint;
    event_id uuid;
    view jsonb;
BEGIN
    PERFORM 1 FROM authorization_requests r WHERE r.request_id = p_request_id;
    IF NOT FOUND THEN
        SELECT x.account_id INTO account FROM authorizations x WHERE x.id = p_authorization_id;
    END IF;
    IF account IS NOT NULL THEN
        -- The card account's row lock first (authorize's order, and every Posting's), then
        -- the card's terms and the authorization itself, read fresh after it.
        PERFORM 1 FROM accounts x WHERE x.id = account FOR NO KEY UPDATE;
        SELECT x.namespace, x.status = 'open' AND x.frozen_at IS NULL,
               CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_limit_minor
                    ELSE p.spend_limit_minor END,
               CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_interval
                    ELSE p.spend_interval END
          INTO card_namespace, card_ok, limit_minor, limit_interval
          FROM accounts x
          JOIN authorization_cards c ON c.account_id = x.id
          LEFT JOIN authorization_products p ON p.product = c.product
         WHERE x.id = account;
        SELECT * INTO a FROM authorizations x WHERE x.id = p_authorization_id FOR UPDATE;
        SELECT s.id INTO settlement_id FROM accounts s
         WHERE s.code = 'system:network_settlement:' || a.currency;
    END IF;
    IF a.id IS NULL OR a.status <> 'pending' OR card_ok IS NOT TRUE OR settlement_id IS NULL
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
            card_namespace)
    RETURNING id INTO journal;
    INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)
    SELECT journal, l.account_id, l.direction, p_amount, a.currency
      FROM (VALUES (account, 'debit'), (settlement_id, 'credit')) AS l(account_id, direction)
     ORDER BY l.account_id;
    UPDATE authorizations
       SET captured_minor = captured_minor + p_amount,
           consumed_minor = consumed_minor + consumed,
           released_minor = released_minor + released,
           status = CASE WHEN p_final THEN 'closed' ELSE 'pending' END,
           closed_by = CASE WHEN p_final THEN 'capture' END
     WHERE id = a.id
    RETURNING * INTO a;
    UPDATE authorization_cards SET held_minor = held_minor - consumed - released
     WHERE account_id = account
    RETURNING held_minor INTO card_held;
    INSERT INTO authorization_captures
        (id, authorization_id, account_id, amount_minor, final, force_post, journal_id)
    VALUES (p_request_id, a.id, account, p_amount, p_final, false, journal);
    -- authorization_available, inlined: the running spend window already counts this capture.
    IF limit_minor IS NOT NULL THEN
        available := limit_minor;
        IF limit_interval <> 'PerTransaction' THEN
            available := available - card_held - coalesce((
                SELECT sum(s.spent_minor)
                  FROM account_spend_windows s
                 WHERE s.account_id = account
                   AND s.spend_interval = limit_interval
                   AND s.window_start >= CASE limit_interval
                           WHEN 'Daily' THEN date_trunc('day', now() AT TIME ZONE 'UTC')
                                             AT TIME ZONE 'UTC'
                           WHEN 'Monthly' THEN date_trunc('month', now() AT TIME ZONE 'UTC')
                                               AT TIME ZONE 'UTC'
                           ELSE '-infinity' END), 0);
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
    -- authorization_event('captured', ...), inlined.
    event_id := gen_random_uuid();
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
        journal);
    status_code := 200;
    answer := convert_to((view || jsonb_build_object('request', p_request_id,
                                                     'forcePost', false))::text, 'UTF8');
    replayed := false;
    -- A racer with the same id that committed first makes this a unique violation: the whole
    -- transaction rolls back and the caller asks again, getting the racer's answer.
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_request_id, 'capture', a.id, req,
            encode(sha256(convert_to(req::text, 'UTF8')), 'hex'), 200, answer);
    RETURN NEXT;
END $$;

ALTER TABLE authorization_cards SET (fillfactor = 70);
ALTER TABLE authorizations SET (fillfactor = 80);
