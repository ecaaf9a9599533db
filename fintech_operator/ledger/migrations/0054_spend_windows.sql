-- 0054_spend_windows: what each account spent per spend window, kept running (issue 13).
--
-- A Daily, Monthly or Lifetime spend limit needs "Purchase debits of the card posted in the
-- window, not reversed". 0050-0052 summed them from entries at every decision (twice per
-- answer), a cost that grows with the card's history in the window. This table keeps that sum
-- running, like account_balances keeps balances: one row per account, interval and window
-- (the UTC day, the UTC month, and one 'Lifetime' row starting at -infinity), moved by
-- triggers in the same transaction as the entries and reversals that change it, and writable
-- only from those triggers.
--
-- Why one row per window rather than one "current window" per account: what a window spent
-- is then exact for any moment, however transactions around midnight interleave: the spend of
-- the window containing T is the sum of the rows of that interval starting at or after T's
-- window start (one row; two only for a reader whose transaction began before midnight while
-- another card transaction committed after it, exactly as the sum over entries would count).
--
-- A journal is reversed at most once (journals.reverses_journal_id is UNIQUE) and entries join
-- a journal only in its creating transaction (0001), so a Purchase debit is added once, when
-- posted, and taken out once, when its journal is reversed. The view account_spend_drift
-- proves the table against the entries (always empty).

CREATE TABLE account_spend_windows (
    account_id     bigint      NOT NULL REFERENCES accounts (id),
    spend_interval text        NOT NULL CHECK (spend_interval IN ('Daily', 'Monthly', 'Lifetime')),
    -- The window's start: UTC midnight of the day, UTC midnight of the month's first day, or
    -- -infinity for Lifetime (the shapes authorization_spend_window_start returns).
    window_start   timestamptz NOT NULL,
    -- Purchase debits posted in the window and not reversed.
    spent_minor    bigint      NOT NULL CHECK (spent_minor >= 0),
    PRIMARY KEY (account_id, spend_interval, window_start),
    CONSTRAINT account_spend_windows_start_shape CHECK (
        CASE spend_interval
            WHEN 'Lifetime' THEN window_start = '-infinity'
            WHEN 'Daily' THEN window_start = date_trunc('day', window_start AT TIME ZONE 'UTC')
                                              AT TIME ZONE 'UTC'
            ELSE window_start = date_trunc('month', window_start AT TIME ZONE 'UTC')
                                AT TIME ZONE 'UTC'
        END
    )
);

COMMENT ON TABLE account_spend_windows IS
    'Purchase debits per account and spend window, not reversed; moved only by the entries and '
    'journals triggers (account_spend_drift proves it).';

-- The start of the window of ``p_interval`` containing ``p_at`` (Lifetime: -infinity; NULL for
-- PerTransaction or no limit, which count no history). PL/pgSQL so callers keep its plan.
CREATE FUNCTION authorization_spend_window_start(p_interval text, p_at timestamptz)
RETURNS timestamptz LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    RETURN CASE p_interval
        WHEN 'Daily' THEN date_trunc('day', p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        WHEN 'Monthly' THEN date_trunc('month', p_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
        WHEN 'Lifetime' THEN '-infinity'::timestamptz
    END;
END $$;

-- The backfill: every Purchase debit already posted and not reversed, into its three windows.
INSERT INTO account_spend_windows (account_id, spend_interval, window_start, spent_minor)
SELECT e.account_id, w.spend_interval, w.window_start, sum(e.amount_minor)
  FROM entries e
  JOIN journals j ON j.id = e.journal_id
 CROSS JOIN LATERAL (VALUES
        ('Daily', authorization_spend_window_start('Daily', e.posted_at)),
        ('Monthly', authorization_spend_window_start('Monthly', e.posted_at)),
        ('Lifetime', '-infinity'::timestamptz)) AS w (spend_interval, window_start)
 WHERE e.direction = 'debit'
   AND j.kind = 'Purchase'
   AND NOT EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = j.id)
 GROUP BY 1, 2, 3;

-- A Purchase debit adds itself to its three windows. (A journal reversed before its own
-- entries arrive, in one transaction, adds nothing: the reversal's trigger found nothing to
-- take out, and the sum over entries would not count it either.)
CREATE FUNCTION ledger_spend_after_debit() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM journals j
     WHERE j.id = NEW.journal_id AND j.kind = 'Purchase'
       AND NOT EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = j.id);
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    INSERT INTO account_spend_windows AS s (account_id, spend_interval, window_start, spent_minor)
    VALUES (NEW.account_id, 'Daily', authorization_spend_window_start('Daily', NEW.posted_at),
            NEW.amount_minor),
           (NEW.account_id, 'Monthly', authorization_spend_window_start('Monthly', NEW.posted_at),
            NEW.amount_minor),
           (NEW.account_id, 'Lifetime', '-infinity', NEW.amount_minor)
    ON CONFLICT (account_id, spend_interval, window_start)
    DO UPDATE SET spent_minor = s.spent_minor + EXCLUDED.spent_minor;
    RETURN NULL;
