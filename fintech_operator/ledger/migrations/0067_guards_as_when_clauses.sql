-- 0067: the guards of the trigger-maintained tables decide in their WHEN clause (issue 13, the
-- server's CPU per capture and per Posting). The same writes are refused with the same SQLSTATE
-- and message; every other write goes through as before.
--
-- Why: account_balance_rows (0001, 0058), account_spend_windows (0054), settlement_references
-- (0057) and rewards_balances (0021) are written only by the ledger's own triggers; a BEFORE
-- ROW guard refuses any other INSERT, UPDATE or DELETE by testing pg_trigger_depth() < 2 inside
-- a PL/pgSQL function. That function was called for EVERY row the ledger's triggers wrote (two
-- balance stripes, three spend windows and a settlement reference per capture: about seven
-- PL/pgSQL trigger calls, each setting up a trigger frame and a copy of the row, to return it
-- unchanged). A WHEN clause is evaluated by the executor before the function would be called,
-- so the function now runs only when it refuses. Measured with bench/backend_cpu_ab.py
-- (--below 67, one connection per schema, operations alternated; two runs): a median of 33 to
-- 54 us less backend CPU per authorize + final capture and 20 to 32 us less per Posting-style
-- journal (bench/RESULTS.md, "The guards as WHEN clauses").
--
-- Equivalence: in a WHEN clause pg_trigger_depth() is the depth BEFORE this trigger fires
-- (0 for a client's own statement, 1 when a ledger trigger writes), one less than inside the
-- function, so "WHEN (pg_trigger_depth() < 1)" selects exactly the rows whose guard function
-- raised. The functions are unchanged and still test the depth themselves (a trigger created
-- again without its WHEN clause would still refuse exactly these writes). The triggers keep
-- their names (tests and the recon drift checks disable them by name), events and order.

DROP TRIGGER account_balances_guard ON account_balance_rows;
CREATE TRIGGER account_balances_guard
    BEFORE INSERT OR DELETE OR UPDATE ON account_balance_rows
    FOR EACH ROW WHEN (pg_trigger_depth() < 1) EXECUTE FUNCTION ledger_balance_guard();

DROP TRIGGER account_spend_windows_guard ON account_spend_windows;
CREATE TRIGGER account_spend_windows_guard
    BEFORE INSERT OR DELETE OR UPDATE ON account_spend_windows
    FOR EACH ROW WHEN (pg_trigger_depth() < 1) EXECUTE FUNCTION ledger_spend_guard();

DROP TRIGGER settlement_references_guard ON settlement_references;
CREATE TRIGGER settlement_references_guard
    BEFORE INSERT OR DELETE OR UPDATE ON settlement_references
    FOR EACH ROW WHEN (pg_trigger_depth() < 1)
    EXECUTE FUNCTION ledger_settlement_reference_guard();

DROP TRIGGER rewards_balances_guard ON rewards_balances;
CREATE TRIGGER rewards_balances_guard
    BEFORE INSERT OR UPDATE OR DELETE ON rewards_balances
    FOR EACH ROW WHEN (pg_trigger_depth() < 1) EXECUTE FUNCTION rewards_balance_guard();
