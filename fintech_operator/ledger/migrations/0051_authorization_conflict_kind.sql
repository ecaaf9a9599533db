-- 0051_authorization_conflict_kind: a request id reused by another kind of request names 'kind'.
--
-- 0050 named the first differing field in sorted order, which for an authorization id reused by
-- a capture is whichever field name sorts first ('authorization', 'amount', ...), not what
-- differs in substance. The kind is compared first now; everything else is 0050's.

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
    IF stored.request = p_request OR (stored.kind = 'timeout'
                                       AND p_request->>'kind' IN ('authorize', 'increment')) THEN
        status_code := stored.status_code;
        answer := stored.answer;
        RETURN;
    END IF;
    IF stored.kind = 'timeout' OR stored.request->>'kind' IS DISTINCT FROM p_request->>'kind' THEN
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

-- The hot path, flattened (measured: bench/bench_authorizations_store.py). The same reads,
-- checks, writes and bytes as 0050's authorization_authorize, in fewer statements: the card is
-- found and locked in one, the spend window is read once (and only under a windowed limit), the
-- risk rules only when the namespace has any, and the event and answer reuse one timestamp text.
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
    t authorization_card_terms;
    verdict text := 'Approved';
    available bigint;
    approved boolean;
    a authorizations;
    event_id uuid;
    view jsonb;
    expires text;
