-- 0065: less server CPU per journal and per entry, for the same checks and effects (issue 13,
-- the capture's PostgreSQL CPU). Measured with pg_stat_statements (track = all) and
-- track_functions on a one-client pgbench of authorize + final capture (bench/RESULTS.md,
-- issue 13, "0065").
--
-- 1. The settlement step's "first settlement entry of this journal" (0057, kept by 0063) joined
--    entries to accounts on e.journal_id = NEW.journal_id AND e.id < NEW.id. PL/pgSQL plans it
--    once per backend (a generic plan), not knowing which account matches the code pattern;
--    when the statistics of entries are stale (a new ledger, or before autovacuum's ANALYZE
--    catches up) the planner starts from the settlement account and ANDs two bitmaps, one of
--    them entries_account_id_idx on (the settlement account, id < NEW.id): EVERY earlier entry
--    of that account, one more per capture. It was 429 us of a 1,410 us capture in a scratch
--    run, 0.33 ms at 5,000 entries (EXPLAIN ANALYZE). Now the journal's earlier entries are
--    read in a sub-select the planner cannot merge into the join (OFFSET 0), so only
--    entries_journal_id_idx is used (a journal has a few entries), whatever the statistics.
--    The condition is the same: an earlier entry of the same journal on an account of kind
--    'system' whose code is a network settlement account's.
--
-- 2. Fewer SQL statements per entry (each pays the executor's start-up and a snapshot, 10-15 us
--    here): ledger_entry_before reads the account and the journal in one statement (was two);
--    ledger_entry_after moves its balance stripe in one UPDATE that picks the stripe (was a
--    probe of the backend's stripe, then stripe 0, for every card entry), and reads whether
--    the account settles, the journal's columns and whether the journal is reversed in one
--    statement (was up to four). A card entry of a capture runs three statements (was six),
--    its settlement entry four (was six). The values read are the same: accounts' kind and
--    code never change (accounts_before_update), journals are append-only, and a journal's
--    reversal can only join it in its creating transaction (0063's header), so reading
--    "reversed" before the steps that use it gives the answer they read after.
--
-- 3. The journals' two triggers tested "reverses_journal_id IS NOT NULL AND EXISTS (...)" in
--    one IF: PL/pgSQL runs such a condition as a full query (executor start-up of the
--    reversal-mirror check's four index scans) even when the journal reverses nothing, 11 us
--    and 5 us per journal here. The IS NOT NULL test now guards the query in an outer IF: the
--    same truth value, and the query runs exactly when it mattered.
--
-- The spend step's window starts are authorization_spend_window_start's CASE (0054) written
-- inline: the same expression on the same value, without two PL/pgSQL calls per Purchase
-- debit. Every check keeps its order, SQLSTATE and message (tests/integration/
-- test_entry_triggers.py compares the schemas below 0063, below 0065 and with it).

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
    -- The account and the journal in one statement; either may be missing (the foreign keys
    -- report that), so each is an outer join to one row.
    SELECT a.id IS NOT NULL, a.code, a.currency, a.status, a.frozen_at, a.namespace,
           j.id IS NOT NULL, j.created_xid, j.posted_at, j.namespace
      INTO account_found, account_code, account_currency, account_status, account_frozen_at,
           account_namespace, journal_found, journal_xid, journal_posted_at, journal_namespace
      FROM (SELECT 1) AS one
      LEFT JOIN accounts a ON a.id = NEW.account_id
      LEFT JOIN journals j ON j.id = NEW.journal_id;
    IF account_found THEN  -- A missing account is reported by the foreign key.
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
    -- when the account has only that one (a card account): the highest of the two that exists.
    UPDATE account_balance_rows
       SET debits_minor  = debits_minor
                           + CASE WHEN NEW.direction = 'debit' THEN NEW.amount_minor ELSE 0 END,
           credits_minor = credits_minor
                           + CASE WHEN NEW.direction = 'credit' THEN NEW.amount_minor ELSE 0 END,
           entry_count   = entry_count + 1,
           updated_at    = now()
     WHERE account_id = NEW.account_id
       AND stripe = (SELECT max(r.stripe) FROM account_balance_rows r
                      WHERE r.account_id = NEW.account_id AND r.stripe IN (0, lane));
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % has no balance row', NEW.account_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;

    -- Whether the account settles, the journal's columns and whether it is reversed, at once
    -- (a journal missing here is impossible: the foreign key was checked before this trigger).
    SELECT EXISTS (SELECT 1 FROM accounts a
                    WHERE a.id = NEW.account_id AND a.kind = 'system'
                      AND a.code LIKE 'system:network\_settlement:%'),
           j.namespace, j.reference, j.kind, j.occurred_at,
           EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = NEW.journal_id)
      INTO settles, journal_namespace, journal_reference, journal_kind, journal_occurred_at,
           reversed
      FROM (SELECT 1) AS one
      LEFT JOIN journals j ON j.id = NEW.journal_id;
    IF NOT settles AND NEW.direction <> 'debit' THEN
        RETURN NULL;  -- Neither a settlement entry nor a possible Purchase debit.
    END IF;

    -- 0057: an entry on a settlement account adds itself to its journal's reference, unless
    -- the journal has no reference, is a reversal or is reversed.
    IF settles AND journal_reference IS NOT NULL AND journal_kind <> 'Reversal' THEN
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
    IF NEW.direction = 'debit' AND journal_kind = 'Purchase' AND NOT reversed THEN
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
    RETURN NULL;
END $$;

-- 0001's journal triggers, with the reversal-only queries behind an IF of their own.
CREATE OR REPLACE FUNCTION ledger_journal_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.posted_at := now();
    NEW.created_xid := pg_current_xact_id();
    IF NEW.reverses_journal_id IS NOT NULL THEN
        IF EXISTS (
            SELECT 1 FROM journals WHERE id = NEW.reverses_journal_id AND kind = 'Reversal'
        ) THEN
            RAISE EXCEPTION 'journal % is a reversal and cannot be reversed',
                NEW.reverses_journal_id
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE OR REPLACE FUNCTION ledger_journal_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    entry_total bigint;
    unbalanced_currency text;
BEGIN
    SELECT count(*) INTO entry_total FROM entries WHERE journal_id = NEW.id;
    IF entry_total < 2 THEN
        RAISE EXCEPTION 'journal % has % entries; a journal needs at least two', NEW.id, entry_total
            USING ERRCODE = 'check_violation';
    END IF;
    SELECT currency INTO unbalanced_currency
      FROM entries
     WHERE journal_id = NEW.id
     GROUP BY currency
    HAVING sum(CASE WHEN direction = 'debit' THEN amount_minor ELSE -amount_minor END) <> 0
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'journal % does not balance in %: debits must equal credits',
            NEW.id, unbalanced_currency
            USING ERRCODE = 'check_violation';
    END IF;
    -- A reversal exactly undoes its original: the same lines with every direction swapped.
    IF NEW.reverses_journal_id IS NOT NULL THEN
        IF EXISTS (
            (SELECT account_id, direction, amount_minor, currency
               FROM entries WHERE journal_id = NEW.id
             EXCEPT ALL
             SELECT account_id, CASE direction WHEN 'debit' THEN 'credit' ELSE 'debit' END,
                    amount_minor, currency
               FROM entries WHERE journal_id = NEW.reverses_journal_id)
            UNION ALL
            (SELECT account_id, CASE direction WHEN 'debit' THEN 'credit' ELSE 'debit' END,
                    amount_minor, currency
               FROM entries WHERE journal_id = NEW.reverses_journal_id
             EXCEPT ALL
             SELECT account_id, direction, amount_minor, currency
               FROM entries WHERE journal_id = NEW.id)
        ) THEN
            RAISE EXCEPTION 'reversal % does not mirror journal %', NEW.id,
                NEW.reverses_journal_id
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NULL;
END $$;
