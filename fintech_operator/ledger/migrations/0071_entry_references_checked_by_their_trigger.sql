-- 0071: an entry's account and journal are checked by entries_before, on the rows it already
-- reads, instead of by two foreign keys (issue 13: the capture's and the Posting's CPU, and a
-- MultiXact per capture).
--
-- A foreign key's check is a query of its own per entry (SELECT ... FOR KEY SHARE of the
-- referenced row), run after entries_before has just read the same two rows. The lock is what
-- cost most: every capture and every Purchase credits the one network settlement account, so
-- concurrent transactions held KEY SHARE locks on that one accounts row together, and
-- PostgreSQL recorded each such group as a new MultiXact (pg_waldump over 10 s of 8 clients
-- authorizing and capturing: 7,599 MultiXact/CREATE_ID records for 7,875 pairs before, none
-- after), which every later reader of that row resolves. bench/backend_cpu_ab.py --candidate
-- (one backend, 4 rounds of 1,000): -36 to -50 us per authorize + final capture, -80 to -124
-- us per Posting-style Purchase (bench/RESULTS.md, issue 13, "0071").
--
-- What the keys guaranteed still holds, enforced by the database:
--   * an entry's account and journal exist when it is written: entries_before refuses it
--     otherwise, with the foreign key's SQLSTATE (23503 foreign_key_violation), constraint
--     name, message and detail, after every other rule of that trigger, the journal's first
--     (the order the keys' triggers fired in);
--   * they go on existing: accounts are never deleted or truncated and their id never
--     changes (0001's accounts_no_delete, accounts_no_truncate, accounts_before_update);
--     journals are append-only (journals_append_only, journals_no_truncate). So no row an
--     entry names can go away after it is written, which is what the keys' locks protected;
--   * a NULL is refused by NOT NULL, as before.
-- Like the keys, the check does not run with session_replication_role = replica.
-- Dropping a foreign key neither scans nor rewrites entries: on a ledger of any size this
-- migration holds the tables' locks for an instant.
-- tests/integration/test_entry_references.py compares every case with the schema below 0071.

ALTER TABLE entries
    DROP CONSTRAINT entries_account_id_fkey,
    DROP CONSTRAINT entries_journal_id_fkey;

COMMENT ON COLUMN entries.account_id IS
    'accounts.id; checked by entries_before (0071), accounts are never deleted';
COMMENT ON COLUMN entries.journal_id IS
    'journals.id; checked by entries_before (0071), journals are append-only';

CREATE OR REPLACE FUNCTION ledger_entry_before() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    account_found boolean;
    account_code text;
    account_currency char(3);
    account_status text;
    account_frozen_at timestamptz;
    account_namespace text;
    journal_found boolean;
    journal_xid xid8;
    journal_posted_at timestamptz;
    journal_namespace text;
BEGIN
    -- The account and the journal in one statement; either may be missing (reported last, as
    -- the foreign keys did), so each is an outer join to one row.
    SELECT a.id IS NOT NULL, a.code, a.currency, a.status, a.frozen_at, a.namespace,
           j.id IS NOT NULL, j.created_xid, j.posted_at, j.namespace
      INTO account_found, account_code, account_currency, account_status, account_frozen_at,
           account_namespace, journal_found, journal_xid, journal_posted_at, journal_namespace
      FROM (SELECT 1) AS one
      LEFT JOIN accounts a ON a.id = NEW.account_id
      LEFT JOIN journals j ON j.id = NEW.journal_id;
    IF account_found THEN  -- A missing account is reported last.
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
    IF journal_found AND journal_xid <> pg_current_xact_id() THEN
        RAISE EXCEPTION 'journal % was committed earlier: entries join a journal only in the '
            'transaction that creates it', NEW.journal_id
            USING ERRCODE = 'restrict_violation';
    END IF;
    -- A missing journal is reported last; now() only keeps NOT NULL quiet.
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
    -- 0071: the two references, checked where the foreign keys checked them (after every rule
    -- above, the journal's first), with their SQLSTATE, constraint name and message. A NULL
    -- is left to NOT NULL, as a foreign key leaves it.
    IF NEW.journal_id IS NOT NULL AND NOT journal_found THEN
        RAISE EXCEPTION 'insert or update on table "entries" violates foreign key constraint '
            '"entries_journal_id_fkey"'
            USING ERRCODE = 'foreign_key_violation', TABLE = 'entries',
                  CONSTRAINT = 'entries_journal_id_fkey',
                  DETAIL = format('Key (journal_id)=(%s) is not present in table "journals".',
                                  NEW.journal_id);
    END IF;
    IF NEW.account_id IS NOT NULL AND NOT account_found THEN
        RAISE EXCEPTION 'insert or update on table "entries" violates foreign key constraint '
            '"entries_account_id_fkey"'
            USING ERRCODE = 'foreign_key_violation', TABLE = 'entries',
                  CONSTRAINT = 'entries_account_id_fkey',
                  DETAIL = format('Key (account_id)=(%s) is not present in table "accounts".',
                                  NEW.account_id);
    END IF;
    RETURN NEW;
END $$;
