-- The canonical pgqueue schema: what applying every migration in sql/migrations/ produces.
-- tests/migration checks that the two agree. Read this file to learn the schema; change it with a migration.
-- Two tables hold jobs. `jobs` holds only live work (scheduled, queued, running): it stays small, so the claim
-- index stays small and hot whatever the history. `finished_jobs` holds what is done (succeeded, dead,
-- cancelled); every move between the two is one DELETE ... RETURNING feeding an INSERT, one atomic statement.
-- `job_errors` keeps a row per failed attempt; with the finished row (the last attempt's timings) that is a
-- fact per attempt: task, queue, worker, timings, error class.

CREATE SCHEMA IF NOT EXISTS pgqueue;

CREATE SEQUENCE pgqueue.job_id_seq AS bigint;

CREATE TABLE pgqueue.jobs (
    id               bigint      NOT NULL DEFAULT nextval('pgqueue.job_id_seq') PRIMARY KEY,
    queue            text        NOT NULL DEFAULT 'default',
    task             text        NOT NULL,
    -- json, not jsonb: the payload comes back byte for byte as it went in (key order, NUL escapes, numbers).
    args             json        NOT NULL DEFAULT '[]',
    kwargs           json        NOT NULL DEFAULT '{}',
    priority         smallint    NOT NULL DEFAULT 0,
    state            text        NOT NULL DEFAULT 'queued',
    attempt          integer     NOT NULL DEFAULT 0,
    max_attempts     integer     NOT NULL DEFAULT 10,
    scheduled_for    timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    lease_expires_at timestamptz,
    worker_id        uuid,
    CONSTRAINT jobs_state_check CHECK (state IN ('scheduled', 'queued', 'running')),
    CONSTRAINT jobs_priority_check CHECK (priority >= 0),
    CONSTRAINT jobs_max_attempts_check CHECK (max_attempts >= 1),
    CONSTRAINT jobs_queue_check CHECK (queue ~ '^[A-Za-z0-9_.:-]{1,100}$'),
    CONSTRAINT jobs_task_check CHECK (task ~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$'),
    CONSTRAINT jobs_args_check CHECK (json_typeof(args) = 'array' AND json_typeof(kwargs) = 'object')
);

-- The claim path. Partial on state = 'queued', so neither scheduled nor running rows are in it. Ordered the
-- way claims read it: priority first (higher first), then oldest scheduled_for, then id for a total order.
CREATE INDEX jobs_claim_queue_idx ON pgqueue.jobs (queue, priority DESC, scheduled_for, id)
    WHERE state = 'queued';
-- Workers that serve every queue read this one.
CREATE INDEX jobs_claim_any_idx ON pgqueue.jobs (priority DESC, scheduled_for, id)
    WHERE state = 'queued';
-- The promoter finds due scheduled jobs here.
CREATE INDEX jobs_scheduled_idx ON pgqueue.jobs (scheduled_for) WHERE state = 'scheduled';
-- Heartbeats and the lease reaper read running jobs only. lease_expires_at is deliberately not indexed, so
-- a heartbeat's lease renewal is a HOT update.
CREATE INDEX jobs_running_idx ON pgqueue.jobs (worker_id) WHERE state = 'running';

-- The live table churns (every job is inserted, updated twice and deleted); vacuum it early and often so
-- dead tuples never pile up in front of the claim index.
ALTER TABLE pgqueue.jobs SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 90
);

CREATE TABLE pgqueue.finished_jobs (
    id            bigint      NOT NULL PRIMARY KEY,
    queue         text        NOT NULL,
    task          text        NOT NULL,
    args          json        NOT NULL,
    kwargs        json        NOT NULL,
    priority      smallint    NOT NULL,
    state         text        NOT NULL,
    attempt       integer     NOT NULL,
    max_attempts  integer     NOT NULL,
    scheduled_for timestamptz NOT NULL,
    created_at    timestamptz NOT NULL,
    started_at    timestamptz,
    finished_at   timestamptz NOT NULL DEFAULT now(),
    worker_id     uuid,
    result        json,
    -- The class of the last error for dead jobs, kept here so history queries need no join.
    error_type    text,
    CONSTRAINT finished_jobs_state_check CHECK (state IN ('succeeded', 'dead', 'cancelled'))
);

CREATE INDEX finished_jobs_finished_at_idx ON pgqueue.finished_jobs (finished_at);
CREATE INDEX finished_jobs_dead_idx ON pgqueue.finished_jobs (queue, task, finished_at) WHERE state = 'dead';

CREATE TABLE pgqueue.job_errors (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id      bigint      NOT NULL,
    attempt     integer     NOT NULL,
    task        text        NOT NULL,
    queue       text        NOT NULL,
    worker_id   uuid,
    -- error: the handler raised; timeout: it overran; lease_expired: its worker vanished (crash, kill).
    kind        text        NOT NULL,
    error_type  text        NOT NULL,
    message     text        NOT NULL,
    traceback   text,
    started_at  timestamptz,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT job_errors_kind_check CHECK (kind IN ('error', 'timeout', 'lease_expired'))
);

CREATE INDEX job_errors_job_idx ON pgqueue.job_errors (job_id, attempt);
CREATE INDEX job_errors_failed_at_idx ON pgqueue.job_errors (failed_at);

CREATE TABLE pgqueue.workers (
    id                uuid        NOT NULL PRIMARY KEY,
    host              text        NOT NULL,
    pid               integer     NOT NULL,
    queues            text[],
    concurrency       integer     NOT NULL,
    state             text        NOT NULL DEFAULT 'running',
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now(),
    jobs_done         bigint      NOT NULL DEFAULT 0,
    jobs_failed       bigint      NOT NULL DEFAULT 0,
    CONSTRAINT workers_state_check CHECK (state IN ('running', 'draining'))
);

-- One notification per statement and queue, never one per row: a bulk insert of 100,000 jobs sends one.
-- Within a transaction PostgreSQL folds identical notifications, so a transaction that enqueues many jobs one
-- by one also wakes workers once per queue.
CREATE FUNCTION pgqueue.notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgqueue_jobs', q.queue)
    FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'queued') AS q;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_notify_inserted
    AFTER INSERT ON pgqueue.jobs
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.notify_inserted();

