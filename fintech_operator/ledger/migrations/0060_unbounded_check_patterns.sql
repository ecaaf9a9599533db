-- 0060: the same CHECK constraints, without bounded repetition in their regular expressions
-- (issue 13, performance).
--
-- PostgreSQL's regular expression engine expands a bounded repetition such as {1,128} into a
-- large automaton: measured on PostgreSQL 15, `id ~ '^[A-Za-z0-9._:-]{1,128}$'` costs about
-- 20 us per row against 0.6 us for `length(id) BETWEEN 1 AND 128 AND id ~ '^[A-Za-z0-9._:-]+$'`
-- (9.6 against 0.7 us for '^[0-9a-f]{64}$', 6.3 against 0.7 us for the reason's {0,127}). A
-- CHECK constraint is evaluated on every INSERT and on every UPDATE of its row, whatever
-- columns the UPDATE changed, so an authorization paid for five of them (about 75 us, an
-- eighth of its statement's CPU) and a capture for seven (about 125 us).
--
-- Each constraint below is replaced by an equivalent one under the SAME name: the character
-- classes are ASCII, so length() in characters bounds exactly what the repetition bounded, and
-- every row the old constraint accepted the new one accepts, and nothing else. Existing rows
-- are checked again when the constraint is added (they pass: the condition is the same).

ALTER TABLE authorizations
    DROP CONSTRAINT authorizations_id_check,
    ADD CONSTRAINT authorizations_id_check
        CHECK (length(id) BETWEEN 1 AND 128 AND id ~ '^[A-Za-z0-9._:-]+$'),
    DROP CONSTRAINT authorizations_reason_check,
    ADD CONSTRAINT authorizations_reason_check
        CHECK (length(reason) <= 128 AND reason ~ '^[A-Za-z][A-Za-z0-9:]*$');

ALTER TABLE authorization_requests
    DROP CONSTRAINT authorization_requests_request_id_check,
    ADD CONSTRAINT authorization_requests_request_id_check
        CHECK (length(request_id) BETWEEN 1 AND 128 AND request_id ~ '^[A-Za-z0-9._:-]+$'),
    DROP CONSTRAINT authorization_requests_authorization_id_check,
    ADD CONSTRAINT authorization_requests_authorization_id_check
        CHECK (length(authorization_id) BETWEEN 1 AND 128
               AND authorization_id ~ '^[A-Za-z0-9._:-]+$'),
    DROP CONSTRAINT authorization_requests_request_hash_check,
    ADD CONSTRAINT authorization_requests_request_hash_check
        CHECK (length(request_hash) = 64 AND request_hash ~ '^[0-9a-f]+$');

ALTER TABLE authorization_captures
    DROP CONSTRAINT authorization_captures_id_check,
    ADD CONSTRAINT authorization_captures_id_check
        CHECK (length(id) BETWEEN 1 AND 128 AND id ~ '^[A-Za-z0-9._:-]+$'),
    DROP CONSTRAINT authorization_captures_authorization_id_check,
    ADD CONSTRAINT authorization_captures_authorization_id_check
        CHECK (length(authorization_id) BETWEEN 1 AND 128
               AND authorization_id ~ '^[A-Za-z0-9._:-]+$');

-- Every journal (each Posting, each capture) pays for this one.
ALTER TABLE journals
    DROP CONSTRAINT journals_request_hash_check,
    ADD CONSTRAINT journals_request_hash_check
        CHECK (length(request_hash) = 64 AND request_hash ~ '^[0-9a-f]+$');
