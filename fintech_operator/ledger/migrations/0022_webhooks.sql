-- 0022_webhooks: the notifier's delivery log, one queue per Webhook endpoint.
--
-- webhook_deliveries holds one row per (Webhook, event): enqueued by the notifier's Kafka
-- consumer (UNIQUE, so a redelivered Kafka record adds nothing), delivered by the worker that
-- owns the endpoint. A row is 'pending' until it is 'delivered' (a 2xx answer) or 'failed'
-- (attempts exhausted or too old); body is the exact CloudEvent bytes, so every attempt signs
-- the same content. A delivered row never changes again: no event is sent twice after a
-- success. webhook_delivery_attempts logs every HTTP attempt. webhook_endpoints holds each
-- endpoint's circuit breaker and last delivery, which the operator copies into the Webhook's
-- status. Finished deliveries are deleted by the notifier after its retention period.

CREATE TABLE webhook_endpoints (
    webhook_uid          uuid        PRIMARY KEY,  -- metadata.uid: a re-created Webhook is new
    namespace            text        NOT NULL CHECK (length(namespace) BETWEEN 1 AND 63),
    name                 text        NOT NULL CHECK (length(name) BETWEEN 1 AND 253),
    generation           bigint      NOT NULL DEFAULT 0 CHECK (generation >= 0),
    owner                text        CHECK (length(owner) <= 256),  -- notifier serving it
    problem              text        CHECK (length(problem) <= 1024),  -- why deliveries wait
    circuit              text        NOT NULL DEFAULT 'Closed'
                                     CHECK (circuit IN ('Closed', 'Open', 'HalfOpen')),
    circuit_open_until   timestamptz,
    consecutive_failures integer     NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    last_attempt_at      timestamptz,
    last_success_at      timestamptz,
    last_event_id        uuid,
    last_event_type      text        CHECK (length(last_event_type) <= 255),
    last_outcome         text        CHECK (last_outcome IN ('Delivered', 'Failed', 'Expired')),
    last_status_code     integer     CHECK (last_status_code BETWEEN 100 AND 599),
    last_error           text        CHECK (length(last_error) <= 1024),
    delivered_total      bigint      NOT NULL DEFAULT 0 CHECK (delivered_total >= 0),
    failed_total         bigint      NOT NULL DEFAULT 0 CHECK (failed_total >= 0),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_endpoints_open_until CHECK ((circuit = 'Open') = (circuit_open_until IS NOT NULL))
);

CREATE TABLE webhook_deliveries (
    id              bigserial   PRIMARY KEY,
    webhook_uid     uuid        NOT NULL,
    webhook         text        NOT NULL CHECK (webhook ~ '^[^/\s]+/[^/\s]+$'),  -- namespace/name
    event_id        uuid        NOT NULL,
    event_type      text        NOT NULL CHECK (length(event_type) BETWEEN 1 AND 255),
    body            bytea       NOT NULL CHECK (length(body) BETWEEN 2 AND 65536),
    state           text        NOT NULL DEFAULT 'pending'
                                CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts BETWEEN 0 AND 100),
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    last_status_code integer    CHECK (last_status_code BETWEEN 100 AND 599),
    last_error      text        CHECK (length(last_error) <= 1024),
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz,
    UNIQUE (webhook_uid, event_id),
    CONSTRAINT webhook_deliveries_finished CHECK ((state = 'pending') = (finished_at IS NULL))
);

-- The owner's worker reads its due rows oldest first; finished rows leave the index.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (webhook_uid, next_attempt_at, id)
    WHERE state = 'pending';
CREATE INDEX webhook_deliveries_finished_idx ON webhook_deliveries (finished_at)
    WHERE finished_at IS NOT NULL;

CREATE TABLE webhook_delivery_attempts (
    id           bigserial   PRIMARY KEY,
    delivery_id  bigint      NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt      integer     NOT NULL CHECK (attempt BETWEEN 1 AND 100),
    attempted_at timestamptz NOT NULL DEFAULT now(),
    outcome      text        NOT NULL CHECK (outcome IN ('Delivered', 'Failed')),
    status_code  integer     CHECK (status_code BETWEEN 100 AND 599),
    error        text        CHECK (length(error) <= 1024),
    duration_ms  integer     NOT NULL CHECK (duration_ms >= 0),
    UNIQUE (delivery_id, attempt)
);

-- A delivered row is final, and only a failed one may be queued again (by an operator).
CREATE FUNCTION webhook_delivery_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state = 'delivered' THEN
        RAISE EXCEPTION 'delivery % was delivered; it never changes again', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.webhook_uid, NEW.event_id, NEW.body) IS DISTINCT FROM
       (OLD.webhook_uid, OLD.event_id, OLD.body) THEN
        RAISE EXCEPTION 'delivery %: endpoint, event and body are immutable', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER webhook_deliveries_before_update BEFORE UPDATE ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION webhook_delivery_guard();

-- Wake the endpoint's worker at once (payload: the Webhook's uid).
CREATE FUNCTION webhook_delivery_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fintech_webhook_delivery', NEW.webhook_uid::text);
    RETURN NULL;
END $$;

CREATE TRIGGER webhook_deliveries_after_insert_notify AFTER INSERT ON webhook_deliveries
    FOR EACH ROW EXECUTE FUNCTION webhook_delivery_notify();
