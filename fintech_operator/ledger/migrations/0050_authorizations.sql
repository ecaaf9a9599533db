-- 0050_authorizations: real-time card authorizations (issue 13): holds, captures, voids, expiry.
--
-- The card network asks the issuer to approve a purchase in real time; an approval places a HOLD
-- on the card's available spend, later captured (cleared, in one or several parts), voided, or
-- expired. docs/authorizations.md describes the model; this file enforces it.
--
-- Holds are kept OUTSIDE the double-entry books, and reconcilable with them: a hold is a promise,
-- not money moved, so it writes no journal and the trial balance is untouched by it. What a hold
-- reserves is authorization_cards.held_minor, moved in the same transaction as the authorization
-- row it belongs to; the view authorization_hold_drift proves the two agree (always empty). A
-- capture posts a real Purchase journal (debit the card's receivable, credit network_settlement,
-- the same lines as a Purchase Posting) through the ledger's own tables and triggers, so every
-- ledger invariant of 0001 holds for it unchanged.
--
-- Invariants enforced here (and checked again by the Python store):
--   * a hold resolves at most once: an authorization leaves 'pending' once and never changes
--     again (trigger); held, captured and released only grow;
--   * captured + released <= held, where a capture beyond the hold counts only up to it, and the
--     total captured is at most held x (1 + over_capture_bps / 10000) (CHECKs);
--   * a card's held_minor is never negative, and a hold never raises it above a Daily, Monthly
--     or Lifetime spend limit (CHECK + trigger); the full check, limit - spent - held >= amount,
--     runs in authorization_authorize under the card account's row lock, the same lock every
--     Posting takes, so postings and authorizations of one card are serialised (Invariant 8);
--   * every request id answers once: its request and answer bytes are stored, and a retry gets
--     the same bytes (authorization_requests is immutable, except for the one change a gateway
--     deadline makes: see authorization_settle_timed_out).
--
-- The hot path is ONE statement per request (SELECT * FROM authorization_authorize(...)): every
-- read, check, write and its outbox event happen in these functions, in one transaction.

-- The card terms a decision needs, mirrored from Card and CardProduct by the operator. --------

CREATE TABLE authorization_products (
    product                   text        PRIMARY KEY CHECK (product ~ '^[^/\s]+/[^/\s]+$'),
    currency                  char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    spend_limit_minor         bigint      CHECK (spend_limit_minor BETWEEN 0 AND 1000000000000000),
    spend_interval            text        CHECK (
        spend_interval IN ('PerTransaction', 'Daily', 'Monthly', 'Lifetime')
    ),
    rewards_rate_bps          integer     NOT NULL DEFAULT 0 CHECK (rewards_rate_bps BETWEEN 0 AND 10000),
    earn_on                   text[]      NOT NULL DEFAULT '{Purchase}',
    over_capture_bps          integer     NOT NULL DEFAULT 0 CHECK (over_capture_bps BETWEEN 0 AND 10000),
    authorization_ttl_seconds integer     NOT NULL DEFAULT 604800
                                          CHECK (authorization_ttl_seconds BETWEEN 1 AND 2678400),
    force_post                boolean     NOT NULL DEFAULT false,
    updated_at                timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT authorization_products_limit_shape
        CHECK ((spend_limit_minor IS NULL) = (spend_interval IS NULL))
);

CREATE TABLE authorization_cards (
    account_id        bigint      PRIMARY KEY REFERENCES accounts (id),
    token             text        NOT NULL UNIQUE CHECK (length(token) BETWEEN 1 AND 128),
    card              text        NOT NULL UNIQUE CHECK (card ~ '^[^/\s]+/[^/\s]+$'),
    namespace         text        NOT NULL CHECK (card LIKE namespace || '/%'),
    product           text        NOT NULL CHECK (product ~ '^[^/\s]+/[^/\s]+$'),
    -- The card's own limit; NULL means the product's applies (or none).
    spend_limit_minor bigint      CHECK (spend_limit_minor BETWEEN 0 AND 1000000000000000),
    spend_interval    text        CHECK (
        spend_interval IN ('PerTransaction', 'Daily', 'Monthly', 'Lifetime')
    ),
    -- What the card's pending authorizations hold right now (authorization_hold_drift).
    held_minor        bigint      NOT NULL DEFAULT 0 CHECK (held_minor >= 0),
    -- Set when the Card object is deleted: a deleted card authorizes nothing.
    retired_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT authorization_cards_limit_shape
        CHECK ((spend_limit_minor IS NULL) = (spend_interval IS NULL))
);

COMMENT ON COLUMN authorization_cards.held_minor IS
    'Sum of what pending authorizations of the card hold; moved only with them.';

-- Purchase rules of a namespace's RiskPolicy that a real-time decision applies (those with action
-- Decline; see docs/authorizations.md). Rewritten whole by the operator when the policy changes.
CREATE TABLE authorization_risk_rules (
    namespace    text    NOT NULL CHECK (length(namespace) BETWEEN 1 AND 63),
    rule         text    NOT NULL CHECK (
        rule IN ('MaxAmountPerTransaction', 'BlockedMcc', 'BlockedMerchantCountry')
    ),
    policy       text    NOT NULL CHECK (length(policy) BETWEEN 3 AND 400),
    amount_minor bigint  CHECK (amount_minor >= 0),
    currency     char(3) CHECK (currency ~ '^[A-Z]{3}$'),
    codes        text[]  NOT NULL DEFAULT '{}',
    PRIMARY KEY (namespace, rule)
);

-- Authorizations and their requests -----------------------------------------------------------

