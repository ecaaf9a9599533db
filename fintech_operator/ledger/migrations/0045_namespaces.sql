-- 0045_namespaces: whose money each account and journal is (DESIGN.md invariant 10).
--
-- Every Kubernetes resource is namespaced, and a namespaced resource (a Posting, a
-- ReconciliationRun) must see and move only its own namespace's money. Until now the namespace
-- was only part of a card account's code (card:<namespace>/<name>:<CUR>) and idempotency keys
-- were global: a Posting's user-set idempotencyKey in one namespace could replay or block
-- another namespace's, and a reconciliation read every namespace's journals.
--
-- * accounts.namespace: a card account's namespace, derived from its immutable code by the
--   database itself (a generated column, so it can never disagree with the code); NULL for the
--   system accounts, which every namespace shares. Indexed: a namespace's accounts, then their
--   entries, are found without reading anyone else's.
-- * journals.namespace: the namespace whose money the journal moves, written by the ledger
--   engine (ledger.engine.post and reverse). NULL on journals written before this migration
--   and on raw SQL inserts; such a journal belongs to the namespace of the card accounts it
--   touches (readers fall back to that, see recon.store and ledger.engine).
-- * Idempotency keys are unique per namespace: UNIQUE NULLS NOT DISTINCT (namespace, key)
--   replaces UNIQUE (key). Keys of older journals (namespace NULL) stay unique among
--   themselves, and the engine still finds them for the namespace they belong to.
-- * A journal that names its namespace takes card entries of that namespace only (trigger).

-- The same rule as ledger.model.card_namespace: the part of the name before its first '/'.
ALTER TABLE accounts ADD COLUMN namespace text GENERATED ALWAYS AS (
    CASE WHEN kind = 'card' AND split_part(code, ':', 2) ~ '^[^/]+/'
         THEN split_part(split_part(code, ':', 2), '/', 1) END
) STORED;

CREATE INDEX accounts_namespace_idx ON accounts (namespace, id) WHERE namespace IS NOT NULL;

COMMENT ON COLUMN accounts.namespace IS
    'Namespace of a card account, from its code; NULL for the shared system accounts.';

ALTER TABLE journals ADD COLUMN namespace text
    CHECK (length(namespace) BETWEEN 1 AND 253 AND namespace !~ '[[:space:]/:]');

COMMENT ON COLUMN journals.namespace IS
    'Namespace whose money the journal moves (NULL: written before 0045; see its card entries).';

ALTER TABLE journals DROP CONSTRAINT journals_idempotency_key_key;
ALTER TABLE journals ADD CONSTRAINT journals_namespace_idempotency_key_key
    UNIQUE NULLS NOT DISTINCT (namespace, idempotency_key);

CREATE FUNCTION ledger_entry_same_namespace() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    account_namespace text;
    journal_namespace text;
BEGIN
    SELECT namespace INTO account_namespace FROM accounts WHERE id = NEW.account_id;
    IF account_namespace IS NULL THEN  -- A shared system account (or a missing one: FK).
        RETURN NEW;
    END IF;
    SELECT namespace INTO journal_namespace FROM journals WHERE id = NEW.journal_id;
    IF journal_namespace IS NOT NULL AND journal_namespace <> account_namespace THEN
        RAISE EXCEPTION 'journal % moves the money of namespace %, not of account % in %',
            NEW.journal_id, journal_namespace, NEW.account_id, account_namespace
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER entries_same_namespace BEFORE INSERT ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_same_namespace();
