-- 0001_ledger: the double-entry ledger, its outbox, the rewards ledger and consumer bookkeeping.
--
-- The database enforces the ledger's invariants by itself, so that no code path (including a raw
-- SQL session) can break them; the Python engine checks the same rules first to give clear errors:
--   * every journal balances per currency and has at least two entries, and a reversal mirrors
--     its original exactly (deferred constraint trigger, checked at COMMIT);
--   * journals and entries are append-only: UPDATE, DELETE and TRUNCATE raise; entries can only be
--     added by the transaction that created their journal, so a committed journal never changes;
--   * amounts are positive bigint minor units; an entry's currency equals its account's currency;
--   * account_balances is maintained by a trigger in the same transaction as the entries, and
--     cannot be written directly; the view ledger_balance_drift proves it against the entries.
-- Released migrations are never edited (the runner refuses a changed checksum): add a new file.

-- Accounts -------------------------------------------------------------------------------------

CREATE TABLE accounts (
    id             bigserial   PRIMARY KEY,
    -- <kind>:<name>:<CUR>, e.g. card:default/alice-card:USD, system:network_settlement:USD.
    code           text        NOT NULL UNIQUE,
    kind           text        NOT NULL CHECK (kind IN ('card', 'system')),
    normal_balance text        NOT NULL CHECK (normal_balance IN ('debit', 'credit')),
    currency       char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status         text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
    metadata       jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at     timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz,
    -- The code names its kind and currency, so a code can never be reused for another currency.
    CONSTRAINT accounts_code_shape CHECK (
        length(code) <= 512 AND code !~ '[[:space:]]' AND code LIKE kind || ':_%:' || currency
    ),
    CONSTRAINT accounts_closed_at CHECK ((status = 'closed') = (closed_at IS NOT NULL))
);

COMMENT ON TABLE accounts IS
    'Card receivables (debit-normal: balance = what the cardholder owes) and the issuer''s system '
    'accounts, one per currency: network_settlement (credit-normal liability to the card network), '
    'cash (debit-normal asset), fee_revenue (credit-normal income), rewards_expense (debit-normal '
    'expense), rewards_liability (credit-normal liability for unredeemed rewards), adjustments '
    '(credit-normal counterpart of manual corrections).';