END $$;

CREATE TRIGGER entries_after_insert_spend AFTER INSERT ON entries
    FOR EACH ROW WHEN (NEW.direction = 'debit') EXECUTE FUNCTION ledger_spend_after_debit();

-- A reversal takes its original's Purchase debits out of the windows they were posted in.
CREATE FUNCTION ledger_spend_after_reversal() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE account_spend_windows s
       SET spent_minor = s.spent_minor - d.amount_minor
      FROM (SELECT e.account_id, w.spend_interval, w.window_start,
                   sum(e.amount_minor) AS amount_minor
              FROM entries e
              JOIN journals j ON j.id = e.journal_id
             CROSS JOIN LATERAL (VALUES
                    ('Daily', authorization_spend_window_start('Daily', e.posted_at)),
                    ('Monthly', authorization_spend_window_start('Monthly', e.posted_at)),
                    ('Lifetime', '-infinity'::timestamptz)) AS w (spend_interval, window_start)
             WHERE e.journal_id = NEW.reverses_journal_id
               AND e.direction = 'debit'
               AND j.kind = 'Purchase'
             GROUP BY 1, 2, 3) AS d
     WHERE s.account_id = d.account_id
       AND s.spend_interval = d.spend_interval
       AND s.window_start = d.window_start;
    RETURN NULL;
END $$;

CREATE TRIGGER journals_after_insert_spend AFTER INSERT ON journals
    FOR EACH ROW WHEN (NEW.reverses_journal_id IS NOT NULL)
    EXECUTE FUNCTION ledger_spend_after_reversal();

-- Written only by the two triggers above (as account_balances by its own: a direct statement
-- runs at trigger depth 0, so this guard sees depth 1); never deleted or truncated.
CREATE FUNCTION ledger_spend_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION '% on account_spend_windows is refused: spend moves only with entries',
            TG_OP USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER account_spend_windows_guard
    BEFORE INSERT OR UPDATE OR DELETE ON account_spend_windows
    FOR EACH ROW EXECUTE FUNCTION ledger_spend_guard();
CREATE TRIGGER account_spend_windows_no_truncate BEFORE TRUNCATE ON account_spend_windows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Reconciliation: windows whose running spend disagrees with the entries. Always empty.
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

-- What the account spent in the window of ``p_interval`` containing ``p_at``: one index probe,
-- whatever the history. Equal to authorization_spent(account, window start) (the sum over
-- entries, kept as the reference), which account_spend_drift and the tests hold it to.
CREATE FUNCTION authorization_spent_in_window(
    p_account_id bigint, p_interval text, p_at timestamptz DEFAULT now()
) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce((SELECT sum(s.spent_minor)
                       FROM account_spend_windows s
                      WHERE s.account_id = p_account_id
                        AND s.spend_interval = p_interval
                        AND s.window_start >= authorization_spend_window_start(p_interval, p_at)),
                    0)::bigint;
END $$;

-- Available reads the running windows (was: the sum over entries). Same signature and result.
CREATE OR REPLACE FUNCTION authorization_available(
    p_account_id bigint, p_limit_minor bigint, p_interval text, p_held_minor bigint
) RETURNS bigint LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF p_limit_minor IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_interval = 'PerTransaction' THEN
        RETURN p_limit_minor;
    END IF;
    RETURN p_limit_minor - p_held_minor - authorization_spent_in_window(p_account_id, p_interval);
END $$;

