-- 0061: two index entries fewer per journal with a debit (every capture, every Posting), for
-- the same guarantees (issue 13, performance).
--
-- * journals.reverses_journal_id was UNIQUE: a journal is reversed at most once. A UNIQUE
--   constraint on a nullable column indexes its NULLs too, so every journal that reverses
--   nothing (all of them but reversals) added an entry to that index. A unique index on the
--   non-NULL values only enforces exactly the same rule (NULLs never conflict either way) and
--   keeps the name, so a second reversal still fails with a unique violation on
--   journals_reverses_journal_id_key (engine._insert_journal turns it into AlreadyReversed).
--   Lookups by reverses_journal_id = <id> use it as before: an equality implies IS NOT NULL.
-- * entries_debits_posted_at_idx (account, posted_at) of debits served the spend-window sum
--   over entries that decisions and the Posting guard made before 0054; since then they read
--   account_spend_windows, and nothing on a hot path reads debits by time (the risk and
--   compliance windows filter on journals.posted_at and find entries by account). The
--   reference function authorization_spent still works, through entries_account_id_idx.

ALTER TABLE journals DROP CONSTRAINT journals_reverses_journal_id_key;
CREATE UNIQUE INDEX journals_reverses_journal_id_key ON journals (reverses_journal_id)
    WHERE reverses_journal_id IS NOT NULL;

DROP INDEX entries_debits_posted_at_idx;
