-- 0074: a timed-out capture or void replays its decline; a capture must name its
-- authorization's card.
--
-- 1. A capture or void cut off by the gateway's deadline before it committed is recorded by
--    authorization_settle_timed_out (0056) as a request of kind 'timeout', with the
--    IssuerUnavailable decline the gateway sent. authorization_replay (0051) gave that stored
--    answer only to a retry of kind authorize or increment: a capture or void retried with the
--    same id got 409 IdempotencyConflict (field kind), another answer than the first, although
--    the id had been used by that very request. Every retry of a timed-out id, whatever its
--    kind, now gets the stored decline byte for byte, marked replayed, and changes nothing:
--    nothing was captured, posted or released for it (the late statement, if any, fails on
--    the request id and rolls back whole). The settle does not know the kind or body of the
--    request it settles (it stores '{}'), so the decline is the id's answer for any request
--    that reuses it, as it already was for authorizations and increments. A capture or void
--    that committed late keeps its own answer (the settle leaves follow-ups alone), so its
--    retry still gets that answer. Every retry of an id that has an answer reaches this
--    function: authorization_authorize probes the id first; authorization_capture,
--    authorization_void and authorization_increment find no account when the id is answered
--    and hand over to their *_other functions (0050, 0054), which call it before anything
--    else. A replay is not the hot path; the function stays one read.
--
-- 2. CaptureRequest.card was read only for a force post of an authorization the issuer never
--    saw. A capture of an existing authorization that named another card's token was posted to
--    the authorization's card: a processor that named one card had the money taken from
--    another. It is now refused with 409 CardMismatch, stored, and replayed to a retry, like
--    every refusal of an existing authorization (as 0073 did for the currency), whether the
--    authorization is pending or expired or declined (a force post on its card); nothing is
--    posted. A capture that names the authorization's own token, or no card, is unchanged.
--    Increments and voids take no card (their requests refuse one, 422). authorization_capture
--    is 0073's with that one check added after the closed check, compared with the
--    authorization's row it has already read: no statement is added to the capture's path.

CREATE OR REPLACE FUNCTION authorization_replay(
    p_request_id text, p_request jsonb,
    OUT status_code integer, OUT answer bytea, OUT replayed boolean
) LANGUAGE plpgsql STABLE AS $$
DECLARE
    stored authorization_requests%ROWTYPE;
    field text;
BEGIN
    SELECT * INTO stored FROM authorization_requests r WHERE r.request_id = p_request_id;
    IF NOT FOUND THEN
        RETURN;  -- all NULL: not answered yet
    END IF;
    replayed := true;
    -- 0074: a timed-out id answers its decline to every retry, captures and voids included.
    IF stored.request = p_request OR stored.kind = 'timeout' THEN
        status_code := stored.status_code;
        answer := stored.answer;
        RETURN;
    END IF;
    IF stored.request->>'kind' IS DISTINCT FROM p_request->>'kind' THEN
        field := 'kind';
    ELSE
        field := coalesce(authorization_differing_field(stored.request, p_request), 'kind');
    END IF;
    status_code := 409;
    replayed := false;
    answer := convert_to(jsonb_build_object(
        'error', 'IdempotencyConflict',
        'field', field,
        'message', format('request id %s was used for another request: %s differs',
                          p_request_id, field))::text, 'UTF8');
END $$;

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
    -- 0074: a capture that names a card names the authorization's (the token it was
    -- authorized with; a card's token never changes once issued). Before, the card of a
    -- capture of an existing authorization was never read, and a capture naming another card
    -- was posted to the authorization's card. Any status but closed (answered just above):
    -- pending, and expired or declined ones, whose captures are force posts on their card. A
    -- decline of an unknown token has no card (account_id NULL): it never gets here, and a
    -- capture of it is a force post on the card the capture names, as before. Compared with
    -- the row already read: no statement more. Checked before the currency: against another
    -- card, the currency says nothing. Stored like every refusal of an existing
    -- authorization, so a retry gets it again.
    IF p_token IS NOT NULL AND p_token <> a.card_token THEN
        status_code := 409;
        answer := convert_to(authorization_refusal('CardMismatch', a.id,
            'the capture names another card than the authorization''s')::text, 'UTF8');
        INSERT INTO authorization_requests
            (request_id, kind, authorization_id, request, request_hash, status_code, answer)
        VALUES (p_request_id, 'capture', a.id, req,
                encode(sha256(convert_to(req::text, 'UTF8')), 'hex'), 409, answer);
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
