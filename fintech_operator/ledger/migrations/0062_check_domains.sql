-- 0062: the single-column CHECKs of the authorization path's hot tables become DOMAIN types
-- (issue 13, performance). Every rule is kept; every value accepted before is accepted now,
-- and nothing else.
--
-- Why: PostgreSQL rebuilds a table's CHECK constraints from their stored node trees on every
-- INSERT or UPDATE statement (the executor caches them per statement only), plans and compiles
-- them, and evaluates ALL of them on every UPDATE whatever columns it changed. Profiled on the
-- bench's mix, that was about 20% of a backend's CPU per request after 0060
-- (bench/RESULTS.md, "Where the WAL and the CPU go per request"). A domain's constraints are
-- read and planned once per backend (the type cache) and are checked only where a value is
-- coerced to the domain: every column of an INSERT, and on UPDATE only the columns the
-- statement assigns. A capture or a void then checks the amounts and status it writes, not
-- again the authorization's id, card, token, merchant and terms.
--
-- What stays a table constraint: every CHECK that reads two columns or more (the money
-- invariants of 0050: resolve at most held, over-capture, declined hold nothing, ...) and
-- NOT NULL. Columns' defaults, indexes and triggers are unchanged.
--
-- Errors: a value a domain refuses raises check_violation (SQLSTATE 23514) as before, with
-- "value for domain <domain> violates check constraint "<domain>_check"". The domain's name
-- names the field (authorization_id_text, card_token_text, ...); PostgreSQL puts no column in
-- a domain's error, and the statement is in its CONTEXT. No code maps these constraint names
-- (the ledger maps only the unique index journals_reverses_journal_id_key, untouched here).
--
-- How: each domain is created WITHOUT its constraint, the columns are switched to it (a domain
-- without constraints is binary-coercible with its base type, so the tables are not rewritten
-- and their indexes are kept), and only then the constraint is added to the domain, which
-- checks every existing value of every column of that domain in one scan per table (a domain
-- with a constraint would have made ALTER COLUMN TYPE rewrite each table and rebuild its
-- indexes). The one view over these columns, authorization_hold_drift, is dropped first and
-- created again unchanged (a column a view reads cannot change type); grants.py grants it
-- again on every migration run.
--
-- authorization_products, authorization_risk_rules and journals keep their table CHECKs:
-- the first two are written only when a Card, product or policy changes; journals are also
-- the Posting path's and are measured on their own (bench/RESULTS.md).

-- The domains, without their constraints yet (see "How" above). -------------------------------

-- The network's authorization id and a request's own id (capture, void, increment): the same
-- form, two names so that a refusal says which one was wrong.
CREATE DOMAIN authorization_id_text AS text;
CREATE DOMAIN authorization_request_id_text AS text;
-- A card's token from the processor's tokenizer (never a card number).
CREATE DOMAIN card_token_text AS text;
-- A Card's and a CardProduct's "namespace/name".
CREATE DOMAIN card_ref_text AS text;
CREATE DOMAIN product_ref_text AS text;
CREATE DOMAIN currency_code AS char(3);
-- An amount asked for (an authorization, a capture): 1 minor unit to 10^15.
CREATE DOMAIN positive_amount_minor AS bigint;
-- A running amount (held, captured, consumed, released): never negative.
CREATE DOMAIN nonnegative_amount_minor AS bigint;
-- A card's own spend limit: 0 to 10^15 minor units.
CREATE DOMAIN spend_limit_amount_minor AS bigint;
CREATE DOMAIN spend_interval_text AS text;
-- Over-capture allowance and rewards rate: 0 to 10,000 basis points (100%).
CREATE DOMAIN rate_bps AS integer;
CREATE DOMAIN authorization_status_text AS text;
-- Approved, or a decline reason (CardNotActive, RiskDeclined:<rule>, ...).
CREATE DOMAIN authorization_reason_text AS text;
CREATE DOMAIN authorization_closed_by_text AS text;
-- A merchant, a flattened request: a JSON object.
CREATE DOMAIN jsonb_object AS jsonb;
CREATE DOMAIN authorization_request_kind_text AS text;
-- SHA-256 of a request's canonical form, lowercase hex.
CREATE DOMAIN sha256_hex_text AS text;
CREATE DOMAIN http_status_code AS integer;
-- The stored answer bytes, replayed to a retry.
CREATE DOMAIN authorization_answer_bytea AS bytea;

