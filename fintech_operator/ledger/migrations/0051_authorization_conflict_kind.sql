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