CREATE TABLE authorizations (
    id               text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    -- NULL only for a decline of a card token the issuer does not know.
    account_id       bigint      REFERENCES accounts (id),
    card             text        CHECK (card ~ '^[^/\s]+/[^/\s]+$'),
    card_token       text        NOT NULL CHECK (length(card_token) BETWEEN 1 AND 128),
    currency         char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amount_minor     bigint      NOT NULL CHECK (amount_minor BETWEEN 1 AND 1000000000000000),
    -- Placed in total (the first amount plus increments); captured in total; the part of the
    -- hold that captures used up (a capture beyond what is left uses up only what is left);
    -- and the part released unused (void, final capture, expiry, deadline).
    held_minor       bigint      NOT NULL DEFAULT 0 CHECK (held_minor >= 0),
    captured_minor   bigint      NOT NULL DEFAULT 0 CHECK (captured_minor >= 0),
    consumed_minor   bigint      NOT NULL DEFAULT 0 CHECK (consumed_minor >= 0),
    released_minor   bigint      NOT NULL DEFAULT 0 CHECK (released_minor >= 0),
    over_capture_bps integer     NOT NULL DEFAULT 0 CHECK (over_capture_bps BETWEEN 0 AND 10000),
    status           text        NOT NULL CHECK (status IN ('pending', 'closed', 'expired', 'declined')),
    -- Approved, or the decline reason (CardNotActive, SpendLimitExceeded, RiskDeclined:<rule>...).
    reason           text        NOT NULL CHECK (reason ~ '^[A-Za-z][A-Za-z0-9:]{0,127}$'),
    -- How a closed authorization closed: 'void' or 'capture' (a final capture).
    closed_by        text        CHECK (closed_by IN ('void', 'capture')),
    merchant         jsonb       NOT NULL CHECK (jsonb_typeof(merchant) = 'object'),
    rewards_rate_bps integer     NOT NULL DEFAULT 0 CHECK (rewards_rate_bps BETWEEN 0 AND 10000),
    earn_on          text[]      NOT NULL DEFAULT '{Purchase}',
    expires_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- Invariant 9: a hold resolves at most once: consumed + released never pass what was held.
    CONSTRAINT authorizations_resolve_at_most_held
        CHECK (consumed_minor + released_minor <= held_minor),
    CONSTRAINT authorizations_consumed_by_captures CHECK (consumed_minor <= captured_minor),
    CONSTRAINT authorizations_over_capture
        CHECK (captured_minor * 10000 <= held_minor * (10000 + over_capture_bps)),
    CONSTRAINT authorizations_declined_hold_nothing
        CHECK (status <> 'declined' OR (held_minor = 0 AND captured_minor = 0 AND released_minor = 0)),
    CONSTRAINT authorizations_resolved_fully
        CHECK (status IN ('pending', 'declined') OR consumed_minor + released_minor = held_minor),
    CONSTRAINT authorizations_closed_by
        CHECK ((status = 'closed') = (closed_by IS NOT NULL)),
    CONSTRAINT authorizations_approved_have_card
        CHECK (status = 'declined' OR (account_id IS NOT NULL AND expires_at IS NOT NULL))
);

-- The expiry worker reads due pending authorizations; resolved ones leave the index.
CREATE INDEX authorizations_expiry_idx ON authorizations (expires_at) WHERE status = 'pending';
CREATE INDEX authorizations_account_pending_idx ON authorizations (account_id)
    WHERE status = 'pending';

-- Resolve at most once: a resolved authorization never changes again; amounts only grow.
CREATE FUNCTION authorization_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status <> 'pending' THEN
        RAISE EXCEPTION 'authorization % is % and never changes again', OLD.id, OLD.status
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.id, NEW.account_id, NEW.card, NEW.card_token, NEW.currency, NEW.amount_minor,
        NEW.over_capture_bps, NEW.merchant, NEW.created_at)
       IS DISTINCT FROM
       (OLD.id, OLD.account_id, OLD.card, OLD.card_token, OLD.currency, OLD.amount_minor,
        OLD.over_capture_bps, OLD.merchant, OLD.created_at) THEN
        RAISE EXCEPTION 'authorization %: identity, card, currency and terms are immutable', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF NEW.held_minor < OLD.held_minor OR NEW.captured_minor < OLD.captured_minor
       OR NEW.consumed_minor < OLD.consumed_minor OR NEW.released_minor < OLD.released_minor THEN
        RAISE EXCEPTION 'authorization %: held, captured, consumed and released only grow', OLD.id
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER authorizations_before_update BEFORE UPDATE ON authorizations
    FOR EACH ROW EXECUTE FUNCTION authorization_before_update();
