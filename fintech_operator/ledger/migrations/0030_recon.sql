-- 0030_recon: reconciliation runs and the exceptions they found.
--
-- A ReconciliationRun object has one row here (by its uid). The row is created 'running' with
-- attempt 1; each time an operator (re)starts the work the attempt goes up, in its own committed
-- transaction. The work itself is ONE transaction that writes every exception and then marks the
-- row 'succeeded' with its summary, so a run interrupted half way leaves no exceptions behind and
-- is never reported complete. Triggers keep a finished run frozen: its exceptions cannot be added
-- to later, and its state, summary and times never change.

CREATE TABLE recon_runs (
    id           bigserial   PRIMARY KEY,
    uid          uuid        NOT NULL UNIQUE,
    namespace    text        NOT NULL CHECK (length(namespace) BETWEEN 1 AND 63),
    name         text        NOT NULL CHECK (length(name) BETWEEN 1 AND 253),
    attempt      integer     NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    state        text        NOT NULL DEFAULT 'running'
                             CHECK (state IN ('running', 'succeeded', 'failed')),
    dry_run      boolean     NOT NULL DEFAULT false,
    started_at   timestamptz NOT NULL DEFAULT now(),
    attempt_started_at timestamptz NOT NULL DEFAULT now(),
    completed_at timestamptz,
    summary      jsonb       CHECK (summary IS NULL OR jsonb_typeof(summary) = 'object'),
    reason       text        CHECK (reason IS NULL OR length(reason) BETWEEN 1 AND 128),
    message      text,
    CONSTRAINT recon_runs_completed CHECK ((state = 'running') = (completed_at IS NULL)),
    CONSTRAINT recon_runs_summary CHECK ((state = 'succeeded') = (summary IS NOT NULL)),
    CONSTRAINT recon_runs_failure CHECK ((state = 'failed') = (reason IS NOT NULL))
);

-- `fintech-operator recon report RUN` finds the newest row of a namespace/name.
CREATE INDEX recon_runs_name_idx ON recon_runs (namespace, name, id);

CREATE TABLE recon_exceptions (
    id         bigserial PRIMARY KEY,
    run_id     bigint    NOT NULL REFERENCES recon_runs (id) ON DELETE CASCADE,
    check_name text      NOT NULL
                         CHECK (check_name IN ('Settlement', 'TrialBalance', 'Rewards', 'Events')),
    kind       text      NOT NULL CHECK (kind ~ '^[A-Z][A-Za-z]{1,63}$'),
    severity   text      NOT NULL CHECK (severity IN ('error', 'info')),
    -- What the finding is about: a settlement reference, a journal, a card, an event id...
    reference  text,
    -- Where the record starts in the source file, for settlement findings.
    line_no    bigint    CHECK (line_no IS NULL OR line_no >= 1),
    -- What the ledger (or rule) says, and what was found, as human-readable text.
    expected   text,
    actual     text
);

CREATE INDEX recon_exceptions_run_idx ON recon_exceptions (run_id, id);

-- A finished run is frozen: no exception joins it afterwards, and its row never changes again.
-- Checked once per statement over the inserted rows, so a run's bulk INSERT stays fast.
CREATE FUNCTION recon_exceptions_after_insert() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    finished_run bigint;
BEGIN
    SELECT n.run_id INTO finished_run
      FROM new_rows n JOIN recon_runs r ON r.id = n.run_id
     WHERE r.state <> 'running'
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'run % is finished; its exceptions are frozen', finished_run
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER recon_exceptions_after_insert AFTER INSERT ON recon_exceptions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION recon_exceptions_after_insert();

CREATE FUNCTION recon_exceptions_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% on recon_exceptions is refused: a run''s findings are what it found',
        TG_OP USING ERRCODE = 'restrict_violation';
END $$;

-- Deleting is allowed (history pruning removes whole runs); rewriting a finding is not.
CREATE TRIGGER recon_exceptions_no_update BEFORE UPDATE ON recon_exceptions
    FOR EACH ROW EXECUTE FUNCTION recon_exceptions_refuse_change();

CREATE FUNCTION recon_run_before_update() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.state <> 'running' THEN
        RAISE EXCEPTION 'run % is % and cannot change', OLD.id, OLD.state
            USING ERRCODE = 'restrict_violation';
    END IF;
    IF (NEW.id, NEW.uid, NEW.namespace, NEW.name, NEW.started_at)
       IS DISTINCT FROM (OLD.id, OLD.uid, OLD.namespace, OLD.name, OLD.started_at) THEN
        RAISE EXCEPTION 'run %: id, uid, namespace, name and started_at are immutable', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER recon_runs_before_update BEFORE UPDATE ON recon_runs
    FOR EACH ROW EXECUTE FUNCTION recon_run_before_update();