BEGIN
    PERFORM 1 FROM authorization_requests r WHERE r.request_id = p_id;
    IF FOUND THEN
        RETURN QUERY SELECT x.status_code, x.answer, x.replayed
                       FROM authorization_replay(p_id, req) x;
        RETURN;
    END IF;
    -- The card account's row lock first (the one every Posting of the card takes); what the
    -- card holds is read after it, by a fresh statement, so nothing that committed while this
    -- waited is missed.
    SELECT c.account_id INTO account
      FROM authorization_cards c JOIN accounts x ON x.id = c.account_id
     WHERE c.token = p_token
       FOR NO KEY UPDATE OF x;
    IF account IS NOT NULL THEN
        SELECT c.account_id, c.card, c.namespace, x.currency, x.status = 'open',
               x.frozen_at IS NOT NULL, c.retired_at IS NOT NULL,
               CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_limit_minor
                    ELSE p.spend_limit_minor END,
               CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_interval
                    ELSE p.spend_interval END,
               c.held_minor,
               coalesce(p.rewards_rate_bps, 0), coalesce(p.earn_on, '{Purchase}'),
               coalesce(p.over_capture_bps, 0), coalesce(p.authorization_ttl_seconds, 604800),
               coalesce(p.force_post, false)
          INTO t
          FROM authorization_cards c
          JOIN accounts x ON x.id = c.account_id
          LEFT JOIN authorization_products p ON p.product = c.product
         WHERE c.account_id = account;
    END IF;
    IF t.account_id IS NULL THEN
        verdict := 'CardNotFound';
    ELSIF NOT t.account_open OR t.frozen OR t.retired THEN
        verdict := 'CardNotActive';
    ELSIF t.currency <> p_currency THEN
        verdict := 'CurrencyMismatch';
    ELSE
        IF EXISTS (SELECT 1 FROM authorization_risk_rules r WHERE r.namespace = t.namespace) THEN
            verdict := coalesce('RiskDeclined:' || authorization_risk_rule(
                t.namespace, p_amount, p_currency, p_mcc, p_country), 'Approved');
        END IF;
        IF verdict = 'Approved' AND t.limit_minor IS NOT NULL THEN
            available := t.limit_minor;
            IF t.limit_interval <> 'PerTransaction' THEN
                -- authorization_spent, inlined: Purchase debits of the window, not reversed.
                available := available - t.held_minor - (
                    SELECT coalesce(sum(e.amount_minor), 0)
                      FROM entries e
                      JOIN journals j ON j.id = e.journal_id
                     WHERE e.account_id = t.account_id
                       AND e.direction = 'debit'
                       AND e.posted_at >= CASE t.limit_interval
                               WHEN 'Daily' THEN date_trunc('day', now() AT TIME ZONE 'UTC')
                                                 AT TIME ZONE 'UTC'
                               WHEN 'Monthly' THEN date_trunc('month', now() AT TIME ZONE 'UTC')
                                                   AT TIME ZONE 'UTC'
                               ELSE '-infinity' END
                       AND j.kind = 'Purchase'
                       AND NOT EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = j.id));
            END IF;
            IF p_amount > available THEN
                verdict := 'SpendLimitExceeded';
            END IF;
        END IF;
    END IF;
    approved := verdict = 'Approved';
    IF approved THEN
        expires := to_char((now() + make_interval(secs => t.authorization_ttl_seconds))
                           AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
    END IF;
    INSERT INTO authorizations (id, account_id, card, card_token, currency, amount_minor,
                                held_minor, over_capture_bps, status, reason, merchant,
                                rewards_rate_bps, earn_on, expires_at)
    VALUES (p_id, t.account_id, t.card, p_token, p_currency, p_amount,
            CASE WHEN approved THEN p_amount ELSE 0 END, coalesce(t.over_capture_bps, 0),
            CASE WHEN approved THEN 'pending' ELSE 'declined' END, verdict, merchant,
            coalesce(t.rewards_rate_bps, 0), coalesce(t.earn_on, '{Purchase}'),
            CASE WHEN approved THEN now() + make_interval(secs => t.authorization_ttl_seconds) END)
    RETURNING * INTO a;
    IF approved THEN
        UPDATE authorization_cards SET held_minor = held_minor + p_amount
         WHERE account_id = t.account_id;
        available := available - p_amount;
    ELSIF t.account_id IS NOT NULL AND available IS NULL AND t.limit_minor IS NOT NULL THEN
        -- Declined before the limit was read: the answer still shows what is available.
        available := authorization_available(t.account_id, t.limit_minor, t.limit_interval,
                                             t.held_minor);
    END IF;
    view := jsonb_build_object(
        'authorization', p_id, 'approved', approved, 'reason', verdict,
        'status', a.status, 'currency', p_currency, 'amount', p_amount,
        'held', a.held_minor, 'captured', 0, 'released', 0,
        'available', available, 'expiresAt', expires);
    -- A decline of an unknown token has no card to announce it on: its record is the row above.
    IF t.card IS NOT NULL THEN
        event_id := gen_random_uuid();
        INSERT INTO outbox (event_id, topic, key, payload, headers)
        VALUES (event_id, 'authorizations', t.card, jsonb_build_object(
            'specversion', '1.0',
            'id', event_id::text,
            'source', '/fintech-operator/authorizations',
            'type', CASE WHEN approved THEN 'dev.fintech.authorization.approved.v1'
                         ELSE 'dev.fintech.authorization.declined.v1' END,
            'subject', 'namespaces/' || t.namespace || '/cards/' || split_part(t.card, '/', 2),
            'time', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'datacontenttype', 'application/json',
            'partitionkey', t.card,
            'data', jsonb_strip_nulls(view - 'approved' - 'available'
                                      || jsonb_build_object('card', t.card, 'merchant', merchant))),
            coalesce(p_headers, '{}'::jsonb));
    END IF;
    status_code := 200;
    answer := convert_to(view::text, 'UTF8');
    replayed := false;
    -- A racer with the same id that committed first makes this a unique violation: the whole
    -- transaction rolls back and the caller asks again, getting the racer's answer.
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_id, 'authorize', p_id, req, encode(sha256(convert_to(req::text, 'UTF8')), 'hex'),
            200, answer);
    RETURN NEXT;
END $$;

-- Nothing reads these on the hot path or elsewhere; each cost an index insert per request.
DROP INDEX authorization_requests_authorization_idx;
DROP INDEX authorizations_account_pending_idx;

-- NOTIFY takes a cluster-wide lock from before a transaction's commit until after its WAL
-- flush, so transactions that notify cannot share a flush (group commit): measured, it held
-- authorizations to about one commit per fsync. Authorization events are therefore left to the
-- relay's periodic scan (FINTECH_RELAY_IDLE_INTERVAL_MS, default 1 s; the relay reads every
-- unpublished row whenever any other event wakes it); every other topic still wakes it at once.
DROP TRIGGER outbox_after_insert_notify ON outbox;

CREATE OR REPLACE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted WHERE topic <> 'authorizations') THEN
        PERFORM pg_notify('fintech_outbox', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_after_insert_notify AFTER INSERT ON outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();