-- The hot path of 0051, reading the running window instead of summing entries; available is
-- computed once per answer. Everything else (reads, checks, writes, bytes) is 0051's.
CREATE OR REPLACE FUNCTION authorization_authorize(
    p_id text, p_token text, p_amount bigint, p_currency text,
    p_merchant_name text, p_mcc text, p_country text, p_headers jsonb DEFAULT '{}'
) RETURNS TABLE (status_code integer, answer bytea, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    req jsonb := jsonb_build_object(
        'kind', 'authorize', 'card', p_token, 'amount', p_amount, 'currency', p_currency,
        'merchant.name', p_merchant_name, 'merchant.mcc', p_mcc, 'merchant.country', p_country);
    merchant jsonb := jsonb_build_object('name', p_merchant_name, 'mcc', p_mcc,
                                         'country', p_country);
    account bigint;
    t authorization_card_terms;
    verdict text := 'Approved';
    available bigint;
    approved boolean;
    a authorizations;
    event_id uuid;
    view jsonb;
    expires text;
BEGIN
    PERFORM 1 FROM authorization_requests r WHERE r.request_id = p_id;
    IF FOUND THEN
        RETURN QUERY SELECT x.status_code, x.answer, x.replayed
                       FROM authorization_replay(p_id, req) x;
        RETURN;
    END IF;
    -- The card account's row lock first (the one every Posting of the card takes); what the
    -- card holds and spent is read after it, by fresh statements, so nothing that committed
    -- while this waited is missed.
    SELECT c.account_id INTO account
      FROM authorization_cards c JOIN accounts x ON x.id = c.account_id
     WHERE c.token = p_token
       FOR NO KEY UPDATE OF x;
    IF account IS NOT NULL THEN
        SELECT c.account_id, c.card, c.namespace, x.currency, x.status = 'open',
               x.frozen_at IS NOT NULL, c.retired_at IS NOT NULL,
               CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_limit_minor
                    ELSE p.spend_limit_minor END,
               CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_interval
                    ELSE p.spend_interval END,
               c.held_minor,
               coalesce(p.rewards_rate_bps, 0), coalesce(p.earn_on, '{Purchase}'),
               coalesce(p.over_capture_bps, 0), coalesce(p.authorization_ttl_seconds, 604800),
               coalesce(p.force_post, false)
          INTO t
          FROM authorization_cards c
          JOIN accounts x ON x.id = c.account_id
          LEFT JOIN authorization_products p ON p.product = c.product
         WHERE c.account_id = account;
    END IF;
    IF t.account_id IS NULL THEN
        verdict := 'CardNotFound';
    ELSIF NOT t.account_open OR t.frozen OR t.retired THEN
        verdict := 'CardNotActive';
    ELSIF t.currency <> p_currency THEN
        verdict := 'CurrencyMismatch';
    ELSE
        IF EXISTS (SELECT 1 FROM authorization_risk_rules r WHERE r.namespace = t.namespace) THEN
            verdict := coalesce('RiskDeclined:' || authorization_risk_rule(
                t.namespace, p_amount, p_currency, p_mcc, p_country), 'Approved');
        END IF;
        IF verdict = 'Approved' AND t.limit_minor IS NOT NULL THEN
            available := t.limit_minor;
            IF t.limit_interval <> 'PerTransaction' THEN
                -- authorization_spent_in_window, inlined: one probe of the running window.
                available := available - t.held_minor - coalesce((
                    SELECT sum(s.spent_minor)
                      FROM account_spend_windows s
                     WHERE s.account_id = t.account_id
                       AND s.spend_interval = t.limit_interval
                       AND s.window_start >= CASE t.limit_interval
                               WHEN 'Daily' THEN date_trunc('day', now() AT TIME ZONE 'UTC')
                                                 AT TIME ZONE 'UTC'
                               WHEN 'Monthly' THEN date_trunc('month', now() AT TIME ZONE 'UTC')
                                                   AT TIME ZONE 'UTC'
                               ELSE '-infinity' END), 0);
            END IF;
            IF p_amount > available THEN
                verdict := 'SpendLimitExceeded';
            END IF;
        END IF;
    END IF;
    approved := verdict = 'Approved';
    IF approved THEN
        expires := to_char((now() + make_interval(secs => t.authorization_ttl_seconds))
                           AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
    END IF;
    INSERT INTO authorizations (id, account_id, card, card_token, currency, amount_minor,
                                held_minor, over_capture_bps, status, reason, merchant,
                                rewards_rate_bps, earn_on, expires_at)
    VALUES (p_id, t.account_id, t.card, p_token, p_currency, p_amount,
            CASE WHEN approved THEN p_amount ELSE 0 END, coalesce(t.over_capture_bps, 0),
            CASE WHEN approved THEN 'pending' ELSE 'declined' END, verdict, merchant,
            coalesce(t.rewards_rate_bps, 0), coalesce(t.earn_on, '{Purchase}'),
            CASE WHEN approved THEN now() + make_interval(secs => t.authorization_ttl_seconds) END)
    RETURNING * INTO a;
    IF approved THEN
        UPDATE authorization_cards SET held_minor = held_minor + p_amount
         WHERE account_id = t.account_id;
        available := available - p_amount;
    ELSIF t.account_id IS NOT NULL AND available IS NULL AND t.limit_minor IS NOT NULL THEN
        -- Declined before the limit was read: the answer still shows what is available.
        available := authorization_available(t.account_id, t.limit_minor, t.limit_interval,
                                             t.held_minor);
    END IF;
    view := jsonb_build_object(
        'authorization', p_id, 'approved', approved, 'reason', verdict,
        'status', a.status, 'currency', p_currency, 'amount', p_amount,
        'held', a.held_minor, 'captured', 0, 'released', 0,
        'available', available, 'expiresAt', expires);
    -- A decline of an unknown token has no card to announce it on: its record is the row above.
    IF t.card IS NOT NULL THEN
        event_id := gen_random_uuid();
        INSERT INTO outbox (event_id, topic, key, payload, headers)
        VALUES (event_id, 'authorizations', t.card, jsonb_build_object(
            'specversion', '1.0',
            'id', event_id::text,
            'source', '/fintech-operator/authorizations',
            'type', CASE WHEN approved THEN 'dev.fintech.authorization.approved.v1'
                         ELSE 'dev.fintech.authorization.declined.v1' END,
            'subject', 'namespaces/' || t.namespace || '/cards/' || split_part(t.card, '/', 2),
            'time', to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
            'datacontenttype', 'application/json',
            'partitionkey', t.card,
            'data', jsonb_strip_nulls(view - 'approved' - 'available'
                                      || jsonb_build_object('card', t.card, 'merchant', merchant))),
            coalesce(p_headers, '{}'::jsonb));
    END IF;
    status_code := 200;
    answer := convert_to(view::text, 'UTF8');
    replayed := false;
    -- A racer with the same id that committed first makes this a unique violation: the whole
    -- transaction rolls back and the caller asks again, getting the racer's answer.
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_id, 'authorize', p_id, req, encode(sha256(convert_to(req::text, 'UTF8')), 'hex'),
            200, answer);
    RETURN NEXT;
END $$;

-- 0050's increment, with available read once: the decision's figure, less the increment when
-- it is approved under a windowed limit (the answer of 0050 read it again after the update).
CREATE OR REPLACE FUNCTION authorization_increment(
    p_authorization_id text, p_request_id text, p_amount bigint, p_headers jsonb DEFAULT '{}'
) RETURNS TABLE (status_code integer, answer bytea, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    req jsonb := jsonb_build_object('kind', 'increment', 'authorization', p_authorization_id,
                                    'amount', p_amount);
    prior record;
    locked record;
    t authorization_card_terms;
    a authorizations;
    verdict text := 'Approved';
    available bigint;
    room bigint;
BEGIN
    SELECT * INTO prior FROM authorization_replay(p_request_id, req);
    IF prior.status_code IS NOT NULL THEN
        RETURN QUERY SELECT prior.status_code, prior.answer, prior.replayed;
        RETURN;
    END IF;
    SELECT * INTO locked FROM authorization_lock(p_authorization_id);
    t := locked.t;
    a := locked.a;
    IF a.id IS NULL THEN
        RETURN QUERY SELECT * FROM authorization_not_found(p_authorization_id);
        RETURN;
    END IF;
    IF a.status <> 'pending' THEN
        RETURN QUERY SELECT * FROM authorization_answer(p_request_id, 'increment', a.id, req, 409,
                                                        authorization_not_pending(a));
        RETURN;
    END IF;
    available := authorization_available(t.account_id, t.limit_minor, t.limit_interval,
                                         t.held_minor);
    IF NOT t.account_open OR t.frozen OR t.retired THEN
        verdict := 'CardNotActive';
    ELSE
        room := available;
        IF t.limit_interval = 'PerTransaction' THEN
            room := room - a.held_minor;  -- the authorization as a whole is one purchase
        END IF;
        IF room IS NOT NULL AND p_amount > room THEN
            verdict := 'SpendLimitExceeded';
        END IF;
    END IF;
    IF verdict = 'Approved' THEN
        UPDATE authorizations SET held_minor = held_minor + p_amount WHERE id = a.id
        RETURNING * INTO a;
        UPDATE authorization_cards SET held_minor = held_minor + p_amount
         WHERE account_id = t.account_id;
        IF t.limit_interval IS DISTINCT FROM 'PerTransaction' THEN
            available := available - p_amount;  -- NULL (no limit) stays NULL
        END IF;
        PERFORM authorization_event('incremented', a,
                                    jsonb_build_object('request', p_request_id,
                                                       'stepAmount', p_amount),
                                    p_headers, NULL);
    END IF;
    RETURN QUERY SELECT * FROM authorization_answer(
        p_request_id, 'increment', a.id, req, 200,
        authorization_view(a, available)
        || jsonb_build_object('approved', verdict = 'Approved', 'reason', verdict,
                              'request', p_request_id));
END $$;