-- One row per account, created with the account and moved only by the entries trigger.
CREATE TABLE account_balances (
    account_id    bigint      PRIMARY KEY REFERENCES accounts (id),
    debits_minor  bigint      NOT NULL DEFAULT 0 CHECK (debits_minor >= 0),
    credits_minor bigint      NOT NULL DEFAULT 0 CHECK (credits_minor >= 0),
    entry_count   bigint      NOT NULL DEFAULT 0 CHECK (entry_count >= 0),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Journals and entries -------------------------------------------------------------------------

CREATE TABLE journals (
    id                  bigserial   PRIMARY KEY,
    idempotency_key     text        NOT NULL UNIQUE
                                    CHECK (length(idempotency_key) BETWEEN 1 AND 512),
    -- sha256 of the canonical JSON of the request (rules.request_hash).
    request_hash        text        NOT NULL CHECK (request_hash ~ '^[0-9a-f]{64}$'),
    kind                text        NOT NULL CHECK (
        kind IN ('Purchase', 'Refund', 'Payment', 'Fee', 'Adjustment', 'Reversal')
    ),
    reference           text        CHECK (length(reference) BETWEEN 1 AND 512),
    occurred_at         timestamptz NOT NULL,
    -- Forced to now() by a trigger: spend windows are measured on it and must not be backdated.
    posted_at           timestamptz NOT NULL DEFAULT now(),
    -- UNIQUE: a journal is reversed at most once.
    reverses_journal_id bigint      UNIQUE REFERENCES journals (id),
    metadata            jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    -- The creating transaction (forced by a trigger): entries may only join their journal in it.
    created_xid         xid8        NOT NULL DEFAULT pg_current_xact_id(),
    CONSTRAINT journals_reversal_shape CHECK ((kind = 'Reversal') = (reverses_journal_id IS NOT NULL)),
    CONSTRAINT journals_not_self_reversal CHECK (reverses_journal_id <> id)
);

CREATE INDEX journals_reference_idx ON journals (reference) WHERE reference IS NOT NULL;

CREATE TABLE entries (
    id           bigserial PRIMARY KEY,
    journal_id   bigint    NOT NULL REFERENCES journals (id),
    account_id   bigint    NOT NULL REFERENCES accounts (id),
    direction    text      NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount_minor bigint    NOT NULL CHECK (amount_minor > 0),
    currency     char(3)   NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    -- The journal's posted_at, copied by a trigger: a spend window then reads only its own
    -- range of an account's debits, however long the account's history is.
    posted_at    timestamptz NOT NULL
);

-- Statements read one account's entries newest first; spend windows read its recent debits.
CREATE INDEX entries_account_id_idx ON entries (account_id, id);
CREATE INDEX entries_journal_id_idx ON entries (journal_id);
CREATE INDEX entries_debits_posted_at_idx ON entries (account_id, posted_at)
    WHERE direction = 'debit';

-- Append-only ------------------------------------------------------------------------------------

CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on % is refused: the ledger is append-only; post a reversal instead',
        TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END $$;

CREATE TRIGGER journals_append_only BEFORE UPDATE OR DELETE ON journals
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER journals_no_truncate BEFORE TRUNCATE ON journals
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER account_balances_no_truncate BEFORE TRUNCATE ON account_balances
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Accounts: identity is immutable, closing is final and needs a zero balance. ----------------------

CREATE FUNCTION ledger_account_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.code, NEW.kind, NEW.normal_balance, NEW.currency, NEW.created_at)
        IS DISTINCT FROM
       (OLD.id, OLD.code, OLD.kind, OLD.normal_balance, OLD.currency, OLD.created_at) THEN
        RAISE EXCEPTION 'account %: id, code, kind, normal_balance, currency and created_at are immutable',
            OLD.code USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status = 'closed' AND NEW.status <> 'closed' THEN
        RAISE EXCEPTION 'account % is closed, and closing is final', OLD.code
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF OLD.status = 'open' AND NEW.status = 'closed' THEN
        IF NEW.kind = 'system' THEN
            RAISE EXCEPTION 'system account % cannot be closed', OLD.code
                USING ERRCODE = 'restrict_violation';
        END IF;
        IF EXISTS (SELECT 1 FROM account_balances
                   WHERE account_id = OLD.id AND debits_minor <> credits_minor) THEN
            RAISE EXCEPTION 'account % has a non-zero balance and cannot be closed', OLD.code
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER accounts_before_update BEFORE UPDATE ON accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_account_before_update();

CREATE FUNCTION ledger_account_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_balances (account_id) VALUES (NEW.id);
    RETURN NULL;
END $$;

CREATE TRIGGER accounts_after_insert AFTER INSERT ON accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_account_after_insert();

-- Balances may only be written from inside a trigger (the two above and below): a direct
-- statement runs at trigger depth 0, so its own row trigger sees depth 1.
CREATE FUNCTION ledger_balance_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION '% on account_balances is refused: balances move only with entries', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER account_balances_guard BEFORE INSERT OR UPDATE OR DELETE ON account_balances
    FOR EACH ROW EXECUTE FUNCTION ledger_balance_guard();

-- Journals: server-side times and transaction id, no reversal of a reversal. ----------------------

CREATE FUNCTION ledger_journal_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.posted_at := now();
    NEW.created_xid := pg_current_xact_id();
    IF NEW.reverses_journal_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM journals WHERE id = NEW.reverses_journal_id AND kind = 'Reversal'
    ) THEN
        RAISE EXCEPTION 'journal % is a reversal and cannot be reversed', NEW.reverses_journal_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER journals_before_insert BEFORE INSERT ON journals
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_before_insert();

-- Entries: currency of the account, open account, journal of this transaction, its time. ---------

CREATE FUNCTION ledger_entry_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    account_row accounts%ROWTYPE;
    journal_xid xid8;
    journal_posted_at timestamptz;
BEGIN
    SELECT * INTO account_row FROM accounts WHERE id = NEW.account_id;
    IF FOUND THEN  -- A missing account is reported by the foreign key.
        IF account_row.currency <> NEW.currency THEN
            RAISE EXCEPTION 'entry currency % differs from currency % of account %',
                NEW.currency, account_row.currency, account_row.code
                USING ERRCODE = 'check_violation';
        END IF;
        IF account_row.status <> 'open' THEN
            RAISE EXCEPTION 'account % is closed', account_row.code
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    SELECT created_xid, posted_at INTO journal_xid, journal_posted_at
      FROM journals WHERE id = NEW.journal_id;
    IF FOUND AND journal_xid <> pg_current_xact_id() THEN
        RAISE EXCEPTION 'journal % was committed earlier: entries join a journal only in the '
            'transaction that creates it', NEW.journal_id
            USING ERRCODE = 'restrict_violation';
    END IF;
    -- A missing journal is reported by the foreign key; now() only keeps NOT NULL quiet.
    NEW.posted_at := coalesce(journal_posted_at, now());
    RETURN NEW;
