-- 0063: one BEFORE and one AFTER row trigger on entries instead of six (issue 13, ledger CPU).
--
-- Every entry ran three BEFORE INSERT triggers (entries_before_insert of 0001/0002: currency,
-- open account, journal of this transaction, posted_at; entries_refuse_frozen_debit of 0041;
-- entries_same_namespace of 0045) and three AFTER INSERT triggers (entries_after_insert of
-- 0001/0058: the balance stripe; entries_after_insert_settlement_reference of 0057;
-- entries_after_insert_spend of 0054). Between them they read the entry's account three times
-- and its journal four times, and each call paid PL/pgSQL's entry and exit; a profile put them
-- at 22% of a capture's backend CPU (bench/RESULTS.md, issue 13). Now ledger_entry_before()
-- and ledger_entry_after() do the same checks and the same writes, in the same order, with the
-- same SQLSTATEs and messages, reading the account and the journal once on each side.
--
-- Why the same order is the old one: PostgreSQL fires a table's row triggers of one timing in
-- the order of their names, so the BEFORE checks ran before_insert (currency, then closed,
-- then the journal's transaction), refuse_frozen_debit, same_namespace, and for each row the
-- AFTER effects ran after_insert (balance), after_insert_settlement_reference, then
-- after_insert_spend. The AFTER events of a multi-row INSERT are queued row by row (all of
-- row 1's triggers, then row 2's), so one AFTER function per row runs the same effects in the
-- same sequence. The foreign-key checks of entries (RI_ConstraintTrigger_*, sorted before any
-- lower-case name) still run before ledger_entry_after for each row.
--
-- Why reading each row once is the same as reading it three or four times:
--   * journals are append-only (journals_append_only), so every column read is fixed;
--   * an account's code, kind, currency and namespace (generated from the code) are immutable
--     (accounts_before_update); status and frozen_at can change, but only by an UPDATE, which
--     waits for the row lock every posting and every capture takes on its card account before
--     inserting entries. Without that lock (raw SQL), the six triggers' separate reads already
--     raced with a concurrent freeze; one read is one consistent point of that race;
--   * the journal's reversal can only be inserted in the journal's own transaction while its
--     entries are still arriving (entries join a journal only in its creating transaction), so
--     "is it reversed" cannot change between the settlement and the spend steps of one entry.
-- Nothing relied on statement-level effects: the settlement step's "first settlement entry of
-- this journal" (e.id < NEW.id) is evaluated per row after the whole statement, as before.
--
-- The balance stripe: the backend's lane is tried first and stripe 0 when the account has no
-- such stripe (a card account): the same rows as 0058's probe-then-update, one probe fewer for
-- a system account. entries_append_only and entries_no_truncate are unchanged.

DROP TRIGGER entries_before_insert ON entries;
DROP TRIGGER entries_refuse_frozen_debit ON entries;
DROP TRIGGER entries_same_namespace ON entries;
DROP TRIGGER entries_after_insert ON entries;
DROP TRIGGER entries_after_insert_settlement_reference ON entries;
DROP TRIGGER entries_after_insert_spend ON entries;

DROP FUNCTION ledger_entry_before_insert();
DROP FUNCTION ledger_entry_refuse_frozen_debit();
DROP FUNCTION ledger_entry_same_namespace();
DROP FUNCTION ledger_entry_after_insert();
DROP FUNCTION ledger_settlement_reference_after_entry();
DROP FUNCTION ledger_spend_after_debit();

CREATE FUNCTION ledger_entry_before() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    account_code text;
    account_currency char(3);
    account_status text;
    account_frozen_at timestamptz;
    account_namespace text;
    journal_xid xid8;
    journal_posted_at timestamptz;
    journal_namespace text;
BEGIN
    SELECT a.code, a.currency, a.status, a.frozen_at, a.namespace
      INTO account_code, account_currency, account_status, account_frozen_at, account_namespace
      FROM accounts a WHERE a.id = NEW.account_id;
    IF FOUND THEN  -- A missing account is reported by the foreign key.
        -- 0001: an entry is in its account's currency.
        IF account_currency <> NEW.currency THEN
            RAISE EXCEPTION 'entry currency % differs from currency % of account %',
                NEW.currency, account_currency, account_code
                USING ERRCODE = 'check_violation';
        END IF;
        -- 0002: a closed account takes credits (late refunds) only.
        IF account_status <> 'open' AND NEW.direction <> 'credit' THEN
            RAISE EXCEPTION 'account % is closed: it takes credits (refunds) only',
                account_code
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    -- 0001: entries join a journal only in the transaction that creates it.
    SELECT j.created_xid, j.posted_at, j.namespace
      INTO journal_xid, journal_posted_at, journal_namespace
      FROM journals j WHERE j.id = NEW.journal_id;
    IF FOUND AND journal_xid <> pg_current_xact_id() THEN
        RAISE EXCEPTION 'journal % was committed earlier: entries join a journal only in the '
            'transaction that creates it', NEW.journal_id
            USING ERRCODE = 'restrict_violation';
    END IF;
    -- A missing journal is reported by the foreign key; now() only keeps NOT NULL quiet.
    NEW.posted_at := coalesce(journal_posted_at, now());
    -- 0041: a frozen account takes credits (refunds, payments) only.
    IF NEW.direction = 'debit' AND account_frozen_at IS NOT NULL THEN
        RAISE EXCEPTION 'account % is frozen: it takes credits (refunds, payments) only',
            NEW.account_id
            USING ERRCODE = 'check_violation';
    END IF;
    -- 0045: a journal that names its namespace takes card entries of that namespace only
    -- (a shared system account, or a missing one, has no namespace).
    IF account_namespace IS NOT NULL AND journal_namespace IS NOT NULL
       AND journal_namespace <> account_namespace THEN
        RAISE EXCEPTION 'journal % moves the money of namespace %, not of account % in %',
            NEW.journal_id, journal_namespace, NEW.account_id, account_namespace
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE FUNCTION ledger_entry_after() RETURNS trigger LANGUAGE plpgsql AS $$
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
            -- A journal counts as one posting however many settlement entries it has.
            first_of_journal := NOT EXISTS (
                SELECT 1 FROM entries e JOIN accounts a ON a.id = e.account_id
                 WHERE e.journal_id = NEW.journal_id AND e.id < NEW.id AND a.kind = 'system'
                   AND a.code LIKE 'system:network\_settlement:%');
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

    -- 0054: a Purchase debit of a journal not reversed adds itself to its three spend windows.
    IF NEW.direction = 'debit' AND journal_kind = 'Purchase' THEN
        IF reversed IS NULL THEN
            reversed := EXISTS (
                SELECT 1 FROM journals r WHERE r.reverses_journal_id = NEW.journal_id);
        END IF;
        IF NOT reversed THEN
            INSERT INTO account_spend_windows AS s
                   (account_id, spend_interval, window_start, spent_minor)
            VALUES (NEW.account_id, 'Daily',
                    authorization_spend_window_start('Daily', NEW.posted_at), NEW.amount_minor),
                   (NEW.account_id, 'Monthly',
                    authorization_spend_window_start('Monthly', NEW.posted_at), NEW.amount_minor),
                   (NEW.account_id, 'Lifetime', '-infinity', NEW.amount_minor)
            ON CONFLICT (account_id, spend_interval, window_start)
            DO UPDATE SET spent_minor = s.spent_minor + EXCLUDED.spent_minor;
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER entries_before BEFORE INSERT ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_before();
CREATE TRIGGER entries_after AFTER INSERT ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_after();
