-- 0072: a card account remembers which generation of its Card's spec its freeze flag follows,
-- so that the operator's periodic card refresh can repair a freeze that kopf never handled
-- without ever undoing a newer one.
--
-- The gap it closes (bench/RESULTS.md, "Found by CI"): kopf calls the spec.state handler when
-- spec.state differs from the state it last recorded as handled, and records it with the
-- status patch that follows the handler. If that patch is lost (the API server unreachable for
-- longer than kopf's retries) after the ledger's freeze committed, and the user sets the state
-- back before kopf tries again, kopf sees no difference and calls nothing: the ledger stays
-- frozen while the Card says Active, or, the other way round, a card its owner froze goes on
-- approving purchases. The refresh compares each issued card's spec with its ledger account;
-- what it reads of the card can be older than a freeze a handler has just committed, so it acts
-- only for a card generation at least as new as the one the ledger's flag last followed, and the
-- update itself checks that again under the account's row lock (engine.set_frozen).
--
-- NULL: not recorded (accounts frozen or unfrozen before 0072, at issuance, or by the
-- operator's resume, which follows the status). Adding a nullable column without a default
-- neither scans nor rewrites accounts.

ALTER TABLE accounts
    ADD COLUMN state_generation bigint
        CONSTRAINT accounts_state_generation_positive CHECK (state_generation > 0);

COMMENT ON COLUMN accounts.state_generation IS
    'card accounts: metadata.generation of the Card whose spec.state frozen_at last followed (0072)';