END $$;

CREATE TRIGGER entries_before_insert BEFORE INSERT ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_before_insert();

-- Running balances move in the same transaction as the entries.
CREATE FUNCTION ledger_entry_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE account_balances
       SET debits_minor  = debits_minor
                           + CASE WHEN NEW.direction = 'debit' THEN NEW.amount_minor ELSE 0 END,
           credits_minor = credits_minor
                           + CASE WHEN NEW.direction = 'credit' THEN NEW.amount_minor ELSE 0 END,
           entry_count   = entry_count + 1,
           updated_at    = now()
     WHERE account_id = NEW.account_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'account % has no balance row', NEW.account_id
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER entries_after_insert AFTER INSERT ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_after_insert();

-- Invariant 1, checked at COMMIT once every entry of the journal is in. One check per journal
-- suffices because entries can only be added by the transaction that created the journal.
CREATE FUNCTION ledger_journal_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
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
    IF NEW.reverses_journal_id IS NOT NULL AND EXISTS (
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
        RAISE EXCEPTION 'reversal % does not mirror journal %', NEW.id, NEW.reverses_journal_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER journals_balanced AFTER INSERT ON journals
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_journal_balanced();

-- Reconciliation: accounts whose running balance disagrees with their entries. Always empty.
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

-- Outbox: events written in the posting's transaction, relayed to Kafka afterwards. -------------

CREATE TABLE outbox (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    topic        text        NOT NULL CHECK (length(topic) BETWEEN 1 AND 512),
    key          text,
    payload      jsonb       NOT NULL,
    headers      jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(headers) = 'object'),
    -- The journal whose transaction wrote the event, when there is one.
    journal_id   bigint      REFERENCES journals (id),
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

-- The relay scans unpublished rows in id order; published rows leave the index.
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;

-- The relay may only mark a row published; what was committed with the journal never changes.
CREATE FUNCTION ledger_outbox_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.id, NEW.event_id, NEW.topic, NEW.key, NEW.payload, NEW.headers, NEW.journal_id,
        NEW.created_at)
        IS DISTINCT FROM
       (OLD.id, OLD.event_id, OLD.topic, OLD.key, OLD.payload, OLD.headers, OLD.journal_id,
        OLD.created_at) THEN
        RAISE EXCEPTION 'outbox rows are immutable except published_at'
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER outbox_before_update BEFORE UPDATE ON outbox
    FOR EACH ROW EXECUTE FUNCTION ledger_outbox_before_update();

-- Rewards and consumers ------------------------------------------------------------------------

-- Points applied from posting events; UNIQUE(event_id) applies each event at most once.
CREATE TABLE rewards_ledger (
    id           bigserial   PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    card         text        NOT NULL CHECK (card ~ '^[^/[:space:]]+/[^/[:space:]]+$'),  -- namespace/name
    journal_id   bigint      NOT NULL REFERENCES journals (id),
    kind         text        NOT NULL CHECK (kind IN ('accrual', 'reversal')),
    points       bigint      NOT NULL,  -- signed: reversals are negative
    amount_minor bigint      NOT NULL CHECK (amount_minor >= 0),
    currency     char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    rate_bps     integer     NOT NULL CHECK (rate_bps BETWEEN 0 AND 10000),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT rewards_ledger_points_sign CHECK (
        (kind = 'accrual' AND points >= 0) OR (kind = 'reversal' AND points <= 0)
    )
);

CREATE INDEX rewards_ledger_card_idx ON rewards_ledger (card, id);
CREATE INDEX rewards_ledger_journal_id_idx ON rewards_ledger (journal_id);

CREATE TRIGGER rewards_ledger_append_only BEFORE UPDATE OR DELETE ON rewards_ledger
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER rewards_ledger_no_truncate BEFORE TRUNCATE ON rewards_ledger
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Consumers record each applied event in the transaction that applies it (Invariant 5).
CREATE TABLE processed_events (
    consumer     text        NOT NULL CHECK (length(consumer) BETWEEN 1 AND 128),
    event_id     uuid        NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
