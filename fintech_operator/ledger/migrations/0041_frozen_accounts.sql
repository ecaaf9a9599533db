-- 0041_frozen_accounts: a frozen card takes no new charges, enforced by the database.
--
-- The operator checks a card's phase before it posts, but that is its own view of the Card. A
-- freeze is recorded here too, in the transaction that announces it (card.state_changed), and
-- the row lock every posting takes on its card account orders the two: a posting that locks
-- the account after the freeze committed sees it. A frozen account refuses DEBIT entries
-- (purchases, fees, debit adjustments, reversals of payments) and takes CREDIT entries
-- (refunds, payments), as a frozen card does.

ALTER TABLE accounts ADD COLUMN frozen_at timestamptz;
ALTER TABLE accounts ADD CONSTRAINT accounts_frozen_cards_only
    CHECK (frozen_at IS NULL OR kind = 'card');

COMMENT ON COLUMN accounts.frozen_at IS
    'Set while the card is Frozen: the account then takes credits only (refunds, payments).';

CREATE FUNCTION ledger_entry_refuse_frozen_debit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.direction = 'debit' AND EXISTS (
        SELECT 1 FROM accounts WHERE id = NEW.account_id AND frozen_at IS NOT NULL
    ) THEN
        RAISE EXCEPTION 'account % is frozen: it takes credits (refunds, payments) only',
            NEW.account_id
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER entries_refuse_frozen_debit BEFORE INSERT ON entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entry_refuse_frozen_debit();