CREATE TRIGGER authorizations_no_delete BEFORE DELETE ON authorizations
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER authorizations_no_truncate BEFORE TRUNCATE ON authorizations
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Every capture, with the journal it posted. A force post is a capture of an authorization the
-- issuer holds nothing for (unknown, expired or declined), allowed only if the product says so.
CREATE TABLE authorization_captures (
    id               text        PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    authorization_id text        NOT NULL CHECK (authorization_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    account_id       bigint      NOT NULL REFERENCES accounts (id),
    amount_minor     bigint      NOT NULL CHECK (amount_minor BETWEEN 1 AND 1000000000000000),
    final            boolean     NOT NULL,
    force_post       boolean     NOT NULL,
    journal_id       bigint      NOT NULL UNIQUE REFERENCES journals (id),
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX authorization_captures_authorization_idx ON authorization_captures (authorization_id);

CREATE TRIGGER authorization_captures_append_only BEFORE UPDATE OR DELETE ON authorization_captures
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER authorization_captures_no_truncate BEFORE TRUNCATE ON authorization_captures
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Every request id the gateway answered, with its request (the fields that identify it) and the
-- exact answer bytes. A 404 is not stored: nothing happened, and the id may be used later.
CREATE TABLE authorization_requests (
    request_id       text        PRIMARY KEY CHECK (request_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    kind             text        NOT NULL CHECK (
        kind IN ('authorize', 'increment', 'capture', 'void', 'timeout')
    ),
    authorization_id text        NOT NULL CHECK (authorization_id ~ '^[A-Za-z0-9._:-]{1,128}$'),
    -- The request's fields, flattened ({"kind": ..., "amount": ..., "merchant.mcc": ...}).
    request          jsonb       NOT NULL CHECK (jsonb_typeof(request) = 'object'),
    request_hash     text        NOT NULL CHECK (request_hash ~ '^[0-9a-f]{64}$'),
    status_code      integer     NOT NULL CHECK (status_code BETWEEN 200 AND 599),
    answer           bytea       NOT NULL CHECK (length(answer) BETWEEN 2 AND 4096),
    -- The approval it recorded was withdrawn because the gateway's deadline passed first.
    timed_out        boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX authorization_requests_authorization_idx ON authorization_requests (authorization_id);

-- An answer is final, except that a deadline may replace an approval by IssuerUnavailable once.
CREATE FUNCTION authorization_request_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.timed_out OR NOT NEW.timed_out
       OR (NEW.request_id, NEW.kind, NEW.authorization_id, NEW.request, NEW.request_hash,
           NEW.created_at)
          IS DISTINCT FROM
          (OLD.request_id, OLD.kind, OLD.authorization_id, OLD.request, OLD.request_hash,
           OLD.created_at) THEN
        RAISE EXCEPTION 'request %: an answer is final (only a deadline withdraws it, once)',
            OLD.request_id USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER authorization_requests_before_update BEFORE UPDATE ON authorization_requests
    FOR EACH ROW EXECUTE FUNCTION authorization_request_before_update();
CREATE TRIGGER authorization_requests_no_delete BEFORE DELETE ON authorization_requests
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER authorization_requests_no_truncate BEFORE TRUNCATE ON authorization_requests
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- A hold never raises held above a windowed spend limit (a per-transaction limit bounds each
-- authorization alone, checked by the functions). Lowering a limit below what is held is
-- allowed: the holds stay, and new ones are declined until enough of them resolve.
CREATE FUNCTION authorization_card_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    limit_minor bigint;
    interval_name text;
BEGIN
    IF NEW.held_minor > OLD.held_minor THEN
        SELECT coalesce(NEW.spend_limit_minor, p.spend_limit_minor),
               coalesce(NEW.spend_interval, p.spend_interval)
          INTO limit_minor, interval_name
          FROM (SELECT 1) AS one
          LEFT JOIN authorization_products p ON p.product = NEW.product;
        IF interval_name IS DISTINCT FROM 'PerTransaction' AND NEW.held_minor > limit_minor THEN
            RAISE EXCEPTION 'card %: held % would exceed its % limit %', NEW.card,
                NEW.held_minor, interval_name, limit_minor
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    IF (NEW.account_id, NEW.card, NEW.namespace) IS DISTINCT FROM
       (OLD.account_id, OLD.card, OLD.namespace) THEN
        RAISE EXCEPTION 'card %: account, name and namespace are immutable', OLD.card
            USING ERRCODE = 'restrict_violation';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END $$;

CREATE TRIGGER authorization_cards_before_update BEFORE UPDATE ON authorization_cards
    FOR EACH ROW EXECUTE FUNCTION authorization_card_before_update();

-- Cards whose held_minor disagrees with their pending authorizations. Always empty.
CREATE VIEW authorization_hold_drift AS
SELECT c.account_id,
       c.card,
       c.held_minor,
       coalesce(s.held_minor, 0) AS pending_held_minor
  FROM authorization_cards c
  LEFT JOIN (
        SELECT account_id,
               sum(held_minor - consumed_minor - released_minor) AS held_minor
          FROM authorizations
         WHERE status = 'pending'
         GROUP BY account_id
       ) s ON s.account_id = c.account_id
 WHERE c.held_minor <> coalesce(s.held_minor, 0);

-- Helpers ----------------------------------------------------------------------------------

-- Purchase debits of the account since ``start`` (NULL: ever), not reversed: the same spend the
-- ledger engine's limit guard counts (engine._spent_since).
CREATE FUNCTION authorization_spent(p_account_id bigint, p_start timestamptz)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT coalesce(sum(e.amount_minor), 0)::bigint
      FROM entries e
      JOIN journals j ON j.id = e.journal_id
     WHERE e.account_id = p_account_id
       AND e.direction = 'debit'
       AND e.posted_at >= coalesce(p_start, '-infinity')
       AND j.kind = 'Purchase'
       AND NOT EXISTS (SELECT 1 FROM journals r WHERE r.reverses_journal_id = j.id)
$$;

-- What the card may still spend: limit - spent in the window - held; NULL without a limit.
-- A per-transaction limit is its own available amount (holds and history do not count).
CREATE FUNCTION authorization_available(
    p_account_id bigint, p_limit_minor bigint, p_interval text, p_held_minor bigint
) RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN p_limit_minor IS NULL THEN NULL
        WHEN p_interval = 'PerTransaction' THEN p_limit_minor
        ELSE p_limit_minor - p_held_minor - authorization_spent(
            p_account_id,
            CASE p_interval
                WHEN 'Daily' THEN date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                WHEN 'Monthly' THEN date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
            END)
    END
$$;

CREATE FUNCTION authorization_time(p_at timestamptz) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(p_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')
$$;

-- The first field (sorted by name) in which two flattened requests differ.
CREATE FUNCTION authorization_differing_field(p_stored jsonb, p_new jsonb)
RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(s.key, n.key)
      FROM jsonb_each(p_stored) s
      FULL JOIN jsonb_each(p_new) n ON n.key = s.key
     WHERE s.value IS DISTINCT FROM n.value
     ORDER BY 1
     LIMIT 1
$$;

CREATE FUNCTION authorization_hash(p_request jsonb) RETURNS text LANGUAGE sql IMMUTABLE AS $$
    SELECT encode(sha256(convert_to(p_request::text, 'UTF8')), 'hex')
$$;

-- What every answer about an authorization shows.
CREATE FUNCTION authorization_view(a authorizations, p_available bigint)
RETURNS jsonb LANGUAGE sql STABLE AS $$
    SELECT jsonb_build_object(
        'authorization', a.id,
        'approved', a.status <> 'declined',
        'reason', a.reason,
        'status', a.status,
        'currency', a.currency,
        'amount', a.amount_minor,
        'held', a.held_minor - a.consumed_minor - a.released_minor,
        'captured', a.captured_minor,
        'released', a.released_minor,
        'available', p_available,
        'expiresAt', authorization_time(a.expires_at))
$$;

-- The stored answer of a request id, or the 409 naming the field that differs.
CREATE FUNCTION authorization_replay(
    p_request_id text, p_request jsonb,
    OUT status_code integer, OUT answer bytea, OUT replayed boolean
) LANGUAGE plpgsql STABLE AS $$
DECLARE
    stored authorization_requests%ROWTYPE;
    field text;
BEGIN
    SELECT * INTO stored FROM authorization_requests r WHERE r.request_id = p_request_id;
    IF NOT FOUND THEN
        RETURN;  -- all NULL: not answered yet
    END IF;
    replayed := true;
    IF stored.request = p_request OR (stored.kind = 'timeout'
                                       AND p_request->>'kind' IN ('authorize', 'increment')) THEN
        status_code := stored.status_code;
        answer := stored.answer;
        RETURN;
    END IF;
    field := coalesce(authorization_differing_field(stored.request, p_request), 'kind');
    IF stored.kind = 'timeout' THEN
        field := 'kind';
    END IF;
    status_code := 409;
    replayed := false;
    answer := convert_to(jsonb_build_object(
        'error', 'IdempotencyConflict',
        'field', field,
        'message', format('request id %s was used for another request: %s differs',
                          p_request_id, field))::text, 'UTF8');
END $$;

-- Store a request's answer and return it.
CREATE FUNCTION authorization_answer(
    p_request_id text, p_kind text, p_authorization_id text, p_request jsonb,
    p_status_code integer, p_body jsonb,
    OUT status_code integer, OUT answer bytea, OUT replayed boolean
) LANGUAGE plpgsql AS $$
BEGIN
    status_code := p_status_code;
    answer := convert_to(p_body::text, 'UTF8');
    replayed := false;
    -- A racer with the same id that committed first makes this a unique violation: the whole
    -- transaction rolls back and the caller asks again, getting the racer's answer.
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_request_id, p_kind, p_authorization_id, p_request, authorization_hash(p_request),
            p_status_code, answer);
END $$;

CREATE FUNCTION authorization_refusal(p_error text, p_id text, p_message text)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object('error', p_error, 'authorization', p_id, 'message', p_message)
$$;

-- The event of a step of an authorization, into the outbox in the step's transaction.
CREATE FUNCTION authorization_event(
    p_type text, a authorizations, p_step jsonb, p_headers jsonb, p_journal_id bigint
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    event_id uuid := gen_random_uuid();
    namespace text := split_part(a.card, '/', 1);
    name text := split_part(a.card, '/', 2);
BEGIN
    INSERT INTO outbox (event_id, topic, key, payload, headers, journal_id)
    VALUES (
        event_id, 'authorizations', a.card,
        jsonb_build_object(
            'specversion', '1.0',
            'id', event_id::text,
            'source', '/fintech-operator/authorizations',
            'type', 'dev.fintech.authorization.' || p_type || '.v1',
            'subject', 'namespaces/' || namespace || '/cards/' || name,
            'time', authorization_time(now()),
            'datacontenttype', 'application/json',
            'partitionkey', a.card,
            'data', jsonb_strip_nulls(jsonb_build_object(
                'authorization', a.id,
                'card', a.card,
                'status', a.status,
                'reason', a.reason,
                'currency', a.currency,
                'amount', a.amount_minor,
                'held', a.held_minor - a.consumed_minor - a.released_minor,
                'captured', a.captured_minor,
                'released', a.released_minor,
                'merchant', a.merchant,
                'expiresAt', authorization_time(a.expires_at)) || p_step)),
        coalesce(p_headers, '{}'::jsonb),
        p_journal_id);
END $$;

-- A Purchase journal of a capture: the lines of a Purchase Posting (rules.lines_for), through
-- the ledger's own tables, so its triggers check balance, currency, open and unfrozen accounts.
CREATE FUNCTION authorization_post_capture(
    p_capture_id text, p_account_id bigint, p_amount bigint, p_currency text,
    p_authorization_id text, p_metadata jsonb
) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    settlement_code text := 'system:network_settlement:' || p_currency;
    settlement_id bigint;
    journal_id bigint;
    key text := 'authorization-capture/' || p_capture_id;
BEGIN
    SELECT id INTO settlement_id FROM accounts WHERE code = settlement_code;
    IF NOT FOUND THEN
        INSERT INTO accounts (code, kind, normal_balance, currency)
        VALUES (settlement_code, 'system', 'credit', p_currency) ON CONFLICT (code) DO NOTHING;
        SELECT id INTO settlement_id FROM accounts WHERE code = settlement_code;
    END IF;
    INSERT INTO journals (idempotency_key, request_hash, kind, reference, occurred_at, metadata)
    VALUES (key,
            authorization_hash(jsonb_build_object('key', key, 'amount', p_amount,
                                                  'currency', p_currency)),
            'Purchase', p_authorization_id, now(), p_metadata)
    RETURNING id INTO journal_id;
    -- Account-id order, as the engine inserts: balance rows are then locked in one global order.
    INSERT INTO entries (journal_id, account_id, direction, amount_minor, currency)
    SELECT journal_id, l.account_id, l.direction, p_amount, p_currency
      FROM (VALUES (p_account_id, 'debit'), (settlement_id, 'credit')) AS l(account_id, direction)
     ORDER BY l.account_id;
    RETURN journal_id;
END $$;

-- The card row of a token, its account locked (the lock every Posting of the card takes). --------

CREATE TYPE authorization_card_terms AS (
    account_id bigint,
    card text,
    namespace text,
    currency char(3),
    account_open boolean,
    frozen boolean,
    retired boolean,
    limit_minor bigint,
    limit_interval text,
    held_minor bigint,
    rewards_rate_bps integer,
    earn_on text[],
    over_capture_bps integer,
    authorization_ttl_seconds integer,
    force_post boolean
);

CREATE FUNCTION authorization_lock_card(p_account_id bigint, p_token text)
RETURNS authorization_card_terms LANGUAGE plpgsql AS $$
DECLARE
    terms authorization_card_terms;
    found_id bigint := p_account_id;
BEGIN
    IF found_id IS NULL THEN
        SELECT c.account_id INTO found_id FROM authorization_cards c WHERE c.token = p_token;
        IF NOT FOUND THEN
            RETURN NULL;
        END IF;
    END IF;
    PERFORM 1 FROM accounts WHERE id = found_id FOR NO KEY UPDATE;
    SELECT c.account_id, c.card, c.namespace, a.currency, a.status = 'open',
           a.frozen_at IS NOT NULL, c.retired_at IS NOT NULL,
           CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_limit_minor
                ELSE p.spend_limit_minor END,
           CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_interval
                ELSE p.spend_interval END,
           c.held_minor,
           coalesce(p.rewards_rate_bps, 0), coalesce(p.earn_on, '{Purchase}'),
           coalesce(p.over_capture_bps, 0), coalesce(p.authorization_ttl_seconds, 604800),
           coalesce(p.force_post, false)
      INTO terms
      FROM authorization_cards c
      JOIN accounts a ON a.id = c.account_id
      LEFT JOIN authorization_products p ON p.product = c.product
     WHERE c.account_id = found_id;
    RETURN terms;
END $$;

-- The first Decline rule of the namespace's risk policy that the purchase breaks, if any.
CREATE FUNCTION authorization_risk_rule(
    p_namespace text, p_amount bigint, p_currency text, p_mcc text, p_country text
) RETURNS text LANGUAGE sql STABLE AS $$
    SELECT r.rule
      FROM authorization_risk_rules r
     WHERE r.namespace = p_namespace
       AND ((r.rule = 'MaxAmountPerTransaction' AND r.currency = p_currency
             AND p_amount > r.amount_minor)
            OR (r.rule = 'BlockedMcc' AND p_mcc = ANY (r.codes))
            OR (r.rule = 'BlockedMerchantCountry' AND p_country = ANY (r.codes)))
     ORDER BY r.rule
     LIMIT 1
$$;

-- Authorize ------------------------------------------------------------------------------------

CREATE FUNCTION authorization_decide(
    t authorization_card_terms, p_amount bigint, p_currency text, p_mcc text, p_country text
) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    rule text;
    available bigint;
BEGIN
    IF t.account_id IS NULL THEN
        RETURN 'CardNotFound';
    END IF;
    IF NOT t.account_open OR t.frozen OR t.retired THEN
        RETURN 'CardNotActive';
    END IF;
    IF t.currency <> p_currency THEN
        RETURN 'CurrencyMismatch';
    END IF;
    rule := authorization_risk_rule(t.namespace, p_amount, p_currency, p_mcc, p_country);
    IF rule IS NOT NULL THEN
        RETURN 'RiskDeclined:' || rule;
    END IF;
    available := authorization_available(t.account_id, t.limit_minor, t.limit_interval,
                                         t.held_minor);
    IF available IS NOT NULL AND p_amount > available THEN
        RETURN 'SpendLimitExceeded';
    END IF;
    RETURN 'Approved';
END $$;

CREATE FUNCTION authorization_authorize(
    p_id text, p_token text, p_amount bigint, p_currency text,
    p_merchant_name text, p_mcc text, p_country text, p_headers jsonb DEFAULT '{}'
) RETURNS TABLE (status_code integer, answer bytea, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    req jsonb := jsonb_build_object(
        'kind', 'authorize', 'card', p_token, 'amount', p_amount, 'currency', p_currency,
        'merchant.name', p_merchant_name, 'merchant.mcc', p_mcc, 'merchant.country', p_country);
    prior record;
    t authorization_card_terms;
    verdict text;
    a authorizations;
    approved boolean;
BEGIN
    SELECT * INTO prior FROM authorization_replay(p_id, req);
    IF prior.status_code IS NOT NULL THEN
        RETURN QUERY SELECT prior.status_code, prior.answer, prior.replayed;
        RETURN;
    END IF;
    t := authorization_lock_card(NULL, p_token);
    verdict := authorization_decide(t, p_amount, p_currency, p_mcc, p_country);
    approved := verdict = 'Approved';
    INSERT INTO authorizations (id, account_id, card, card_token, currency, amount_minor,
                                held_minor, over_capture_bps, status, reason, merchant,
                                rewards_rate_bps, earn_on, expires_at)
    VALUES (p_id, t.account_id, t.card, p_token, p_currency, p_amount,
            CASE WHEN approved THEN p_amount ELSE 0 END, coalesce(t.over_capture_bps, 0),
            CASE WHEN approved THEN 'pending' ELSE 'declined' END, verdict,
            jsonb_build_object('name', p_merchant_name, 'mcc', p_mcc, 'country', p_country),
            coalesce(t.rewards_rate_bps, 0), coalesce(t.earn_on, '{Purchase}'),
            CASE WHEN approved THEN now() + make_interval(secs => t.authorization_ttl_seconds) END)
    RETURNING * INTO a;
    IF approved THEN
        UPDATE authorization_cards SET held_minor = held_minor + p_amount
         WHERE account_id = t.account_id;
        t.held_minor := t.held_minor + p_amount;
    END IF;
    -- A decline of an unknown token has no card to announce it on: its record is the row above.
    IF a.card IS NOT NULL THEN
        PERFORM authorization_event(CASE WHEN approved THEN 'approved' ELSE 'declined' END,
                                    a, '{}'::jsonb, p_headers, NULL);
    END IF;
    RETURN QUERY SELECT * FROM authorization_answer(
        p_id, 'authorize', p_id, req, 200,
        authorization_view(a, authorization_available(t.account_id, t.limit_minor,
                                                      t.limit_interval, t.held_minor)));
END $$;

-- Follow-ups -----------------------------------------------------------------------------------

-- The authorization, its card locked first (the order authorize takes them in), then itself.
CREATE FUNCTION authorization_lock(p_authorization_id text, OUT t authorization_card_terms,
                                   OUT a authorizations)
LANGUAGE plpgsql AS $$
DECLARE
    account bigint;
BEGIN
    SELECT x.account_id INTO account FROM authorizations x WHERE x.id = p_authorization_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF account IS NOT NULL THEN
        t := authorization_lock_card(account, NULL);
    END IF;
    SELECT * INTO a FROM authorizations x WHERE x.id = p_authorization_id FOR UPDATE;
END $$;

CREATE FUNCTION authorization_not_pending(a authorizations) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT authorization_refusal(
        CASE WHEN a.status = 'expired' THEN 'AuthorizationExpired'
             WHEN a.status = 'declined' THEN 'AuthorizationDeclined'
             WHEN a.closed_by = 'void' THEN 'AuthorizationVoided'
             ELSE 'AuthorizationCaptured' END,
        a.id,
        format('authorization %s is %s%s: nothing is held any more', a.id, a.status,
               CASE WHEN a.closed_by IS NULL THEN '' ELSE ' by ' || a.closed_by END))
$$;

CREATE FUNCTION authorization_not_found(p_id text) RETURNS TABLE (
    status_code integer, answer bytea, replayed boolean
) LANGUAGE sql IMMUTABLE AS $$
    SELECT 404, convert_to(authorization_refusal(
        'AuthorizationNotFound', p_id,
        format('authorization %s is not known', p_id))::text, 'UTF8'), false
$$;

CREATE FUNCTION authorization_increment(
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
    IF NOT t.account_open OR t.frozen OR t.retired THEN
        verdict := 'CardNotActive';
    ELSE
        available := authorization_available(t.account_id, t.limit_minor, t.limit_interval,
                                             t.held_minor);
        IF t.limit_interval = 'PerTransaction' THEN
            available := available - a.held_minor;  -- the authorization as a whole is one purchase
        END IF;
        IF available IS NOT NULL AND p_amount > available THEN
            verdict := 'SpendLimitExceeded';
        END IF;
    END IF;
    IF verdict = 'Approved' THEN
        UPDATE authorizations SET held_minor = held_minor + p_amount WHERE id = a.id
        RETURNING * INTO a;
        UPDATE authorization_cards SET held_minor = held_minor + p_amount
         WHERE account_id = t.account_id;
        t.held_minor := t.held_minor + p_amount;
        PERFORM authorization_event('incremented', a,
                                    jsonb_build_object('request', p_request_id,
                                                       'stepAmount', p_amount),
                                    p_headers, NULL);
    END IF;
    RETURN QUERY SELECT * FROM authorization_answer(
        p_request_id, 'increment', a.id, req, 200,
        authorization_view(a, authorization_available(t.account_id, t.limit_minor,
                                                      t.limit_interval, t.held_minor))
        || jsonb_build_object('approved', verdict = 'Approved', 'reason', verdict,
                              'request', p_request_id));
END $$;

CREATE FUNCTION authorization_void(
    p_authorization_id text, p_request_id text, p_headers jsonb DEFAULT '{}'
) RETURNS TABLE (status_code integer, answer bytea, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    req jsonb := jsonb_build_object('kind', 'void', 'authorization', p_authorization_id);
    prior record;
    locked record;
    t authorization_card_terms;
    a authorizations;
    remaining bigint;
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
        RETURN QUERY SELECT * FROM authorization_answer(p_request_id, 'void', a.id, req, 409,
                                                        authorization_not_pending(a));
        RETURN;
    END IF;
    remaining := a.held_minor - a.consumed_minor - a.released_minor;
    UPDATE authorizations
       SET released_minor = released_minor + remaining, status = 'closed', closed_by = 'void'
     WHERE id = a.id
    RETURNING * INTO a;
    UPDATE authorization_cards SET held_minor = held_minor - remaining
     WHERE account_id = t.account_id;
    t.held_minor := t.held_minor - remaining;
    PERFORM authorization_event('voided', a,
                                jsonb_build_object('request', p_request_id,
                                                   'stepAmount', remaining),
                                p_headers, NULL);
    RETURN QUERY SELECT * FROM authorization_answer(
        p_request_id, 'void', a.id, req, 200,
        authorization_view(a, authorization_available(t.account_id, t.limit_minor,
                                                      t.limit_interval, t.held_minor))
        || jsonb_build_object('request', p_request_id));
END $$;

-- A capture of a pending authorization: consumes the hold (up to what is left), posts the journal,
-- and with ``final`` releases the rest.
CREATE FUNCTION authorization_capture_pending(
    t authorization_card_terms, a authorizations, p_request_id text, p_amount bigint,
    p_final boolean, p_headers jsonb, OUT a_after authorizations, OUT error jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    remaining bigint := a.held_minor - a.consumed_minor - a.released_minor;
    consumed bigint := least(p_amount, remaining);
    released bigint := CASE WHEN p_final THEN remaining - least(p_amount, remaining) ELSE 0 END;
    journal bigint;
BEGIN
    IF (a.captured_minor + p_amount) * 10000 > a.held_minor * (10000 + a.over_capture_bps) THEN
        error := authorization_refusal('OverCapture', a.id, format(
            'capturing %s more would capture %s of a hold of %s; the product allows %s bps over',
            p_amount, a.captured_minor + p_amount, a.held_minor, a.over_capture_bps));
        RETURN;
    END IF;
    IF NOT t.account_open OR t.frozen THEN
        error := authorization_refusal('CardNotActive', a.id,
            'the card is frozen or closed: it takes no new charges');
        RETURN;
    END IF;
    journal := authorization_post_capture(p_request_id, t.account_id, p_amount, a.currency, a.id,
        jsonb_build_object('authorization', a.id, 'capture', p_request_id, 'forcePost', false,
                           'card', a.card, 'merchant', a.merchant));
    UPDATE authorizations
       SET captured_minor = captured_minor + p_amount,
           consumed_minor = consumed_minor + consumed,
           released_minor = released_minor + released,
           status = CASE WHEN p_final THEN 'closed' ELSE 'pending' END,
           closed_by = CASE WHEN p_final THEN 'capture' END
     WHERE id = a.id
    RETURNING * INTO a_after;
    UPDATE authorization_cards SET held_minor = held_minor - consumed - released
     WHERE account_id = t.account_id;
    INSERT INTO authorization_captures
        (id, authorization_id, account_id, amount_minor, final, force_post, journal_id)
    VALUES (p_request_id, a.id, t.account_id, p_amount, p_final, false, journal);
    PERFORM authorization_event('captured', a_after, jsonb_build_object(
        'request', p_request_id, 'stepAmount', p_amount, 'final', p_final, 'forcePost', false,
        'journalId', journal, 'rewardsRateBps', a.rewards_rate_bps, 'earnOn', to_jsonb(a.earn_on)),
        p_headers, journal);
END $$;

-- A force post: a clearing the issuer holds nothing for. Posts the journal, touches no hold.
CREATE FUNCTION authorization_force_post(
    t authorization_card_terms, p_authorization_id text, p_request_id text, p_amount bigint,
    p_currency text, p_merchant jsonb, p_headers jsonb, OUT error jsonb
) LANGUAGE plpgsql AS $$
DECLARE
    journal bigint;
    shown authorizations;
BEGIN
    IF NOT t.force_post THEN
        error := authorization_refusal('ForcePostNotAllowed', p_authorization_id,
            'no pending authorization holds this capture and the card''s product does not '
            'allow force posts (forcePost)');
        RETURN;
    END IF;
    IF t.currency <> p_currency THEN
        error := authorization_refusal('CurrencyMismatch', p_authorization_id,
            format('the capture is in %s, the card in %s', p_currency, t.currency));
        RETURN;
    END IF;
    IF NOT t.account_open OR t.frozen THEN
        error := authorization_refusal('CardNotActive', p_authorization_id,
            'the card is frozen or closed: it takes no new charges');
        RETURN;
    END IF;
    journal := authorization_post_capture(p_request_id, t.account_id, p_amount, p_currency,
        p_authorization_id,
        jsonb_build_object('authorization', p_authorization_id, 'capture', p_request_id,
                           'forcePost', true, 'card', t.card, 'merchant', p_merchant));
    INSERT INTO authorization_captures
        (id, authorization_id, account_id, amount_minor, final, force_post, journal_id)
    VALUES (p_request_id, p_authorization_id, t.account_id, p_amount, true, true, journal);
    shown := ROW(p_authorization_id, t.account_id, t.card, '-', p_currency, p_amount, 0, 0, 0, 0, 0,
                 'closed', 'Approved', 'capture', p_merchant,
                 t.rewards_rate_bps, t.earn_on, NULL, now(), now())::authorizations;
    PERFORM authorization_event('captured', shown, jsonb_build_object(
        'request', p_request_id, 'stepAmount', p_amount, 'final', true, 'forcePost', true,
        'journalId', journal, 'captured', p_amount, 'status', NULL,
        'rewardsRateBps', t.rewards_rate_bps, 'earnOn', to_jsonb(t.earn_on)),
        p_headers, journal);
END $$;

CREATE FUNCTION authorization_capture(
    p_authorization_id text, p_request_id text, p_amount bigint, p_final boolean,
    p_token text DEFAULT NULL, p_currency text DEFAULT NULL, p_headers jsonb DEFAULT '{}'
) RETURNS TABLE (status_code integer, answer bytea, replayed boolean)
LANGUAGE plpgsql AS $$
DECLARE
    req jsonb := jsonb_strip_nulls(jsonb_build_object(
        'kind', 'capture', 'authorization', p_authorization_id, 'amount', p_amount,
        'final', p_final, 'card', p_token, 'currency', p_currency));
    prior record;
    locked record;
    t authorization_card_terms;
    a authorizations;
    done record;
    forced record;
BEGIN
    SELECT * INTO prior FROM authorization_replay(p_request_id, req);
    IF prior.status_code IS NOT NULL THEN
        RETURN QUERY SELECT prior.status_code, prior.answer, prior.replayed;
        RETURN;
    END IF;
    SELECT * INTO locked FROM authorization_lock(p_authorization_id);
    t := locked.t;
    a := locked.a;
    IF a.id IS NOT NULL AND a.status = 'pending' THEN
        SELECT * INTO done FROM authorization_capture_pending(t, a, p_request_id, p_amount,
                                                              p_final, p_headers);
        RETURN QUERY SELECT * FROM authorization_answer(
            p_request_id, 'capture', a.id, req,
            CASE WHEN done.error IS NULL THEN 200 ELSE 409 END,
            coalesce(done.error, authorization_view(done.a_after, authorization_available(
                t.account_id, t.limit_minor, t.limit_interval,
                (SELECT c.held_minor FROM authorization_cards c WHERE c.account_id = t.account_id)))
                || jsonb_build_object('request', p_request_id, 'forcePost', false)));
        RETURN;
    END IF;
    IF a.id IS NOT NULL AND a.status = 'closed' THEN
        RETURN QUERY SELECT * FROM authorization_answer(p_request_id, 'capture', a.id, req, 409,
                                                        authorization_not_pending(a));
        RETURN;
    END IF;
    -- Expired, declined, or never seen: a force post, on the authorization's card or the one
    -- the capture names.
    IF a.id IS NULL OR a.account_id IS NULL THEN
        IF p_token IS NULL THEN
            RETURN QUERY SELECT * FROM authorization_not_found(p_authorization_id);
            RETURN;
        END IF;
        t := authorization_lock_card(NULL, p_token);
        IF t.account_id IS NULL THEN
            RETURN QUERY SELECT 404, convert_to(authorization_refusal('CardNotFound',
                p_authorization_id, 'the capture names a card the issuer does not know')::text,
                'UTF8'), false;
            RETURN;
        END IF;
    END IF;
    SELECT * INTO forced FROM authorization_force_post(
        t, p_authorization_id, p_request_id, p_amount, coalesce(p_currency, a.currency, t.currency),
        a.merchant, p_headers);
    RETURN QUERY SELECT * FROM authorization_answer(
        p_request_id, 'capture', p_authorization_id, req,
        CASE WHEN forced.error IS NULL THEN 200 ELSE 409 END,
        coalesce(forced.error, jsonb_build_object(
            'authorization', p_authorization_id, 'request', p_request_id, 'forcePost', true,
            'status', coalesce(a.status, 'unknown'), 'currency', t.currency,
            'captured', p_amount, 'held', 0,
            'available', authorization_available(t.account_id, t.limit_minor, t.limit_interval,
                                                 t.held_minor))));
END $$;

CREATE FUNCTION authorization_get(p_authorization_id text)
RETURNS TABLE (status_code integer, answer bytea, replayed boolean)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    a authorizations;
    c authorization_cards;
    p authorization_products;
BEGIN
    SELECT * INTO a FROM authorizations x WHERE x.id = p_authorization_id;
    IF NOT FOUND THEN
        RETURN QUERY SELECT * FROM authorization_not_found(p_authorization_id);
        RETURN;
    END IF;
    SELECT * INTO c FROM authorization_cards x WHERE x.account_id = a.account_id;
    SELECT * INTO p FROM authorization_products x WHERE x.product = c.product;
    RETURN QUERY SELECT 200, convert_to(authorization_view(a, authorization_available(
        c.account_id,
        CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_limit_minor ELSE p.spend_limit_minor END,
        CASE WHEN c.spend_limit_minor IS NOT NULL THEN c.spend_interval ELSE p.spend_interval END,
        c.held_minor))::text, 'UTF8'), false;
END $$;

-- Deadline and expiry ----------------------------------------------------------------------------

-- The gateway answered ``p_request_id`` IssuerUnavailable because its deadline passed. If an
-- approval or increment of it committed anyway, release what it held (exactly once: the answer's
-- timed_out flag changes once) and replace its stored answer; if nothing committed, store the
-- decline so that the late transaction, and every retry, meets it. Returns what was released.
CREATE FUNCTION authorization_settle_timed_out(p_request_id text, p_headers jsonb DEFAULT '{}')
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    body jsonb := jsonb_build_object(
        'approved', false, 'reason', 'IssuerUnavailable', 'authorization', p_request_id,
        'status', 'declined', 'held', 0);
    stored authorization_requests;
    locked record;
    a authorizations;
    give_back bigint := 0;
BEGIN
    INSERT INTO authorization_requests
        (request_id, kind, authorization_id, request, request_hash, status_code, answer)
    VALUES (p_request_id, 'timeout', p_request_id, '{}', authorization_hash('{}'), 200,
            convert_to(body::text, 'UTF8'))
    ON CONFLICT (request_id) DO NOTHING;
    IF FOUND THEN
        RETURN 0;
    END IF;
    SELECT * INTO stored FROM authorization_requests WHERE request_id = p_request_id;
    IF stored.timed_out OR stored.kind NOT IN ('authorize', 'increment')
       OR stored.status_code <> 200 OR NOT (convert_from(stored.answer, 'UTF8')::jsonb->>'approved')::boolean THEN
        RETURN 0;  -- settled already, a follow-up, or nothing was held
    END IF;
    SELECT * INTO locked FROM authorization_lock(stored.authorization_id);
    a := locked.a;
    SELECT * INTO stored FROM authorization_requests WHERE request_id = p_request_id FOR UPDATE;
    IF stored.timed_out THEN
        RETURN 0;
    END IF;
    IF a.status = 'pending' THEN
        give_back := a.held_minor - a.consumed_minor - a.released_minor;
        IF stored.kind = 'increment' THEN
            give_back := least(give_back, (stored.request->>'amount')::bigint);
        END IF;
        UPDATE authorizations
           SET released_minor = released_minor + give_back,
               status = CASE WHEN stored.kind = 'authorize' THEN 'closed' ELSE status END,
               closed_by = CASE WHEN stored.kind = 'authorize' THEN 'void' ELSE closed_by END
         WHERE id = a.id
        RETURNING * INTO a;
        UPDATE authorization_cards SET held_minor = held_minor - give_back
         WHERE account_id = a.account_id;
        PERFORM authorization_event('voided', a, jsonb_build_object(
            'request', p_request_id, 'stepAmount', give_back, 'reason', 'IssuerUnavailable'),
            p_headers, NULL);
    END IF;
    UPDATE authorization_requests
       SET timed_out = true, answer = convert_to((body || jsonb_build_object(
               'authorization', stored.authorization_id))::text, 'UTF8')
     WHERE request_id = p_request_id;
    RETURN give_back;
END $$;

-- Expire due pending authorizations, at most ``p_limit``; returns how many. A card whose row is
-- locked (an authorization on it right now) is skipped and picked up by the next run, so expiry
-- never waits behind the hot path; the status re-check under the lock expires each at most once.
CREATE FUNCTION authorization_expire(p_limit integer, p_headers jsonb DEFAULT '{}')
RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    due record;
    a authorizations;
    remaining bigint;
    expired integer := 0;
BEGIN
    FOR due IN
        SELECT x.id, x.account_id FROM authorizations x
         WHERE x.status = 'pending' AND x.expires_at <= now()
         ORDER BY x.account_id, x.id
         LIMIT p_limit
    LOOP
        PERFORM 1 FROM accounts WHERE id = due.account_id FOR NO KEY UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        SELECT * INTO a FROM authorizations x
         WHERE x.id = due.id AND x.status = 'pending' AND x.expires_at <= now()
           FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        remaining := a.held_minor - a.consumed_minor - a.released_minor;
        UPDATE authorizations
           SET released_minor = released_minor + remaining, status = 'expired'
         WHERE id = a.id
        RETURNING * INTO a;
        UPDATE authorization_cards SET held_minor = held_minor - remaining
         WHERE account_id = a.account_id;
        PERFORM authorization_event('expired', a, jsonb_build_object('stepAmount', remaining),
                                    p_headers, NULL);
        expired := expired + 1;
    END LOOP;
    RETURN expired;
END $$;
