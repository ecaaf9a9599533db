-- 0053: a capture's journal names the namespace whose money it moves (invariant 10, 0045).
--
-- 0050 was written beside 0045 and inserted capture journals with no namespace, which readers
-- treat as "written before 0045" (the slower fallback through the card entries). The card
-- account's namespace is derived by the database from its code, so the journal takes it from
-- there; the entry trigger of 0045 then also refuses any card entry of another namespace.
CREATE OR REPLACE FUNCTION authorization_post_capture(
    p_capture_id text, p_account_id bigint, p_amount bigint, p_currency text,
    p_authorization_id text, p_metadata jsonb
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    settlement_code text := 'system:network_settlement:' || p_currency;
    settlement_id bigint;
    journal_id bigint;
    card_namespace text;
    key text := 'authorization-capture/' || p_capture_id;
BEGIN
    SELECT namespace INTO STRICT card_namespace FROM accounts WHERE id = p_account_id;
    SELECT id INTO settlement_id FROM accounts WHERE code = settlement_code;
    IF NOT FOUND THEN
        INSERT INTO accounts (code, kind, normal_balance, currency)
        VALUES (settlement_code, 'system', 'credit', p_currency) ON CONFLICT (code) DO NOTHING;
        SELECT id INTO settlement_id FROM accounts WHERE code = settlement_code;
    END IF;
    INSERT INTO journals (idempotency_key, request_hash, kind, reference, occurred_at, metadata,
                          namespace)
    VALUES (key,
            authorization_hash(jsonb_build_object('key', key, 'amount', p_amount,
                                                  'currency', p_currency)),
            'Purchase', p_authorization_id, now(), p_metadata, card_namespace)
    RETURNING id INTO journal_id;
    -- Account-id order, as the engine inserts: balance rows are then locked in one global order.
    INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)
    SELECT journal_id, l.account_id, l.direction, p_amount, p_currency
      FROM (VALUES (p_account_id, 'debit'), (settlement_id, 'credit')) AS l(account_id, direction)
     ORDER BY l.account_id;
    RETURN journal_id;
END $$;
