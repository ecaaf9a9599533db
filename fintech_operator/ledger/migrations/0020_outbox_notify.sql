-- 0020_outbox_notify: wake the outbox relay at once, and find a journal's events fast.
--
-- A NOTIFY is delivered when the inserting transaction commits, so the relay (LISTEN
-- fintech_outbox) publishes a posting's events right after its journal is committed instead
-- of at its next scan. One notification per statement is enough: the relay reads every
-- unpublished row when woken, and PostgreSQL folds identical notifications of one
-- transaction into one. Notifications only lower latency; the relay's periodic scan is what
-- guarantees that nothing waits forever.

CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fintech_outbox', '');
    RETURN NULL;
END $$;

CREATE TRIGGER outbox_after_insert_notify AFTER INSERT ON outbox
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();

-- A reversal's event copies the terms of the reversed journal's event (events.outbox).
CREATE INDEX outbox_journal_id_idx ON outbox (journal_id) WHERE journal_id IS NOT NULL;
