-- Effectively-once (issue 4): the transactional outbox, idempotency keys for outside effects, enqueue-time
-- idempotency keys and completion webhooks. Idempotent: safe to run again on a database that has it.

-- The transactional outbox. A message is written in the transaction whose effects it announces, so it exists
-- iff that transaction commits; the relay delivers it at least once and marks it delivered (or dead).
-- Per key, a message is delivered only once every earlier message of its key is delivered or dead.
CREATE TABLE IF NOT EXISTS pgqueue.outbox (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        text        NOT NULL,
    -- Messages that share a key are delivered one at a time, in id order; NULL: no order with any other.
    key          text,
    -- json, not jsonb: the body a webhook receiver gets (and signs over) is byte for byte what was published.
    payload      json        NOT NULL,
    -- An HTTP(S) destination of its own (completion webhooks, alerts); NULL: the sink routed by topic.
    url          text,
    -- The same for every attempt: what a receiver deduplicates on (the webhook-id header).
    delivery_id  uuid        NOT NULL DEFAULT gen_random_uuid(),
    state        text        NOT NULL DEFAULT 'pending',
    attempt      integer     NOT NULL DEFAULT 0,
    -- Not before this time: the backoff after a failure, or the lease of a relay that claimed it.
    available_at timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    last_error   text,
    CONSTRAINT outbox_state_check CHECK (state IN ('pending', 'delivered', 'dead')),
    CONSTRAINT outbox_topic_check CHECK (topic ~ '^[A-Za-z0-9_.:-]{1,200}$'),
    CONSTRAINT outbox_url_check CHECK (url IS NULL OR url ~* '^https?://')
);

-- The relay reads pending messages oldest first, and asks per key whether an older one is still pending.
-- available_at is deliberately not indexed, so a claim (which moves it) is a HOT update.
CREATE INDEX IF NOT EXISTS outbox_pending_idx ON pgqueue.outbox (id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_pending_key_idx ON pgqueue.outbox (key, id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS outbox_dead_idx ON pgqueue.outbox (id) WHERE state = 'dead';
CREATE INDEX IF NOT EXISTS outbox_delivered_idx ON pgqueue.outbox (finished_at) WHERE state = 'delivered';

ALTER TABLE pgqueue.outbox SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 90
);

-- Wake the relay when messages commit: one notification per statement that inserted any, folded within a
-- transaction (the completion-report trigger runs an INSERT per completion batch, mostly of no rows).
CREATE OR REPLACE FUNCTION pgqueue.outbox_notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('pgqueue_outbox', '');
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS outbox_notify_inserted ON pgqueue.outbox;
CREATE TRIGGER outbox_notify_inserted
    AFTER INSERT ON pgqueue.outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.outbox_notify_inserted();

-- Results of idempotent blocks (ctx.idempotent, app.once). A block runs under a transaction-scoped advisory
-- lock on its key, so a row here means "done"; there is no "running" state to leave behind in a crash.
CREATE TABLE IF NOT EXISTS pgqueue.idempotency_keys (
    key        text        NOT NULL PRIMARY KEY,
    result     json,
    -- The job whose attempt ran the block (NULL outside jobs): where to look when asking why.
    job_id     bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS idempotency_keys_expires_idx ON pgqueue.idempotency_keys (expires_at);

-- enqueue(..., idempotency_key=...): the job a key made, for every later caller until the key expires.
CREATE TABLE IF NOT EXISTS pgqueue.enqueue_keys (
    key        text        NOT NULL PRIMARY KEY,
    job_id     bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX IF NOT EXISTS enqueue_keys_expires_idx ON pgqueue.enqueue_keys (expires_at);

-- enqueue(..., callback_url=...): where to report the job's outcome. Kept while the job exists, so a dead job
-- that is retried and then succeeds reports again.
CREATE TABLE IF NOT EXISTS pgqueue.job_callbacks (
    job_id bigint NOT NULL PRIMARY KEY,
    url    text   NOT NULL,
    CONSTRAINT job_callbacks_url_check CHECK (url ~* '^https?://')
);

-- Every way a job finishes (completion, failure, cancel, the lease reaper, SQL) inserts into finished_jobs, so
-- the outcome report is written here, in the same statement and transaction: it exists iff the outcome does.
-- Statement-level, so a batch of 1,000 completions costs one join against job_callbacks, not 1,000 calls.
CREATE OR REPLACE FUNCTION pgqueue.job_callbacks_report() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO pgqueue.outbox (topic, key, payload, url)
    SELECT 'pgqueue.job.' || f.state, 'pgqueue.job:' || f.id,
           json_build_object(
               'event', 'job.' || f.state, 'job_id', f.id, 'task', f.task, 'queue', f.queue, 'state', f.state,
               'attempt', f.attempt, 'result', f.result,
               'error', CASE WHEN f.state = 'dead' THEN json_build_object(
                   'type', f.error_type,
                   'message', (SELECT e.message FROM pgqueue.job_errors e WHERE e.job_id = f.id
                               ORDER BY e.id DESC LIMIT 1)) END,
               'finished_at', f.finished_at),
           c.url
    FROM finished AS f
    -- One primary-key probe per finished job, never a scan of job_callbacks: OFFSET 0 keeps the planner from
    -- turning this into a hash join that reads every callback on every completion batch.
    CROSS JOIN LATERAL (SELECT cb.url FROM pgqueue.job_callbacks AS cb WHERE cb.job_id = f.id OFFSET 0) AS c;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS finished_jobs_report ON pgqueue.finished_jobs;
CREATE TRIGGER finished_jobs_report
    AFTER INSERT ON pgqueue.finished_jobs
    REFERENCING NEW TABLE AS finished
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.job_callbacks_report();

-- A callback goes when its job is pruned or deleted; a job moved back to the queue (a retry) keeps it.
CREATE OR REPLACE FUNCTION pgqueue.job_callbacks_forget() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pgqueue.job_callbacks AS c
    USING removed AS r
    WHERE c.job_id = r.id AND NOT EXISTS (SELECT 1 FROM pgqueue.jobs j WHERE j.id = r.id);
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS finished_jobs_forget_callbacks ON pgqueue.finished_jobs;
CREATE TRIGGER finished_jobs_forget_callbacks
    AFTER DELETE ON pgqueue.finished_jobs
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.job_callbacks_forget();
