-- 0069: the multi-column CHECKs of the authorization tables become ONE CHECK per table that
-- calls an immutable PL/pgSQL function (issue 13, the server's CPU per authorization and
-- capture). Every rule is kept, in the same order, and is still a table CHECK: enforced on
-- every INSERT and UPDATE whoever writes (with triggers off too), listed by \d, validated
-- against the existing rows when added.
--
-- Why: PostgreSQL rebuilds a table's CHECK constraints from their stored node trees
-- (stringToNode), plans them and compiles them (ExecPrepareExpr) at EVERY statement that
-- writes the table, and keeps them for that statement only (0062 and 0066 moved the
-- single-column ones into domains, read once per backend). Left were the rules that read
-- several columns: seven on authorizations (written by every authorization, capture and void)
-- and two on authorization_cards (its held amount moves with each of them), 8.8% of a
-- backend's CPU per authorization in a perf profile. A CHECK that is one function call is a
-- short node tree with a few column references; the function is compiled once per backend and
-- tests all its rules in ONE expression (PL/pgSQL prepares each expression of a function once
-- per transaction), looking for the broken one only when one is. Measured with
-- bench/backend_cpu_ab.py --below 69: 40 to 64 us less backend CPU per authorize + final
-- capture (dropping the nine CHECKs outright saved ~120 us: the calls cost the rest).
-- The same treatment of journals' two CHECKs and a spend window's start measured no better
-- than their CHECKs (a Posting-style journal +5 to +30 us, within the noise): they stay.
--
-- What: per table, one constraint and one function whose tests are the old CHECKs'
-- conditions, written the same way (a NULL condition passes, as in a CHECK), looked for in
-- the order PostgreSQL checked them (by constraint name):
--
--   authorizations_rules       authorization_rules_hold(...): approved_have_card, closed_by,
--                              consumed_by_captures, declined_hold_nothing, over_capture,
--                              resolve_at_most_held, resolved_fully
--   authorization_cards_rules  authorization_card_rules_hold(...): authorization_cards_check
--                              (the card's name is in its namespace), limit_shape
--
-- Errors: a broken rule is still check_violation (SQLSTATE 23514) naming the table
-- (diag table_name) and its constraint (diag constraint_name: authorizations_rules or
-- authorization_cards_rules); the message also names the rule, by its old constraint's name:
-- 'new row for relation "authorizations" violates check constraint "authorizations_rules"
-- (authorizations_over_capture)', and its DETAIL says the rule and the row's figures (no card
-- number is ever among them: the table holds none). No code maps these names; the ledger's own
-- functions never break them (they are the last line). A later CREATE OR REPLACE of a function
-- does not re-check existing rows: change a rule with a new constraint, as here.

-- authorizations -----------------------------------------------------------------------------

CREATE FUNCTION authorization_rules_hold(
    p_status text, p_account_id bigint, p_expires_at timestamptz, p_closed_by text,
    p_held bigint, p_captured bigint, p_consumed bigint, p_released bigint,
    p_over_capture_bps integer
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    broken text;
    rule text;
BEGIN
    -- Every rule at once first: one expression to compile per transaction (PL/pgSQL compiles
    -- each expression of a function once per transaction); which rule broke is looked for
    -- only when one did. A rule whose answer is NULL passes, as in a CHECK.
    IF (p_status = 'declined' OR (p_account_id IS NOT NULL AND p_expires_at IS NOT NULL))
       IS NOT FALSE
       AND ((p_status = 'closed') = (p_closed_by IS NOT NULL)) IS NOT FALSE
       AND (p_consumed <= p_captured) IS NOT FALSE
       AND (p_status <> 'declined' OR (p_held = 0 AND p_captured = 0 AND p_released = 0))
           IS NOT FALSE
       AND (p_captured * 10000 <= p_held * (10000 + p_over_capture_bps)) IS NOT FALSE
       AND (p_consumed + p_released <= p_held) IS NOT FALSE
       AND (p_status IN ('pending', 'declined') OR p_consumed + p_released = p_held)
           IS NOT FALSE
    THEN
        RETURN true;
    END IF;
    IF NOT (p_status = 'declined' OR (p_account_id IS NOT NULL AND p_expires_at IS NOT NULL))
    THEN
        broken := 'authorizations_approved_have_card';
        rule := 'an authorization that is not declined has a card account and an expiry';
    ELSIF NOT ((p_status = 'closed') = (p_closed_by IS NOT NULL)) THEN
        broken := 'authorizations_closed_by';
        rule := 'closed_by is set exactly when the status is closed';
    ELSIF NOT (p_consumed <= p_captured) THEN
        broken := 'authorizations_consumed_by_captures';
        rule := 'consumed_minor <= captured_minor';
    ELSIF NOT (p_status <> 'declined' OR (p_held = 0 AND p_captured = 0 AND p_released = 0))
    THEN
        broken := 'authorizations_declined_hold_nothing';
        rule := 'a declined authorization holds, captures and releases nothing';
    ELSIF NOT (p_captured * 10000 <= p_held * (10000 + p_over_capture_bps)) THEN
        broken := 'authorizations_over_capture';
        rule := 'captured_minor <= held_minor * (10000 + over_capture_bps) / 10000';
    ELSIF NOT (p_consumed + p_released <= p_held) THEN
        broken := 'authorizations_resolve_at_most_held';
        rule := 'consumed_minor + released_minor <= held_minor';
    ELSIF NOT (p_status IN ('pending', 'declined') OR p_consumed + p_released = p_held) THEN
        broken := 'authorizations_resolved_fully';
        rule := 'a closed or expired authorization has consumed or released all it held';
    ELSE
        RETURN true;
    END IF;
    RAISE EXCEPTION 'new row for relation "authorizations" violates check constraint '
                    '"authorizations_rules" (%)', broken
        USING ERRCODE = 'check_violation', CONSTRAINT = 'authorizations_rules',
              TABLE = 'authorizations',
              DETAIL = format('%s: %s; status %s, held %s, captured %s, consumed %s, '
                              'released %s, over_capture_bps %s, closed_by %s.',
                              broken, rule, p_status, p_held, p_captured, p_consumed,
                              p_released, p_over_capture_bps, coalesce(p_closed_by, 'null'));
END $$;

ALTER TABLE authorizations
    DROP CONSTRAINT authorizations_approved_have_card,
    DROP CONSTRAINT authorizations_closed_by,
    DROP CONSTRAINT authorizations_consumed_by_captures,
    DROP CONSTRAINT authorizations_declined_hold_nothing,
    DROP CONSTRAINT authorizations_over_capture,
    DROP CONSTRAINT authorizations_resolve_at_most_held,
    DROP CONSTRAINT authorizations_resolved_fully,
    ADD CONSTRAINT authorizations_rules CHECK (authorization_rules_hold(
        status, account_id, expires_at, closed_by, held_minor, captured_minor, consumed_minor,
        released_minor, over_capture_bps));

-- authorization_cards ------------------------------------------------------------------------

CREATE FUNCTION authorization_card_rules_hold(
    p_card text, p_namespace text, p_spend_limit_minor bigint, p_spend_interval text
) RETURNS boolean LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    broken text;
    rule text;
BEGIN
    IF (p_card LIKE p_namespace || '/%') IS NOT FALSE
       AND ((p_spend_limit_minor IS NULL) = (p_spend_interval IS NULL)) IS NOT FALSE
    THEN
        RETURN true;  -- Both at once first, as authorization_rules_hold does.
    END IF;
    IF NOT (p_card LIKE p_namespace || '/%') THEN
        broken := 'authorization_cards_check';
        rule := 'the card''s name is <namespace>/<name> of its own namespace';
    ELSIF NOT ((p_spend_limit_minor IS NULL) = (p_spend_interval IS NULL)) THEN
        broken := 'authorization_cards_limit_shape';
        rule := 'a card''s own limit has both an amount and an interval, or neither';
    ELSE
        RETURN true;
    END IF;
    RAISE EXCEPTION 'new row for relation "authorization_cards" violates check constraint '
                    '"authorization_cards_rules" (%)', broken
        USING ERRCODE = 'check_violation', CONSTRAINT = 'authorization_cards_rules',
              TABLE = 'authorization_cards',
              DETAIL = format('%s: %s; card %s, namespace %s, spend_limit_minor %s, '
                              'spend_interval %s.', broken, rule, p_card, p_namespace,
                              coalesce(p_spend_limit_minor::text, 'null'),
                              coalesce(p_spend_interval, 'null'));
END $$;

ALTER TABLE authorization_cards
    DROP CONSTRAINT authorization_cards_check,
    DROP CONSTRAINT authorization_cards_limit_shape,
    ADD CONSTRAINT authorization_cards_rules CHECK (authorization_card_rules_hold(
        card, namespace, spend_limit_minor, spend_interval));