-- The columns move to them; their table CHECKs go. -------------------------------------------

DROP VIEW authorization_hold_drift;

ALTER TABLE authorizations
    DROP CONSTRAINT authorizations_id_check,
    DROP CONSTRAINT authorizations_card_check,
    DROP CONSTRAINT authorizations_card_token_check,
    DROP CONSTRAINT authorizations_currency_check,
    DROP CONSTRAINT authorizations_amount_minor_check,
    DROP CONSTRAINT authorizations_held_minor_check,
    DROP CONSTRAINT authorizations_captured_minor_check,
    DROP CONSTRAINT authorizations_consumed_minor_check,
    DROP CONSTRAINT authorizations_released_minor_check,
    DROP CONSTRAINT authorizations_over_capture_bps_check,
    DROP CONSTRAINT authorizations_status_check,
    DROP CONSTRAINT authorizations_reason_check,
    DROP CONSTRAINT authorizations_closed_by_check,
    DROP CONSTRAINT authorizations_merchant_check,
    DROP CONSTRAINT authorizations_rewards_rate_bps_check,
    ALTER COLUMN id TYPE authorization_id_text,
    ALTER COLUMN card TYPE card_ref_text,
    ALTER COLUMN card_token TYPE card_token_text,
    ALTER COLUMN currency TYPE currency_code,
    ALTER COLUMN amount_minor TYPE positive_amount_minor,
    ALTER COLUMN held_minor TYPE nonnegative_amount_minor,
    ALTER COLUMN captured_minor TYPE nonnegative_amount_minor,
    ALTER COLUMN consumed_minor TYPE nonnegative_amount_minor,
    ALTER COLUMN released_minor TYPE nonnegative_amount_minor,
    ALTER COLUMN over_capture_bps TYPE rate_bps,
    ALTER COLUMN status TYPE authorization_status_text,
    ALTER COLUMN reason TYPE authorization_reason_text,
    ALTER COLUMN closed_by TYPE authorization_closed_by_text,
    ALTER COLUMN merchant TYPE jsonb_object,
    ALTER COLUMN rewards_rate_bps TYPE rate_bps;

ALTER TABLE authorization_requests
    DROP CONSTRAINT authorization_requests_request_id_check,
    DROP CONSTRAINT authorization_requests_kind_check,
    DROP CONSTRAINT authorization_requests_authorization_id_check,
    DROP CONSTRAINT authorization_requests_request_check,
    DROP CONSTRAINT authorization_requests_request_hash_check,
    DROP CONSTRAINT authorization_requests_status_code_check,
    DROP CONSTRAINT authorization_requests_answer_check,
    ALTER COLUMN request_id TYPE authorization_request_id_text,
    ALTER COLUMN kind TYPE authorization_request_kind_text,
    ALTER COLUMN authorization_id TYPE authorization_id_text,
    ALTER COLUMN request TYPE jsonb_object,
    ALTER COLUMN request_hash TYPE sha256_hex_text,
    ALTER COLUMN status_code TYPE http_status_code,
    ALTER COLUMN answer TYPE authorization_answer_bytea;

-- authorization_cards_check (card LIKE namespace || '/%') and the limit's shape read two
-- columns: they stay.
ALTER TABLE authorization_cards
    DROP CONSTRAINT authorization_cards_token_check,
    DROP CONSTRAINT authorization_cards_card_check,
    DROP CONSTRAINT authorization_cards_product_check,
    DROP CONSTRAINT authorization_cards_spend_limit_minor_check,
    DROP CONSTRAINT authorization_cards_spend_interval_check,
    DROP CONSTRAINT authorization_cards_held_minor_check,
    ALTER COLUMN token TYPE card_token_text,
    ALTER COLUMN card TYPE card_ref_text,
    ALTER COLUMN product TYPE product_ref_text,
    ALTER COLUMN spend_limit_minor TYPE spend_limit_amount_minor,
    ALTER COLUMN spend_interval TYPE spend_interval_text,
    ALTER COLUMN held_minor TYPE nonnegative_amount_minor;

