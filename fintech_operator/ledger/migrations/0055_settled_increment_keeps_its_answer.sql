-- 0054: a settled increment keeps the bytes the gateway sent (found by the fault campaign).
--
-- When the gateway's deadline passes it answers IssuerUnavailable by itself, naming the request
-- id as "authorization" (answers.decline), and settles. 0050's settle stored that same body when
-- nothing had committed, but when an increment had committed late it stored the body with
-- "authorization" set to the authorization's id: a retry of that increment then got other
-- bytes than its first answer. The settle now stores exactly the gateway's body in both cases.
CREATE OR REPLACE FUNCTION authorization_settle_timed_out(p_request_id text, p_headers jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    body jsonb := jsonb_build_object(
        'approved', false, 'reason', 'IssuerUnavailable', 'authorization', p_request_id,
        'status', 'declined', 'held', 0);
    stored authorization_requests;
    locked record;
    a authorizations;
    give_back bigint := 0;
BEGIN
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_request_id, 'timeout', p_request_id, '{}', authorization_hash('{}'), 200,
            convert_to(body::text, 'UTF8'))
    ON CONFLICT (request_id) DO NOTHING;
    IF FOUND THEN
        RETURN 0;
    END IF;
    SELECT * INTO stored FROM authorization_requests WHERE request_id = p_request_id;
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
