-- 0057_settlement_reference_summary: what the ledger settled per reference, kept running
-- (issue 14).
--
-- The settlement check of a reconciliation run compares a network's file, one record per
-- reference, with the ledger's settlement postings: entries on a network settlement account
-- (system:network_settlement:<CUR>) of journals that carry a reference, are not reversals
-- and are not reversed. Until now every run joined journals to entries and aggregated them by
-- reference: two million rows read and grouped for a million postings, on every run. This
-- table keeps that aggregate running, like account_balances keeps balances: one row per
-- (namespace, reference), moved by triggers in the same transaction as the entries and the
-- reversals that change it, writable only from those triggers. A run then reads one compact
-- row per reference of its namespace and window and matches it to the file with one join.
--
-- Keyed by namespace (the journal's, DESIGN.md invariant 10: a run sees only its namespace's
-- money) and reference, not by settlement account: the accounts are one per currency, and a
-- run classifies a reference whole, so a reference settled in two currencies must stay one
-- row (its currency is then the sorted list, 'EUR+USD', which never equals a record's). The
-- namespace is NULL for journals written before 0045, which name none; a namespaced run whose
-- namespace has such journals reads the entries as before (recon.store), since their
-- namespace is known only from their card entries.
--
-- A journal is reversed at most once and entries join a journal only in its creating
-- transaction (0001), so an entry adds itself once, when posted; a reversal recomputes its
-- original's reference from the entries (rare, and by the journals_reference_idx index). The
-- view settlement_reference_drift proves the table against the entries (always empty).

CREATE TABLE settlement_references (
    namespace    text,
    reference    text        NOT NULL,
    -- Credits minus debits on the settlement accounts: what the issuer owes the network.
    amount_minor bigint      NOT NULL,
    -- The currency, or the sorted currencies joined by '+' when there are several.
    currency     text        NOT NULL CHECK (currency ~ '^[A-Z]{3}(\+[A-Z]{3})*$'),
    -- Journals (postings) with an entry on a settlement account.
    postings     bigint      NOT NULL CHECK (postings >= 1),
    first_at     timestamptz NOT NULL,
    last_at      timestamptz NOT NULL,
    CONSTRAINT settlement_references_key UNIQUE NULLS NOT DISTINCT (namespace, reference),
    CONSTRAINT settlement_references_times CHECK (first_at <= last_at)
);

COMMENT ON TABLE settlement_references IS
    'Settlement postings per namespace and reference (not reversals, not reversed); moved only '
    'by the entries and journals triggers (settlement_reference_drift proves it).';

-- The settlement postings, as the check has always defined them; the backfill, the recompute
-- after a reversal and the drift view read them through this one definition.
CREATE VIEW settlement_postings AS
SELECT j.namespace, j.reference, j.id AS journal_id, j.occurred_at, e.currency::text AS currency,
       CASE e.direction WHEN 'credit' THEN e.amount_minor ELSE -e.amount_minor END AS amount_minor
  FROM journals j
  JOIN entries e ON e.journal_id = j.id
  JOIN accounts a ON a.id = e.account_id
 WHERE a.kind = 'system' AND a.code LIKE 'system:network\_settlement:%'
   AND j.reference IS NOT NULL
   AND j.kind <> 'Reversal'
   AND NOT EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = j.id);

CREATE VIEW settlement_reference_totals AS
SELECT namespace, reference, sum(amount_minor)::bigint AS amount_minor,
       string_agg(DISTINCT currency, '+' ORDER BY currency) AS currency,
       count(DISTINCT journal_id) AS postings, min(occurred_at) AS first_at,
       max(occurred_at) AS last_at
  FROM settlement_postings
 GROUP BY namespace, reference;

-- The backfill: every settlement posting already in the ledger.
INSERT INTO settlement_references
       (namespace, reference, amount_minor, currency, postings, first_at, last_at)
SELECT namespace, reference, amount_minor, currency, postings, first_at, last_at
  FROM settlement_reference_totals;

-- 'USD' and 'EUR' give 'EUR+USD'; a currency already listed leaves the list as it is.
CREATE FUNCTION settlement_currency_union(p_list text, p_currency text)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_currency = ANY (string_to_array(p_list, '+')) THEN p_list
                ELSE (SELECT string_agg(c, '+' ORDER BY c)
                        FROM unnest(string_to_array(p_list, '+') || p_currency) AS c) END
$$;

-- An entry on a settlement account adds itself to its journal's reference. (A journal
-- reversed before its own entries arrive, in one transaction, adds nothing: the reversal's
-- recompute found nothing, and the sum over entries would not count it either.)
CREATE FUNCTION ledger_settlement_reference_after_entry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    journal_row record;
    first_of_journal boolean;
