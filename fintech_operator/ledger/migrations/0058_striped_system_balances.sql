-- 0058: the system accounts' running balances in 16 stripes (issue 14).
--
-- Every posting moves a system account of its currency (network_settlement, fee_revenue, ...).
-- With one balance row per account, the entries trigger's UPDATE of that row made every posting
-- wait for the one before it to commit: a single hot row serialised the whole ledger, and the
-- operator's batches (one transaction for many postings) would hold it for a whole batch. Now a
-- system account has 16 balance rows ("stripes"); a transaction moves the stripe chosen by its
-- backend (pg_backend_pid() % 16), so concurrent connections write different rows. A card
-- account keeps one row (stripe 0): postings of one card are serialised by its account lock
-- anyway, and its balance is read under that lock (spend limits, verified totals).
--
-- The rows live in account_balance_rows (the table account_balances was); account_balances is
-- now a view with one row per account, the sum of its stripes, so every reader (balances, the
-- trial balance, reconciliation, the drift view) keeps its query. Writing the view is refused
-- like writing the table was: balances move only with entries.

ALTER TABLE account_balances RENAME TO account_balance_rows;
ALTER TABLE account_balance_rows RENAME CONSTRAINT account_balances_pkey TO account_balance_rows_pkey;
ALTER TABLE account_balance_rows
    ADD COLUMN stripe smallint NOT NULL DEFAULT 0 CHECK (stripe BETWEEN 0 AND 15);
ALTER TABLE account_balance_rows DROP CONSTRAINT account_balance_rows_pkey;
ALTER TABLE account_balance_rows ADD CONSTRAINT account_balance_rows_pkey
    PRIMARY KEY (account_id, stripe);

COMMENT ON TABLE account_balance_rows IS
    'Running balances: one row (stripe 0) per card account, 16 (stripes 0-15) per system account; '
    'an account''s balance is the sum of its rows (view account_balances). Moved only by the '
    'entries trigger, in the stripe pg_backend_pid() % 16 when the account has it.';

-- The existing system accounts get their other 15 stripes (their totals stay in stripe 0).
ALTER TABLE account_balance_rows DISABLE TRIGGER account_balances_guard;
INSERT INTO account_balance_rows (account_id, stripe)
SELECT a.id, s.stripe
  FROM accounts a
 CROSS JOIN generate_series(1, 15) AS s (stripe)
 WHERE a.kind = 'system';
ALTER TABLE account_balance_rows ENABLE TRIGGER account_balances_guard;

CREATE OR REPLACE FUNCTION ledger_account_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_balance_rows (account_id, stripe)
    SELECT NEW.id, s.stripe
      FROM generate_series(0, CASE WHEN NEW.kind = 'system' THEN 15 ELSE 0 END) AS s (stripe);
    RETURN NULL;
END $$;

-- The entry moves its account's stripe of this backend, or stripe 0 when the account has only
-- that one (a card account). One backend runs one transaction at a time, so two transactions
-- at once never share a stripe unless their pids are equal modulo 16.
CREATE OR REPLACE FUNCTION ledger_entry_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lane smallint := pg_backend_pid() % 16;
BEGIN
    IF lane <> 0 AND NOT EXISTS (
        SELECT 1 FROM account_balance_rows WHERE account_id = NEW.account_id AND stripe = lane
    ) THEN
        lane := 0;
    END IF;
    UPDATE account_balance_rows
       SET debits_minor  = debits_minor
                           + CASE WHEN NEW.direction = 'debit' THEN NEW.amount_minor ELSE 0 END,
           credits_minor = credits_minor
                           + CASE WHEN NEW.direction = 'credit' THEN NEW.amount_minor ELSE 0 END,
           entry_count   = entry_count + 1,
           updated_at    = now()
     WHERE account_id = NEW.account_id AND stripe = lane;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % has no balance row', NEW.account_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

-- One row per account: stripe 0 (every account has it) plus the others, found by an index
-- probe of the primary key, so a join on account_id reads only the accounts it needs.
CREATE VIEW account_balances AS
SELECT r.account_id,
       (r.debits_minor + coalesce(s.debits_minor, 0))::bigint   AS debits_minor,
       (r.credits_minor + coalesce(s.credits_minor, 0))::bigint AS credits_minor,
       (r.entry_count + coalesce(s.entry_count, 0))::bigint     AS entry_count,
       greatest(r.updated_at, s.updated_at)                     AS updated_at
  FROM account_balance_rows r
 CROSS JOIN LATERAL (
        SELECT sum(x.debits_minor)  AS debits_minor,
               sum(x.credits_minor) AS credits_minor,
               sum(x.entry_count)   AS entry_count,
               max(x.updated_at)    AS updated_at
          FROM account_balance_rows x
         WHERE x.account_id = r.account_id AND x.stripe > 0
       ) s
 WHERE r.stripe = 0;

COMMENT ON VIEW account_balances IS
    'Each account''s running balance: the sum of its rows in account_balance_rows (migration 0058).';

CREATE FUNCTION ledger_balances_view_refused() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on account_balances is refused: balances move only with entries', TG_OP
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER account_balances_refused INSTEAD OF INSERT OR UPDATE OR DELETE ON account_balances
    FOR EACH ROW EXECUTE FUNCTION ledger_balances_view_refused();

-- The drift view was bound to the table, which now has a row per stripe: it compares the
-- accounts' sums again. Still always empty.
CREATE OR REPLACE VIEW ledger_balance_drift AS
SELECT a.id AS account_id,
       a.code,
       b.debits_minor,
       b.credits_minor,
       b.entry_count,
       coalesce(s.debits_minor, 0)  AS entries_debits_minor,
       coalesce(s.credits_minor, 0) AS entries_credits_minor,
       coalesce(s.entry_count, 0)   AS entries_entry_count
  FROM accounts a
  JOIN account_balances b ON b.account_id = a.id
  LEFT JOIN (
        SELECT account_id,
               sum(amount_minor) FILTER (WHERE direction = 'debit')  AS debits_minor,
               sum(amount_minor) FILTER (WHERE direction = 'credit') AS credits_minor,
               count(*) AS entry_count
          FROM entries
         GROUP BY account_id
       ) s ON s.account_id = a.id
 WHERE (b.debits_minor, b.credits_minor, b.entry_count)
       IS DISTINCT FROM
       (coalesce(s.debits_minor, 0), coalesce(s.credits_minor, 0), coalesce(s.entry_count, 0));

-- The shape of the rows, checked where it matters: a card account has exactly one row, a
-- system account exactly 16. Always empty.
CREATE VIEW ledger_balance_stripe_drift AS
SELECT a.id AS account_id, a.code, a.kind, count(r.stripe) AS rows
  FROM accounts a
  LEFT JOIN account_balance_rows r ON r.account_id = a.id
 GROUP BY a.id, a.code, a.kind
HAVING count(r.stripe) <> CASE WHEN a.kind = 'system' THEN 16 ELSE 1 END
    OR count(r.stripe) FILTER (WHERE r.stripe = 0) <> 1;
