-- 0056: settling a missed deadline leaves the answers of earlier attempts alone (issue 16).
--
-- The gateway settles a request id when its deadline passes (it has answered IssuerUnavailable
-- by itself): 0050/0055's settle then withdrew whatever approval the id had stored, releasing
-- its hold and replacing its answer. But that approval may have been committed, and answered,
-- by an EARLIER attempt of the same id: a processor's retry (or its on-purpose replay) that met
-- a slow database then undid an approval the processor had been told about, after the hold may
-- even have been captured, voided or expired, and every later retry got a different answer than
-- the first (the long fault campaign's "wrong" and "doubled" requests).
--
-- The settle now gets the attempt's age (how long ago the gateway received it, measured by the
-- gateway just before this call) and withdraws only an answer committed by a transaction that
-- started after that moment: the attempt's own late commit. An answer committed before is the
-- id's first committed answer: it stands, nothing is changed, and every retry gets it. A
-- commit at the very edge counts as earlier (the cutoff errs late): a hold wrongly kept is still
-- released by expiry and a retry learns it, whereas an approval wrongly withdrawn breaks what
-- the processor was told.
DROP FUNCTION authorization_settle_timed_out(text, jsonb);

CREATE FUNCTION authorization_settle_timed_out(
    p_request_id text, p_age_seconds double precision, p_headers jsonb DEFAULT '{}'
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    body jsonb := jsonb_build_object(
        'approved', false, 'reason', 'IssuerUnavailable', 'authorization', p_request_id,
        'status', 'declined', 'held', 0);
    received_at timestamptz;
    stored authorization_requests;
    locked record;
    a authorizations;
    give_back bigint := 0;
BEGIN
    IF p_age_seconds IS NULL OR p_age_seconds < 0 OR p_age_seconds > 86400 THEN
        RAISE EXCEPTION 'settle of %: age % s is not in [0, 86400]', p_request_id, p_age_seconds
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    received_at := now() - make_interval(secs => p_age_seconds);
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_request_id, 'timeout', p_request_id, '{}', authorization_hash('{}'), 200,
            convert_to(body::text, 'UTF8'))
    ON CONFLICT (request_id) DO NOTHING;
    IF FOUND THEN
        RETURN 0;  -- nothing committed: every retry, and the late statement, meet the decline
    END IF;
    SELECT * INTO stored FROM authorization_requests WHERE request_id = p_request_id;
    IF stored.created_at < received_at THEN
        RETURN 0;  -- an earlier attempt's committed answer: the first answer stands
    END IF;
    IF stored.timed_out OR stored.kind NOT IN ('authorize', 'increment')
       OR stored.status_code <> 200 OR NOT (convert_from(stored.answer, 'UTF8')::jsonb->>'approved')::boolean THEN
        RETURN 0;  -- settled already, a follow-up, or nothing was held
    END IF;
    SELECT * INTO locked FROM authorization_lock(stored.authorization_id);
    a := locked.a;
    SELECT * INTO stored FROM authorization_requests WHERE request_id = p_request_id FOR UPDATE;
    IF stored.timed_out THEN
        RETURN 0;
    END IF;
    IF a.status = 'pending' THEN
        give_back := a.held_minor - a.consumed_minor - a.released_minor;
        IF stored.kind = 'increment' THEN
            give_back := least(give_back, (stored.request->>'amount')::bigint);
        END IF;
        UPDATE authorizations
           SET released_minor = released_minor + give_back,
               status = CASE WHEN stored.kind = 'authorize' THEN 'closed' ELSE status END,
               closed_by = CASE WHEN stored.kind = 'authorize' THEN 'void' ELSE closed_by END
         WHERE id = a.id
        RETURNING * INTO a;
        UPDATE authorization_cards SET held_minor = held_minor - give_back
         WHERE account_id = a.account_id;
        PERFORM authorization_event('voided', a, jsonb_build_object(
            'request', p_request_id, 'stepAmount', give_back, 'reason', 'IssuerUnavailable'),
            p_headers, NULL);
    END IF;
    UPDATE authorization_requests
       SET timed_out = true, answer = convert_to(body::text, 'UTF8')
     WHERE request_id = p_request_id;
    RETURN give_back;
END $$;
