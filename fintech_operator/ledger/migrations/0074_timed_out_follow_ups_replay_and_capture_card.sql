-- 0074: a timed-out capture or void replays its decline.
--
-- A capture or void cut off by the gateway's deadline before it committed is recorded by
-- authorization_settle_timed_out (0056) as a request of kind 'timeout', with the
-- IssuerUnavailable decline the gateway sent. authorization_replay (0051) gave that stored
-- answer only to a retry of kind authorize or increment: a capture or void retried with the
-- same id got 409 IdempotencyConflict (field kind), another answer than the first, although
-- the id had been used by that very request. Every retry of a timed-out id, whatever its
-- kind, now gets the stored decline byte for byte, marked replayed, and changes nothing:
-- nothing was captured, posted or released for it (the late statement, if any, fails on
-- the request id and rolls back whole). The settle does not know the kind or body of the
-- request it settles (it stores '{}'), so the decline is the id's answer for any request
-- that reuses it, as it already was for authorizations and increments. A capture or void
-- that committed late keeps its own answer (the settle leaves follow-ups alone), so its
-- retry still gets that answer. Every retry of an id that has an answer reaches this
-- function: authorization_authorize probes the id first; authorization_capture,
-- authorization_void and authorization_increment find no account when the id is answered
-- and hand over to their *_other functions (0050, 0054), which call it before anything
-- else. A replay is not the hot path; the function stays one read.

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
