-- 0021_rewards_balances: what each rewards row came from, and each card's running balance.
--
-- rewards_ledger (0001) keeps one row per accrual or reversal. These columns record where a
-- row came from: the Posting resource, the event type, the posting type and time, and for a
-- reversal the journal it reverses. They are NULL only on rows written before this migration.
--
-- rewards_balances holds each card's points, maintained by a statement trigger on
-- rewards_ledger in the same transaction as the rows (one upsert per card per batch, in card
-- order so concurrent consumers cannot deadlock), and written by nothing else. Card status
-- reads it in O(1) (rewards.store.points_balance) instead of summing a growing ledger.
-- The view rewards_balance_drift proves it against the ledger: it is always empty.

ALTER TABLE rewards_ledger
    ADD COLUMN posting             text CHECK (posting ~ '^[^/\s]+/[^/\s]+$'),
    ADD COLUMN event_type          text CHECK (length(event_type) BETWEEN 1 AND 255),
    ADD COLUMN posting_type        text CHECK (
        posting_type IN ('Purchase', 'Refund', 'Payment', 'Fee', 'Adjustment')
    ),
    ADD COLUMN reverses_journal_id bigint REFERENCES journals (id),
    ADD COLUMN occurred_at         timestamptz;

CREATE INDEX rewards_ledger_posting_idx ON rewards_ledger (posting) WHERE posting IS NOT NULL;

CREATE TABLE rewards_balances (
    card       text        PRIMARY KEY CHECK (card ~ '^[^/\s]+/[^/\s]+$'),  -- namespace/name
    points     bigint      NOT NULL DEFAULT 0,  -- signed: refunds may take a card below zero
    entries    bigint      NOT NULL DEFAULT 0 CHECK (entries >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Rows that existed before this migration (run at trigger depth 0, before the guard exists).
INSERT INTO rewards_balances (card, points, entries)
SELECT card, sum(points), count(*) FROM rewards_ledger GROUP BY card;

CREATE FUNCTION rewards_apply_balances() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO rewards_balances AS b (card, points, entries)
    SELECT card, sum(points), count(*) FROM inserted GROUP BY card ORDER BY card
    ON CONFLICT (card) DO UPDATE
       SET points = b.points + excluded.points,
           entries = b.entries + excluded.entries,
           updated_at = now();
    RETURN NULL;
END $$;

CREATE TRIGGER rewards_ledger_after_insert_balances AFTER INSERT ON rewards_ledger
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION rewards_apply_balances();

-- Balances move only with rewards_ledger rows (the trigger above runs at depth 1, so this
-- guard sees depth 2; a direct statement's guard sees depth 1).
CREATE FUNCTION rewards_balance_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION '% on rewards_balances is refused: balances move only with rewards_ledger',
            TG_OP USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER rewards_balances_guard BEFORE INSERT OR UPDATE OR DELETE ON rewards_balances
    FOR EACH ROW EXECUTE FUNCTION rewards_balance_guard();
CREATE TRIGGER rewards_balances_no_truncate BEFORE TRUNCATE ON rewards_balances
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Cards whose balance row disagrees with their rewards_ledger rows. Always empty.
CREATE VIEW rewards_balance_drift AS
SELECT coalesce(b.card, l.card)    AS card,
       coalesce(b.points, 0)       AS balance_points,
       coalesce(l.points, 0)       AS ledger_points,
       coalesce(b.entries, 0)      AS balance_entries,
       coalesce(l.entries, 0)      AS ledger_entries
  FROM rewards_balances b
  FULL JOIN (SELECT card, sum(points) AS points, count(*) AS entries
               FROM rewards_ledger GROUP BY card) l ON l.card = b.card
 WHERE (coalesce(b.points, 0), coalesce(b.entries, 0))
       IS DISTINCT FROM (coalesce(l.points, 0), coalesce(l.entries, 0));