-- Written with every capture, beside the authorization whose ids it shares.
ALTER TABLE authorization_captures
    DROP CONSTRAINT authorization_captures_id_check,
    DROP CONSTRAINT authorization_captures_authorization_id_check,
    DROP CONSTRAINT authorization_captures_amount_minor_check,
    ALTER COLUMN id TYPE authorization_request_id_text,
    ALTER COLUMN authorization_id TYPE authorization_id_text,
    ALTER COLUMN amount_minor TYPE positive_amount_minor;

-- The rules, each exactly the condition of the table CHECK it replaces (0050, 0060). A NULL
-- passes a domain's CHECK as it passed the table's; NOT NULL stays on the columns. ----------

ALTER DOMAIN authorization_id_text ADD CONSTRAINT authorization_id_text_check
    CHECK (length(VALUE) BETWEEN 1 AND 128 AND VALUE ~ '^[A-Za-z0-9._:-]+$');
ALTER DOMAIN authorization_request_id_text ADD CONSTRAINT authorization_request_id_text_check
    CHECK (length(VALUE) BETWEEN 1 AND 128 AND VALUE ~ '^[A-Za-z0-9._:-]+$');
ALTER DOMAIN card_token_text ADD CONSTRAINT card_token_text_check
    CHECK (length(VALUE) BETWEEN 1 AND 128);
ALTER DOMAIN card_ref_text ADD CONSTRAINT card_ref_text_check
    CHECK (VALUE ~ '^[^/\s]+/[^/\s]+$');
ALTER DOMAIN product_ref_text ADD CONSTRAINT product_ref_text_check
    CHECK (VALUE ~ '^[^/\s]+/[^/\s]+$');
ALTER DOMAIN currency_code ADD CONSTRAINT currency_code_check
    CHECK (VALUE ~ '^[A-Z]{3}$');
ALTER DOMAIN positive_amount_minor ADD CONSTRAINT positive_amount_minor_check
    CHECK (VALUE BETWEEN 1 AND 1000000000000000);
ALTER DOMAIN nonnegative_amount_minor ADD CONSTRAINT nonnegative_amount_minor_check
    CHECK (VALUE >= 0);
ALTER DOMAIN spend_limit_amount_minor ADD CONSTRAINT spend_limit_amount_minor_check
    CHECK (VALUE BETWEEN 0 AND 1000000000000000);
ALTER DOMAIN spend_interval_text ADD CONSTRAINT spend_interval_text_check
    CHECK (VALUE IN ('PerTransaction', 'Daily', 'Monthly', 'Lifetime'));
ALTER DOMAIN rate_bps ADD CONSTRAINT rate_bps_check
    CHECK (VALUE BETWEEN 0 AND 10000);
ALTER DOMAIN authorization_status_text ADD CONSTRAINT authorization_status_text_check
    CHECK (VALUE IN ('pending', 'closed', 'expired', 'declined'));
ALTER DOMAIN authorization_reason_text ADD CONSTRAINT authorization_reason_text_check
    CHECK (length(VALUE) <= 128 AND VALUE ~ '^[A-Za-z][A-Za-z0-9:]*$');
ALTER DOMAIN authorization_closed_by_text ADD CONSTRAINT authorization_closed_by_text_check
    CHECK (VALUE IN ('void', 'capture'));
ALTER DOMAIN jsonb_object ADD CONSTRAINT jsonb_object_check
    CHECK (jsonb_typeof(VALUE) = 'object');
ALTER DOMAIN authorization_request_kind_text ADD CONSTRAINT authorization_request_kind_text_check
    CHECK (VALUE IN ('authorize', 'increment', 'capture', 'void', 'timeout'));
ALTER DOMAIN sha256_hex_text ADD CONSTRAINT sha256_hex_text_check
    CHECK (length(VALUE) = 64 AND VALUE ~ '^[0-9a-f]+$');
ALTER DOMAIN http_status_code ADD CONSTRAINT http_status_code_check
    CHECK (VALUE BETWEEN 200 AND 599);
ALTER DOMAIN authorization_answer_bytea ADD CONSTRAINT authorization_answer_bytea_check
    CHECK (length(VALUE) BETWEEN 2 AND 4096);

-- The view, as 0050 made it. -----------------------------------------------------------------

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
