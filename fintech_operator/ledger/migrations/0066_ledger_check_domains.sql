-- 0066: the single-column CHECKs of the ledger's core tables become DOMAIN types, as 0062 did for
-- the authorization tables (issue 13, the server's CPU per capture). Every rule is kept; every
-- value accepted before is accepted now, and nothing else.
--
-- Why: PostgreSQL rebuilds a table's CHECK constraints from their stored node trees
-- (stringToNode) and plans and compiles them (ExecPrepareExpr) at EVERY INSERT or UPDATE
-- statement on the table; the executor keeps them for one statement only. A capture posts a
-- Purchase journal through journals and entries, whose triggers move account_balance_rows,
-- account_spend_windows and settlement_references, and writes outbox; a Posting writes the
-- same tables. In a perf profile of the authorization mix this was about 8% of the server's
-- CPU; dropping these tables' CHECKs on a scratch copy saved about 110-130 us of backend CPU per
-- capture. With this migration a backend spends 55-85 us less per authorize + final capture
-- and about 55 us less per Posting-style journal (bench/RESULTS.md, "The ledger tables'
-- CHECKs as domains"); the four multi-column CHECKs that stay are most of the rest. A domain's
-- constraints are read and planned once per backend (the type cache) and are checked only
-- where a value is coerced to the domain: every column of an INSERT, and on UPDATE only the
-- columns the statement assigns (a balance stripe's UPDATE then checks its three running
-- totals, not again its stripe, and an outbox row's publication checks nothing).
--
-- What: one domain per field, named for it, with exactly the condition of the table CHECK it
-- replaces (0001, 0045, 0054, 0057, 0058, 0060). Where 0062 already has a domain with the
-- IDENTICAL rule it is reused: currency_code (entries.currency, char(3) '^[A-Z]{3}$'),
-- sha256_hex_text (journals.request_hash, 64 lowercase hex digits since 0060), jsonb_object
-- (journals.metadata, outbox.headers) and nonnegative_amount_minor (the balance rows' debits
-- and credits, a spend window's spent amount: >= 0). 0062's positive_amount_minor (1 to 10^15)
-- is stricter than entries' "amount_minor > 0", so entries get entry_amount_minor; a balance
-- row's entry_count is a count, not an amount, so it gets its own balance_entry_count.
--
-- What stays a table constraint: every CHECK that reads two columns or more
-- (journals_reversal_shape, journals_not_self_reversal, account_spend_windows_start_shape,
-- settlement_references_times), NOT NULL, the columns' defaults, indexes, foreign keys and
-- triggers.
--
-- Errors: a value a domain refuses raises check_violation (SQLSTATE 23514) as before, with
-- "value for domain <domain> violates check constraint "<domain>_check"" (entry_amount_minor
-- for an entry's amount, so a message still names amount_minor). No code maps the constraint
-- names dropped here (the engine maps only the unique index journals_reverses_journal_id_key,
-- untouched). One thing differs, as with 0062: a domain checks a value when the row is built,
-- before the BEFORE ROW triggers, where a table CHECK ran after them. A statement that breaks
-- a column rule AND a trigger's rule is now refused by the domain instead of the trigger: an
-- entry of amount 0 on a closed account (check_violation either way, another message), or a
-- write the guards refuse anyway (journals and entries are append-only; balance rows, spend
-- windows and settlement references move only by trigger) of a value a domain refuses
-- (check_violation where it was restrict_violation). A statement that breaks one rule only
-- gets the same refusal as before.
--
-- How (as 0062): each new domain is created WITHOUT its constraint and the columns are
-- switched to it; a domain without constraints is binary-coercible with its base type, so the
-- tables are not rewritten and their indexes are kept, except journals_reference_idx:
-- PostgreSQL keeps no partial index over a column whose type changes, so that one index of
-- journals (the non-NULL references) is built again. The four reused domains have
-- constraints, and switching a column to a domain WITH a constraint rewrites the table and
-- rebuilds its indexes (entries and journals are the largest tables of the ledger): their
-- constraints are dropped for the switch and added back unchanged, under the same names, in
-- this same transaction, so no other transaction ever sees a domain without its rule. Adding
-- a domain's constraint checks every stored value of every column of that domain (0062's
-- columns too), one scan per table. The views over switched columns (account_balances with
-- its INSTEAD OF trigger and comment, ledger_balance_drift, ledger_balance_stripe_drift,
-- account_spend_drift, settlement_postings, settlement_reference_totals,
-- settlement_reference_drift) are dropped first and created again as their migrations made
-- them (a column a view reads cannot change type); grants.py grants them again on every
-- migration run. A view column that passes a switched column on as it is now has the domain
-- as its type (settlement_postings' namespace and reference, settlement_reference_totals'
-- namespace and reference, settlement_reference_drift's running_currency and
-- running_postings); clients read a domain as its base type (text, bigint), so their rows do
-- not change. ALTER COLUMN TYPE drops the column's planner statistics even without a
-- rewrite, and an unchanged table would not be analyzed again soon: the switched columns are
-- analyzed at the end.

-- The new domains, without their constraints yet (see "How" above). -----------------------------

-- A journal's idempotency key, its external reference (a settlement file's id) and its
-- namespace: three names so that a refusal says which field was wrong.
CREATE DOMAIN idempotency_key_text AS text;
CREATE DOMAIN journal_reference_text AS text;
CREATE DOMAIN journal_namespace_text AS text;
CREATE DOMAIN journal_kind_text AS text;
-- An entry's amount: positive, the direction carries the sign (no upper bound, unlike 0062's
-- positive_amount_minor).
CREATE DOMAIN entry_amount_minor AS bigint;
CREATE DOMAIN entry_direction_text AS text;
-- A balance row's number of entries, and its stripe (0058: 0 to 15).
CREATE DOMAIN balance_entry_count AS bigint;
CREATE DOMAIN balance_stripe AS smallint;
-- A running spend window's interval: a card's spend intervals but PerTransaction.
CREATE DOMAIN spend_window_interval_text AS text;
-- A settlement reference's currency, or its sorted currencies joined by '+'.
CREATE DOMAIN settlement_currency_text AS text;
-- How many journals post to a settlement reference.
CREATE DOMAIN settlement_posting_count AS bigint;
CREATE DOMAIN outbox_topic_text AS text;

-- The reused domains lose their constraint until the columns are switched (see "How"). -------

ALTER DOMAIN currency_code DROP CONSTRAINT currency_code_check;
ALTER DOMAIN sha256_hex_text DROP CONSTRAINT sha256_hex_text_check;
ALTER DOMAIN jsonb_object DROP CONSTRAINT jsonb_object_check;
ALTER DOMAIN nonnegative_amount_minor DROP CONSTRAINT nonnegative_amount_minor_check;

-- The views over switched columns go, the readers of another view first. ---------------------

DROP VIEW settlement_reference_drift;
DROP VIEW settlement_reference_totals;
DROP VIEW settlement_postings;
DROP VIEW ledger_balance_drift;
DROP VIEW account_balances;  -- and its INSTEAD OF trigger account_balances_refused
DROP VIEW ledger_balance_stripe_drift;
DROP VIEW account_spend_drift;

-- The columns move to the domains; their table CHECKs go. ------------------------------------

ALTER TABLE journals
    DROP CONSTRAINT journals_idempotency_key_check,
    DROP CONSTRAINT journals_request_hash_check,
    DROP CONSTRAINT journals_kind_check,
    DROP CONSTRAINT journals_reference_check,
    DROP CONSTRAINT journals_metadata_check,
    DROP CONSTRAINT journals_namespace_check,
    ALTER COLUMN idempotency_key TYPE idempotency_key_text,
    ALTER COLUMN request_hash TYPE sha256_hex_text,
    ALTER COLUMN kind TYPE journal_kind_text,
    ALTER COLUMN reference TYPE journal_reference_text,
    ALTER COLUMN metadata TYPE jsonb_object,
    ALTER COLUMN namespace TYPE journal_namespace_text;

ALTER TABLE entries
    DROP CONSTRAINT entries_direction_check,
    DROP CONSTRAINT entries_amount_minor_check,
    DROP CONSTRAINT entries_currency_check,
    ALTER COLUMN direction TYPE entry_direction_text,
    ALTER COLUMN amount_minor TYPE entry_amount_minor,
    ALTER COLUMN currency TYPE currency_code;

-- The table was account_balances before 0058: its CHECKs kept that name.
ALTER TABLE account_balance_rows
    DROP CONSTRAINT account_balances_debits_minor_check,
    DROP CONSTRAINT account_balances_credits_minor_check,
    DROP CONSTRAINT account_balances_entry_count_check,
    DROP CONSTRAINT account_balance_rows_stripe_check,
    ALTER COLUMN debits_minor TYPE nonnegative_amount_minor,
    ALTER COLUMN credits_minor TYPE nonnegative_amount_minor,
    ALTER COLUMN entry_count TYPE balance_entry_count,
    ALTER COLUMN stripe TYPE balance_stripe;

ALTER TABLE account_spend_windows
    DROP CONSTRAINT account_spend_windows_spend_interval_check,
    DROP CONSTRAINT account_spend_windows_spent_minor_check,
    ALTER COLUMN spend_interval TYPE spend_window_interval_text,
    ALTER COLUMN spent_minor TYPE nonnegative_amount_minor;

ALTER TABLE settlement_references
    DROP CONSTRAINT settlement_references_currency_check,
    DROP CONSTRAINT settlement_references_postings_check,
    ALTER COLUMN currency TYPE settlement_currency_text,
    ALTER COLUMN postings TYPE settlement_posting_count;

ALTER TABLE outbox
    DROP CONSTRAINT outbox_topic_check,
    DROP CONSTRAINT outbox_headers_check,
    ALTER COLUMN topic TYPE outbox_topic_text,
    ALTER COLUMN headers TYPE jsonb_object;

-- The rules, each exactly the condition of the table CHECK it replaces; the reused domains get
-- theirs back as 0062 wrote them. A NULL passes a domain's CHECK as it passed the table's
-- (journals.reference and journals.namespace may be NULL); NOT NULL stays on the columns. ----

ALTER DOMAIN currency_code ADD CONSTRAINT currency_code_check
    CHECK (VALUE ~ '^[A-Z]{3}$');
ALTER DOMAIN sha256_hex_text ADD CONSTRAINT sha256_hex_text_check
    CHECK (length(VALUE) = 64 AND VALUE ~ '^[0-9a-f]+$');
ALTER DOMAIN jsonb_object ADD CONSTRAINT jsonb_object_check
    CHECK (jsonb_typeof(VALUE) = 'object');
ALTER DOMAIN nonnegative_amount_minor ADD CONSTRAINT nonnegative_amount_minor_check
    CHECK (VALUE >= 0);

ALTER DOMAIN idempotency_key_text ADD CONSTRAINT idempotency_key_text_check
    CHECK (length(VALUE) BETWEEN 1 AND 512);
ALTER DOMAIN journal_reference_text ADD CONSTRAINT journal_reference_text_check
    CHECK (length(VALUE) BETWEEN 1 AND 512);
ALTER DOMAIN journal_namespace_text ADD CONSTRAINT journal_namespace_text_check
    CHECK (length(VALUE) BETWEEN 1 AND 253 AND VALUE !~ '[[:space:]/:]');
ALTER DOMAIN journal_kind_text ADD CONSTRAINT journal_kind_text_check
    CHECK (VALUE IN ('Purchase', 'Refund', 'Payment', 'Fee', 'Adjustment', 'Reversal'));
ALTER DOMAIN entry_amount_minor ADD CONSTRAINT entry_amount_minor_check
    CHECK (VALUE > 0);
ALTER DOMAIN entry_direction_text ADD CONSTRAINT entry_direction_text_check
    CHECK (VALUE IN ('debit', 'credit'));
ALTER DOMAIN balance_entry_count ADD CONSTRAINT balance_entry_count_check
    CHECK (VALUE >= 0);
ALTER DOMAIN balance_stripe ADD CONSTRAINT balance_stripe_check
    CHECK (VALUE BETWEEN 0 AND 15);
ALTER DOMAIN spend_window_interval_text ADD CONSTRAINT spend_window_interval_text_check
    CHECK (VALUE IN ('Daily', 'Monthly', 'Lifetime'));
ALTER DOMAIN settlement_currency_text ADD CONSTRAINT settlement_currency_text_check
    CHECK (VALUE ~ '^[A-Z]{3}(\+[A-Z]{3})*$');
ALTER DOMAIN settlement_posting_count ADD CONSTRAINT settlement_posting_count_check
    CHECK (VALUE >= 1);
ALTER DOMAIN outbox_topic_text ADD CONSTRAINT outbox_topic_text_check
    CHECK (length(VALUE) BETWEEN 1 AND 512);

-- The views, as 0054, 0057 and 0058 made them. -----------------------------------------------

-- 0058
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

CREATE TRIGGER account_balances_refused INSTEAD OF INSERT OR UPDATE OR DELETE ON account_balances
    FOR EACH ROW EXECUTE FUNCTION ledger_balances_view_refused();

-- 0058
CREATE VIEW ledger_balance_drift AS
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

-- 0058
CREATE VIEW ledger_balance_stripe_drift AS
SELECT a.id AS account_id, a.code, a.kind, count(r.stripe) AS rows
  FROM accounts a
  LEFT JOIN account_balance_rows r ON r.account_id = a.id
 GROUP BY a.id, a.code, a.kind
HAVING count(r.stripe) <> CASE WHEN a.kind = 'system' THEN 16 ELSE 1 END
    OR count(r.stripe) FILTER (WHERE r.stripe = 0) <> 1;

-- 0054
CREATE VIEW account_spend_drift AS
WITH posted AS (
    SELECT e.account_id, w.spend_interval, w.window_start, sum(e.amount_minor) AS spent_minor
      FROM entries e
      JOIN journals j ON j.id = e.journal_id
     CROSS JOIN LATERAL (VALUES
            ('Daily', authorization_spend_window_start('Daily', e.posted_at)),
            ('Monthly', authorization_spend_window_start('Monthly', e.posted_at)),
            ('Lifetime', '-infinity'::timestamptz)) AS w (spend_interval, window_start)
     WHERE e.direction = 'debit'
       AND j.kind = 'Purchase'
       AND NOT EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = j.id)
     GROUP BY 1, 2, 3
)
SELECT coalesce(s.account_id, p.account_id) AS account_id,
       coalesce(s.spend_interval, p.spend_interval) AS spend_interval,
       coalesce(s.window_start, p.window_start) AS window_start,
       coalesce(s.spent_minor, 0) AS running_minor,
       coalesce(p.spent_minor, 0) AS entries_minor
  FROM account_spend_windows s
  FULL JOIN posted p
    ON p.account_id = s.account_id
   AND p.spend_interval = s.spend_interval
   AND p.window_start = s.window_start
 WHERE coalesce(s.spent_minor, 0) <> coalesce(p.spent_minor, 0);

-- 0057
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

-- 0057
CREATE VIEW settlement_reference_totals AS
SELECT namespace, reference, sum(amount_minor)::bigint AS amount_minor,
       string_agg(DISTINCT currency, '+' ORDER BY currency) AS currency,
       count(DISTINCT journal_id) AS postings, min(occurred_at) AS first_at,
       max(occurred_at) AS last_at
  FROM settlement_postings
 GROUP BY namespace, reference;

-- 0057
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

-- The switched columns' statistics, which ALTER COLUMN TYPE dropped (see "How"). -------------

ANALYZE journals (idempotency_key, request_hash, kind, reference, metadata, namespace);
ANALYZE entries (direction, amount_minor, currency);
ANALYZE account_balance_rows (debits_minor, credits_minor, entry_count, stripe);
ANALYZE account_spend_windows (spend_interval, spent_minor);
ANALYZE settlement_references (currency, postings);
ANALYZE outbox (topic, headers);
