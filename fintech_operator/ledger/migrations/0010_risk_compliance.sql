-- Risk and compliance audit trail (issue 4): every decision, check, alert and manual review.
--
-- All four tables are append-only, like the ledger: a decision is history, and a correction is a
-- new row. Each row that a handler may write twice (a replayed handler, a restarted operator)
-- carries a UNIQUE idempotency key, so a replay finds the first row instead of adding a second;
-- the first decision recorded for a key is the one that stands.
--
-- Subjects are written as '<namespace>/<name>' of the Kubernetes object, plus its uid (a
-- deleted and re-created object of the same name is another subject). No card number, CVV or
-- PIN is ever stored here (Invariant 7): inputs hold names, countries, codes and amounts only.

CREATE TABLE risk_assessments (
    id              bigserial   PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 600),
    subject_kind    text        NOT NULL CHECK (subject_kind IN ('CardIssuance', 'Posting')),
    subject         text        NOT NULL CHECK (subject ~ '^[^/\s]+/[^/\s]+$'),
    subject_uid     text        CHECK (length(subject_uid) BETWEEN 1 AND 128),
    -- '<namespace>/<name>' of the RiskPolicy, or 'builtin/default'.
    policy          text        NOT NULL CHECK (length(policy) BETWEEN 3 AND 400),
    decision        text        NOT NULL CHECK (decision IN ('Approve', 'Review', 'Decline')),
    score           integer     NOT NULL CHECK (score BETWEEN 0 AND 1000),
    -- [{"rule": "VelocityCount", "action": "Review", "score": 500, "detail": "..."}]
    matched         jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(matched) = 'array'),
    inputs          jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(inputs) = 'object'),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX risk_assessments_subject_idx ON risk_assessments (subject, id);

CREATE TABLE compliance_checks (
    id              bigserial   PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 600),
    subject_kind    text        NOT NULL CHECK (subject_kind IN ('CardIssuance', 'Posting')),
    subject         text        NOT NULL CHECK (subject ~ '^[^/\s]+/[^/\s]+$'),
    subject_uid     text        CHECK (length(subject_uid) BETWEEN 1 AND 128),
    -- '<namespace>/<name>' of the CompliancePolicy, or 'builtin/default'.
    policy          text        NOT NULL CHECK (length(policy) BETWEEN 3 AND 400),
    check_kind      text        NOT NULL CHECK (check_kind IN ('Kyc', 'Sanctions', 'Aml')),
    outcome         text        NOT NULL CHECK (outcome IN ('Clear', 'Review', 'Reject', 'Alert')),
    -- CamelCase cause, e.g. KycAccepted, PossibleMatch, DailyThreshold.
    reason          text        NOT NULL CHECK (reason ~ '^[A-Za-z][A-Za-z0-9]*$'),
    inputs          jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(inputs) = 'object'),
    result          jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(result) = 'object'),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX compliance_checks_subject_idx ON compliance_checks (subject, id);

-- One alert per card, business day, kind and currency: a card that keeps spending after crossing
-- the threshold does not flood the analysts. The Kafka event is written to the outbox in the
-- same transaction as the alert.
CREATE TABLE compliance_alerts (
    id              bigserial   PRIMARY KEY,
    alert_kind      text        NOT NULL CHECK (alert_kind IN ('DailyThreshold', 'Structuring')),
    card            text        NOT NULL CHECK (card ~ '^[^/\s]+/[^/\s]+$'),
    business_day    date        NOT NULL,
    currency        char(3)     NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    total_minor     bigint      NOT NULL CHECK (total_minor >= 0),
    posting_count   integer     NOT NULL CHECK (posting_count >= 0),
    threshold_minor bigint      NOT NULL CHECK (threshold_minor > 0),
    policy          text        NOT NULL CHECK (length(policy) BETWEEN 3 AND 400),
    -- Idempotency key of the posting that raised the alert.
    posting_key     text        NOT NULL CHECK (length(posting_key) BETWEEN 1 AND 600),
    event_id        uuid        NOT NULL UNIQUE,
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (card, business_day, alert_kind, currency)
);

CREATE INDEX compliance_alerts_card_idx ON compliance_alerts (card, id);

-- A manual decision on a card in PendingReview. UNIQUE(card_uid): the first review wins.
CREATE TABLE card_reviews (
    id         bigserial   PRIMARY KEY,
    card       text        NOT NULL CHECK (card ~ '^[^/\s]+/[^/\s]+$'),
    card_uid   text        NOT NULL UNIQUE CHECK (length(card_uid) BETWEEN 1 AND 128),
    review     text        NOT NULL CHECK (review ~ '^[^/\s]+/[^/\s]+$'),
    review_uid text        NOT NULL CHECK (length(review_uid) BETWEEN 1 AND 128),
    decision   text        NOT NULL CHECK (decision IN ('Approve', 'Reject')),
    reviewer   text        NOT NULL CHECK (length(reviewer) BETWEEN 1 AND 256),
    comment    text        NOT NULL CHECK (length(comment) BETWEEN 1 AND 1024),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Append-only, with the ledger's own refusal function (0001).
CREATE TRIGGER risk_assessments_append_only BEFORE UPDATE OR DELETE ON risk_assessments
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER risk_assessments_no_truncate BEFORE TRUNCATE ON risk_assessments
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER compliance_checks_append_only BEFORE UPDATE OR DELETE ON compliance_checks
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER compliance_checks_no_truncate BEFORE TRUNCATE ON compliance_checks
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER compliance_alerts_append_only BEFORE UPDATE OR DELETE ON compliance_alerts
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER compliance_alerts_no_truncate BEFORE TRUNCATE ON compliance_alerts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER card_reviews_append_only BEFORE UPDATE OR DELETE ON card_reviews
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER card_reviews_no_truncate BEFORE TRUNCATE ON card_reviews
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