-- The SQL API: any client, language or trigger can enqueue inside its own transaction.
--   SELECT pgqueue.enqueue('send_email', '{"to": "a@b.c"}');
--   SELECT pgqueue.enqueue('resize', '[42]', queue => 'images', priority => 5, run_at => now() + '1 hour');
-- args: a JSON object (keyword arguments) or array (positional arguments). Returns the new job's id.
CREATE FUNCTION pgqueue.enqueue(
    task         text,
    args         json        DEFAULT '{}',
    queue        text        DEFAULT 'default',
    priority     integer     DEFAULT 0,
    run_at       timestamptz DEFAULT NULL,
    max_attempts integer     DEFAULT 10
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    limit_bytes bigint := coalesce(nullif(current_setting('pgqueue.max_payload_bytes', true), '')::bigint,
                                   1048576);
    new_id bigint;
BEGIN
    IF task IS NULL OR task !~ '^[A-Za-z_][A-Za-z0-9_.:-]{0,199}$' THEN
        RAISE EXCEPTION 'pgqueue: invalid task name %', quote_literal(coalesce(task, 'NULL'))
            USING ERRCODE = '22023', HINT = 'Task names are letters, digits and _ . : - (at most 200).';
    END IF;
    IF queue IS NULL OR queue !~ '^[A-Za-z0-9_.:-]{1,100}$' THEN
        RAISE EXCEPTION 'pgqueue: invalid queue name %', quote_literal(coalesce(queue, 'NULL'))
            USING ERRCODE = '22023', HINT = 'Queue names are letters, digits and _ . : - (at most 100).';
    END IF;
    IF priority IS NULL OR priority < 0 OR priority > 32767 THEN
        RAISE EXCEPTION 'pgqueue: priority must be between 0 and 32767, got %', priority
            USING ERRCODE = '22023';
    END IF;
    IF max_attempts IS NULL OR max_attempts < 1 THEN
        RAISE EXCEPTION 'pgqueue: max_attempts must be at least 1, got %', max_attempts
            USING ERRCODE = '22023';
    END IF;
    IF args IS NULL OR json_typeof(args) NOT IN ('object', 'array') THEN
        RAISE EXCEPTION 'pgqueue: args must be a JSON object (keyword arguments) or array (positional)'
            USING ERRCODE = '22023';
    END IF;
    IF octet_length(args::text) > limit_bytes THEN
        RAISE EXCEPTION 'pgqueue: payload of % bytes is over the limit of % bytes',
            octet_length(args::text), limit_bytes
            USING ERRCODE = '22023', HINT = 'Store large data elsewhere and pass a reference.';
    END IF;
    INSERT INTO pgqueue.jobs (queue, task, args, kwargs, priority, state, max_attempts, scheduled_for)
    VALUES (
        enqueue.queue, enqueue.task,
        CASE WHEN json_typeof(enqueue.args) = 'array' THEN enqueue.args ELSE '[]'::json END,
        CASE WHEN json_typeof(enqueue.args) = 'object' THEN enqueue.args ELSE '{}'::json END,
        enqueue.priority,
        CASE WHEN enqueue.run_at > now() THEN 'scheduled' ELSE 'queued' END,
        enqueue.max_attempts,
        coalesce(greatest(enqueue.run_at, now()), now())
    )
    RETURNING id INTO new_id;
    RETURN new_id;
END;
$$;

-- Monitoring views. Counts of live states read the small live table; finished figures read the last minute
-- of finished_jobs through its finished_at index, so neither grows with history.
CREATE VIEW pgqueue.queue_stats AS
WITH live AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE state = 'queued') AS queued,
           count(*) FILTER (WHERE state = 'running') AS running,
           max(now() - scheduled_for) FILTER (WHERE state = 'queued') AS oldest_queued_age
    FROM pgqueue.jobs GROUP BY queue
), recent AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'succeeded') AS succeeded_last_minute,
           count(*) FILTER (WHERE state = 'dead') AS dead_last_minute
    FROM pgqueue.finished_jobs WHERE finished_at > now() - interval '1 minute' GROUP BY queue
), failures AS (
    SELECT queue, count(*) AS failed_last_minute
    FROM pgqueue.job_errors WHERE failed_at > now() - interval '1 minute' GROUP BY queue
), dead AS (
    SELECT queue, count(*) AS dead FROM pgqueue.finished_jobs WHERE state = 'dead' GROUP BY queue
)
SELECT q.queue,
       coalesce(live.scheduled, 0) AS scheduled,
       coalesce(live.queued, 0) AS queued,
       coalesce(live.running, 0) AS running,
       coalesce(dead.dead, 0) AS dead,
       live.oldest_queued_age,
       coalesce(recent.succeeded_last_minute, 0) AS succeeded_last_minute,
       coalesce(failures.failed_last_minute, 0) AS failed_last_minute,
       coalesce(recent.dead_last_minute, 0) AS dead_last_minute
