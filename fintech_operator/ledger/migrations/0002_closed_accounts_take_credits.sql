-- 0002_closed_accounts_take_credits: a closed card still takes money back.
--
-- A refund can arrive long after a card was closed (the merchant settles late). Refusing it
-- would leave the network owed money that never reaches the cardholder, so a closed account
-- accepts CREDIT entries (refunds, reversals of purchases) and refuses every DEBIT: nothing
-- new can be charged to it. The credit balance that results is money owed back to the
-- cardholder, paid out by operations. Everything else of 0001's entry trigger is unchanged.

CREATE OR REPLACE FUNCTION ledger_entry_before_insert() RETURNS trigger LANGUAGE plpgsql AS $$
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
        IF account_row.status <> 'open' AND NEW.direction <> 'credit' THEN
            RAISE EXCEPTION 'account % is closed: it takes credits (refunds) only',
                account_row.code
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
