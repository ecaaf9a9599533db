-- 0052_authorization_helpers_plpgsql: the helpers of the follow-up functions keep their plans.
--
-- A LANGUAGE sql function that the planner does not inline is planned again at every call from
-- PL/pgSQL; these helpers run several times per capture, void and increment. As PL/pgSQL they
-- keep their plans for the session. Same signatures, same results as 0050.

CREATE OR REPLACE FUNCTION authorization_spent(p_account_id bigint, p_start timestamptz)
RETURNS bigint LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT coalesce(sum(e.amount_minor), 0)::bigint
              FROM entries e
              JOIN journals j ON j.id = e.journal_id
             WHERE e.account_id = p_account_id
               AND e.direction = 'debit'
               AND e.posted_at >= coalesce(p_start, '-infinity')
               AND j.kind = 'Purchase'
               AND NOT EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = j.id));
END $$;

CREATE OR REPLACE FUNCTION authorization_available(
    p_account_id bigint, p_limit_minor bigint, p_interval text, p_held_minor bigint
) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_limit_minor IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_interval = 'PerTransaction' THEN
        RETURN p_limit_minor;
    END IF;
    RETURN p_limit_minor - p_held_minor - authorization_spent(
        p_account_id,
        CASE p_interval
            WHEN 'Daily' THEN date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
            WHEN 'Monthly' THEN date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        END);
END $$;

CREATE OR REPLACE FUNCTION authorization_time(p_at timestamptz)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
END $$;

CREATE OR REPLACE FUNCTION authorization_hash(p_request jsonb)
RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN encode(sha256(convert_to(p_request::text, 'UTF8')), 'hex');
END $$;

CREATE OR REPLACE FUNCTION authorization_refusal(p_error text, p_id text, p_message text)
RETURNS jsonb LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN jsonb_build_object('error', p_error, 'authorization', p_id, 'message', p_message);
END $$;

CREATE OR REPLACE FUNCTION authorization_view(a authorizations, p_available bigint)
RETURNS jsonb LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN jsonb_build_object(
        'authorization', a.id,
        'approved', a.status <> 'declined',
        'reason', a.reason,
        'status', a.status,
        'currency', a.currency,
        'amount', a.amount_minor,
        'held', a.held_minor - a.consumed_minor - a.released_minor,
        'captured', a.captured_minor,
        'released', a.released_minor,
        'available', p_available,
        'expiresAt', to_char(a.expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'));
END $$;