FROM (SELECT queue FROM live UNION SELECT queue FROM recent UNION SELECT queue FROM dead) AS q
LEFT JOIN live USING (queue)
LEFT JOIN recent USING (queue)
LEFT JOIN failures USING (queue)
LEFT JOIN dead USING (queue);

CREATE VIEW pgqueue.worker_stats AS
SELECT w.id, w.host, w.pid, w.queues, w.concurrency, w.state, w.started_at, w.last_heartbeat_at,
       now() - w.started_at AS uptime,
       (SELECT count(*) FROM pgqueue.jobs j WHERE j.state = 'running' AND j.worker_id = w.id) AS running,
       w.jobs_done, w.jobs_failed
FROM pgqueue.workers w;

CREATE VIEW pgqueue.dead_letters AS
SELECT f.id, f.queue, f.task, f.args, f.kwargs, f.attempt, f.max_attempts, f.created_at, f.finished_at,
       f.error_type, e.message AS error_message
FROM pgqueue.finished_jobs f
LEFT JOIN LATERAL (
    SELECT message FROM pgqueue.job_errors e WHERE e.job_id = f.id ORDER BY e.id DESC LIMIT 1
) e ON true
WHERE f.state = 'dead';

-- ==========================================================================================================
-- Effectively once (issue 4; migration 0003): the transactional outbox, idempotency keys for outside effects,
-- enqueue-time idempotency keys, completion webhooks.
-- ==========================================================================================================