BEGIN
    PERFORM 1 FROM accounts a
     WHERE a.id = NEW.account_id AND a.kind = 'system'
       AND a.code LIKE 'system:network\_settlement:%';
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    SELECT j.namespace, j.reference, j.kind, j.occurred_at INTO journal_row
      FROM journals j WHERE j.id = NEW.journal_id;
    IF journal_row.reference IS NULL OR journal_row.kind = 'Reversal'
       OR EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = NEW.journal_id) THEN
        RETURN NULL;
    END IF;
    -- A journal counts as one posting however many settlement entries it has.
    first_of_journal := NOT EXISTS (
        SELECT 1 FROM entries e JOIN accounts a ON a.id = e.account_id
         WHERE e.journal_id = NEW.journal_id AND e.id < NEW.id AND a.kind = 'system'
           AND a.code LIKE 'system:network\_settlement:%');
    INSERT INTO settlement_references AS s
           (namespace, reference, amount_minor, currency, postings, first_at, last_at)
    VALUES (journal_row.namespace, journal_row.reference,
            CASE NEW.direction WHEN 'credit' THEN NEW.amount_minor ELSE -NEW.amount_minor END,
            NEW.currency::text, 1, journal_row.occurred_at, journal_row.occurred_at)
    ON CONFLICT ON CONSTRAINT settlement_references_key DO UPDATE
       SET amount_minor = s.amount_minor + EXCLUDED.amount_minor,
           currency = settlement_currency_union(s.currency, EXCLUDED.currency),
           postings = s.postings + CASE WHEN first_of_journal THEN 1 ELSE 0 END,
           first_at = least(s.first_at, EXCLUDED.first_at),
           last_at = greatest(s.last_at, EXCLUDED.last_at);
    RETURN NULL;
END $$;

CREATE TRIGGER entries_after_insert_settlement_reference AFTER INSERT ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_settlement_reference_after_entry();

-- A reversal takes its original out: the original's reference is recomputed from the entries
-- (the reversal is already in journals, so the original no longer counts); nothing left, no row.
CREATE FUNCTION ledger_settlement_reference_after_reversal() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    original record;
BEGIN
    SELECT j.namespace, j.reference INTO original
      FROM journals j WHERE j.id = NEW.reverses_journal_id;
    IF original.reference IS NULL THEN
        RETURN NULL;
    END IF;
    DELETE FROM settlement_references s
     WHERE s.namespace IS NOT DISTINCT FROM original.namespace
       AND s.reference = original.reference;
    INSERT INTO settlement_references
           (namespace, reference, amount_minor, currency, postings, first_at, last_at)
    SELECT original.namespace, original.reference, sum(p.amount_minor),
           string_agg(DISTINCT p.currency, '+' ORDER BY p.currency), count(DISTINCT p.journal_id),
           min(p.occurred_at), max(p.occurred_at)
      FROM settlement_postings p
     WHERE p.reference = original.reference
       AND p.namespace IS NOT DISTINCT FROM original.namespace
    HAVING count(*) > 0;
    RETURN NULL;
END $$;

CREATE TRIGGER journals_after_insert_settlement_reference AFTER INSERT ON journals
    FOR EACH ROW WHEN (NEW.reverses_journal_id IS NOT NULL)
    EXECUTE FUNCTION ledger_settlement_reference_after_reversal();

-- Written only by the two triggers above (a direct statement runs at trigger depth 0, so this
-- guard sees depth 1); never truncated.
CREATE FUNCTION ledger_settlement_reference_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION '% on settlement_references is refused: it moves only with entries',
            TG_OP USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER settlement_references_guard
    BEFORE INSERT OR UPDATE OR DELETE ON settlement_references
    FOR EACH ROW EXECUTE FUNCTION ledger_settlement_reference_guard();
CREATE TRIGGER settlement_references_no_truncate BEFORE TRUNCATE ON settlement_references
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Reconciliation: references whose running row disagrees with the entries. Always empty.
CREATE VIEW settlement_reference_drift AS
SELECT coalesce(s.namespace, t.namespace) AS namespace,
       coalesce(s.reference, t.reference) AS reference,
       s.amount_minor AS running_minor, t.amount_minor AS entries_minor,
       s.currency AS running_currency, t.currency AS entries_currency,
       s.postings AS running_postings, t.postings AS entries_postings
  FROM settlement_references s
  FULL JOIN settlement_reference_totals t
    ON coalesce(t.namespace, '') = coalesce(s.namespace, '') AND t.reference = s.reference
 WHERE (s.amount_minor, s.currency, s.postings, s.first_at, s.last_at)
       IS DISTINCT FROM (t.amount_minor, t.currency, t.postings, t.first_at, t.last_at);
