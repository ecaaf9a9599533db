-- 0065: the settlement step of ledger_entry_after finds the journal's earlier entries through
-- the journal, not through the settlement account (issue 13, server CPU per capture).
--
-- "Is this the first settlement entry of its journal" (0057, kept by 0063) joined entries to
-- accounts on e.journal_id = NEW.journal_id AND e.id < NEW.id. PL/pgSQL plans it once per
-- backend (a generic plan after five calls), without knowing which account matches the code
-- pattern; it estimates a handful of entries per account (the table's average over 1,000
-- cards), so it starts from the settlement account (accounts_code_key) and ANDs two bitmaps:
-- entries_account_id_idx on (account_id = the settlement account, id < NEW.id), which reads
-- EVERY earlier entry of that account, and entries_journal_id_idx. Every capture and every
-- settled Posting thus read all the settlement account's history: 0.33 ms at 5,000 entries in
-- a scratch database (EXPLAIN ANALYZE), growing without bound (one more per capture), and 429
-- µs of a capture's 1,410 µs in a one-client pgbench run measured with pg_stat_statements
-- (track = all; bench/RESULTS.md, issue 13, "0065").
--
-- Now the journal's earlier entries are read first, in a sub-select that the planner cannot
-- merge into the join (OFFSET 0 keeps it a separate plan), so only entries_journal_id_idx is
-- used: a journal has a few entries. The condition is the same one (an earlier entry of the
-- same journal, on an account of kind 'system' whose code is a network settlement account's),
-- evaluated on the same rows under the same snapshot, so the answer is the same.
--
-- The spend step's window starts are authorization_spend_window_start's CASE (0054) written
-- inline: the same expression on the same value, without two PL/pgSQL calls per Purchase
-- debit. Everything else is 0063's function as it was, in the same order, with the same
-- SQLSTATEs and messages.

CREATE OR REPLACE FUNCTION ledger_entry_after() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    lane smallint := pg_backend_pid() % 16;
    settles boolean;
    journal_namespace text;
    journal_reference text;
    journal_kind text;
    journal_occurred_at timestamptz;
    reversed boolean;
    first_of_journal boolean;
BEGIN
    -- 0058: the running balance moves in this backend's stripe of the account, or in stripe 0
    -- when the account has only that one (a card account).
    IF lane <> 0 THEN
        UPDATE account_balance_rows
           SET debits_minor  = debits_minor
                               + CASE WHEN NEW.direction = 'debit' THEN NEW.amount_minor ELSE 0 END,
               credits_minor = credits_minor
                               + CASE WHEN NEW.direction = 'credit' THEN NEW.amount_minor ELSE 0 END,
               entry_count   = entry_count + 1,
               updated_at    = now()
         WHERE account_id = NEW.account_id AND stripe = lane;
        IF NOT FOUND THEN
            lane := 0;
        END IF;
    END IF;
    IF lane = 0 THEN
        UPDATE account_balance_rows
           SET debits_minor  = debits_minor
                               + CASE WHEN NEW.direction = 'debit' THEN NEW.amount_minor ELSE 0 END,
               credits_minor = credits_minor
                               + CASE WHEN NEW.direction = 'credit' THEN NEW.amount_minor ELSE 0 END,
               entry_count   = entry_count + 1,
               updated_at    = now()
         WHERE account_id = NEW.account_id AND stripe = 0;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'account % has no balance row', NEW.account_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
    END IF;

    settles := EXISTS (
        SELECT 1 FROM accounts a
         WHERE a.id = NEW.account_id AND a.kind = 'system'
           AND a.code LIKE 'system:network\_settlement:%');
    IF NOT settles AND NEW.direction <> 'debit' THEN
        RETURN NULL;  -- Neither a settlement entry nor a possible Purchase debit.
    END IF;
    SELECT j.namespace, j.reference, j.kind, j.occurred_at
      INTO journal_namespace, journal_reference, journal_kind, journal_occurred_at
      FROM journals j WHERE j.id = NEW.journal_id;

    -- 0057: an entry on a settlement account adds itself to its journal's reference, unless
    -- the journal has no reference, is a reversal or is reversed.
    IF settles AND journal_reference IS NOT NULL AND journal_kind <> 'Reversal' THEN
        reversed := EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = NEW.journal_id);
        IF NOT reversed THEN
            -- A journal counts as one posting however many settlement entries it has. The
            -- journal's earlier entries first (by entries_journal_id_idx), then their accounts:
            -- never the settlement account's whole history (see the header).
            first_of_journal := NOT EXISTS (
                SELECT 1
                  FROM (SELECT e.account_id
                          FROM entries e
                         WHERE e.journal_id = NEW.journal_id AND e.id < NEW.id
                        OFFSET 0) e
                  JOIN accounts a ON a.id = e.account_id
                 WHERE a.kind = 'system' AND a.code LIKE 'system:network\_settlement:%');
            INSERT INTO settlement_references AS s
                   (namespace, reference, amount_minor, currency, postings, first_at, last_at)
            VALUES (journal_namespace, journal_reference,
                    CASE NEW.direction WHEN 'credit' THEN NEW.amount_minor
                                       ELSE -NEW.amount_minor END,
                    NEW.currency::text, 1, journal_occurred_at, journal_occurred_at)
            ON CONFLICT ON CONSTRAINT settlement_references_key DO UPDATE
               SET amount_minor = s.amount_minor + EXCLUDED.amount_minor,
                   currency = settlement_currency_union(s.currency, EXCLUDED.currency),
                   postings = s.postings + CASE WHEN first_of_journal THEN 1 ELSE 0 END,
                   first_at = least(s.first_at, EXCLUDED.first_at),
                   last_at = greatest(s.last_at, EXCLUDED.last_at);
        END IF;
    END IF;

    -- 0054: a Purchase debit of a journal not reversed adds itself to its three spend windows
    -- (the starts are authorization_spend_window_start's, inline).
    IF NEW.direction = 'debit' AND journal_kind = 'Purchase' THEN
        IF reversed IS NULL THEN
            reversed := EXISTS (
                SELECT 1 FROM journals r WHERE r.reverses_journal_id = NEW.journal_id);
        END IF;
        IF NOT reversed THEN
            INSERT INTO account_spend_windows AS s
                   (account_id, spend_interval, window_start, spent_minor)
            VALUES (NEW.account_id, 'Daily',
                    date_trunc('day', NEW.posted_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                    NEW.amount_minor),
                   (NEW.account_id, 'Monthly',
                    date_trunc('month', NEW.posted_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC',
                    NEW.amount_minor),
                   (NEW.account_id, 'Lifetime', '-infinity', NEW.amount_minor)
            ON CONFLICT (account_id, spend_interval, window_start)
            DO UPDATE SET spent_minor = s.spent_minor + EXCLUDED.spent_minor;
        END IF;
    END IF;
    RETURN NULL;
END $$;