-- The transactional outbox. A message is written in the transaction whose effects it announces, so it exists
-- iff that transaction commits; the relay delivers it at least once and marks it delivered (or dead).
-- Per key, a message is delivered only once every earlier message of its key is delivered or dead.
CREATE TABLE pgqueue.outbox (
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
CREATE INDEX outbox_pending_idx ON pgqueue.outbox (id) WHERE state = 'pending';
CREATE INDEX outbox_pending_key_idx ON pgqueue.outbox (key, id) WHERE state = 'pending';
CREATE INDEX outbox_dead_idx ON pgqueue.outbox (id) WHERE state = 'dead';
CREATE INDEX outbox_delivered_idx ON pgqueue.outbox (finished_at) WHERE state = 'delivered';

ALTER TABLE pgqueue.outbox SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 90
);

-- Wake the relay when messages commit: one notification per statement that inserted any, folded within a
-- transaction (the completion-report trigger runs an INSERT per completion batch, mostly of no rows).
CREATE FUNCTION pgqueue.outbox_notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
        PERFORM pg_notify('pgqueue_outbox', '');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER outbox_notify_inserted
    AFTER INSERT ON pgqueue.outbox
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.outbox_notify_inserted();

-- Results of idempotent blocks (ctx.idempotent, app.once). A block runs under a transaction-scoped advisory
-- lock on its key, so a row here means "done"; there is no "running" state to leave behind in a crash.
CREATE TABLE pgqueue.idempotency_keys (
    key        text        NOT NULL PRIMARY KEY,
    result     json,
    -- The job whose attempt ran the block (NULL outside jobs): where to look when asking why.
    job_id     bigint,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX idempotency_keys_expires_idx ON pgqueue.idempotency_keys (expires_at);

-- enqueue(..., idempotency_key=...): the job a key made, for every later caller until the key expires.
CREATE TABLE pgqueue.enqueue_keys (
    key        text        NOT NULL PRIMARY KEY,
    job_id     bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);

CREATE INDEX enqueue_keys_expires_idx ON pgqueue.enqueue_keys (expires_at);

-- enqueue(..., callback_url=...): where to report the job's outcome. Kept while the job exists, so a dead job
-- that is retried and then succeeds reports again.
CREATE TABLE pgqueue.job_callbacks (
    job_id bigint NOT NULL PRIMARY KEY,
    url    text   NOT NULL,
    CONSTRAINT job_callbacks_url_check CHECK (url ~* '^https?://')
);

-- Every way a job finishes (completion, failure, cancel, the lease reaper, SQL) inserts into finished_jobs, so
-- the outcome report is written here, in the same statement and transaction: it exists iff the outcome does.
-- Statement-level, so a batch of 1,000 completions costs one join against job_callbacks, not 1,000 calls.
CREATE FUNCTION pgqueue.job_callbacks_report() RETURNS trigger
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

CREATE TRIGGER finished_jobs_report
    AFTER INSERT ON pgqueue.finished_jobs
    REFERENCING NEW TABLE AS finished
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.job_callbacks_report();

-- A callback goes when its job is pruned or deleted; a job moved back to the queue (a retry) keeps it.
CREATE FUNCTION pgqueue.job_callbacks_forget() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pgqueue.job_callbacks AS c
    USING removed AS r
    WHERE c.job_id = r.id AND NOT EXISTS (SELECT 1 FROM pgqueue.jobs j WHERE j.id = r.id);
    RETURN NULL;
END;
$$;

CREATE TRIGGER finished_jobs_forget_callbacks
    AFTER DELETE ON pgqueue.finished_jobs
    REFERENCING OLD TABLE AS removed
    FOR EACH STATEMENT EXECUTE FUNCTION pgqueue.job_callbacks_forget();
