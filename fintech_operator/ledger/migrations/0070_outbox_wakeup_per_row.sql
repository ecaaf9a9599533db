-- 0070: the outbox relay's wake-up (0020, 0051) is a row trigger whose body tests the topic,
-- instead of a statement trigger over a transition table (issue 13, the server's CPU per
-- authorization, capture and void).
--
-- 0051's statement trigger made PostgreSQL keep every inserted outbox row in a transition
-- table and ran one SQL query over it (EXISTS ... topic <> 'authorizations'), with its
-- executor start-up, at every statement that wrote the outbox: every authorization request
-- paid it, only to learn that its own event wakes nobody. A row trigger that tests NEW.topic
-- in PL/pgSQL runs no query and keeps no table. (A row trigger with a WHEN clause was tried
-- and not taken, bench/RESULTS.md: PostgreSQL rebuilds a WHEN clause at every statement, as
-- it does a CHECK.) Measured with bench/backend_cpu_ab.py --below 70: 16 to 36 us less
-- backend CPU per authorize + final capture (two events), 13 to 23 us less per Posting-style
-- journal, every round.
--
-- Same wake-ups: a transaction that inserts an event of any topic but 'authorizations' sends
-- one notification on channel fintech_outbox when it commits (PostgreSQL folds a
-- transaction's identical notifications into one, however many rows called pg_notify), and
-- one that inserts only authorization events sends none (0051: NOTIFY serialises commits; the
-- relay's periodic scan publishes those). The trigger keeps its name.

DROP TRIGGER outbox_after_insert_notify ON outbox;
DROP FUNCTION outbox_notify();

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.topic <> 'authorizations' THEN
        PERFORM pg_notify('fintech_outbox', '');
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_after_insert_notify AFTER INSERT ON outbox
    FOR EACH ROW EXECUTE FUNCTION outbox_notify();
