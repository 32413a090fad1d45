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

-- ============================================================================================
-- The web layer (issue 7, migration 0004): API tokens, worker control and counters, alerts, depth samples.
-- ============================================================================================


-- API tokens, stored hashed. A token is 256 random bits, so a fast hash (SHA-256) is enough: there is nothing
-- to brute-force that a slow hash would protect. The prefix is kept in clear so a user can tell tokens apart.
CREATE TABLE IF NOT EXISTS pgqueue.api_tokens (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL,
    token_hash   bytea       NOT NULL,
    prefix       text        NOT NULL,
    scopes       text[]      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_tokens_hash_key UNIQUE (token_hash),
    CONSTRAINT api_tokens_scopes_check
        CHECK (cardinality(scopes) >= 1 AND scopes <@ ARRAY['enqueue', 'read', 'admin']::text[])
);

-- The control channel to workers: the API writes a request on the worker's row, the worker reads it at its next
-- heartbeat (and clears it). The same round trip reports the worker's counters, which /metrics exposes.
ALTER TABLE pgqueue.workers
    ADD COLUMN IF NOT EXISTS requested_concurrency integer
        CONSTRAINT workers_requested_concurrency_check CHECK (requested_concurrency BETWEEN 1 AND 10000),
    ADD COLUMN IF NOT EXISTS drain_requested_at timestamptz,
    ADD COLUMN IF NOT EXISTS jobs_claimed bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS jobs_dead bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS leases_reclaimed bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS notify_wakeups bigint NOT NULL DEFAULT 0;

-- Alert rules, evaluated by the leader of the serve processes. threshold means: a count of dead jobs
-- (dead_letters_above), a percentage of failed attempts over window_seconds (failure_rate_above), an age in
-- seconds (oldest_queued_above), a heartbeat age in seconds past which a worker is not live (no_live_worker).
-- queue NULL: every queue together.
CREATE TABLE IF NOT EXISTS pgqueue.alert_rules (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text        NOT NULL,
    kind              text        NOT NULL,
    queue             text,
    threshold         float8      NOT NULL,
    window_seconds    integer     NOT NULL DEFAULT 300,
    webhook_url       text        NOT NULL,
    enabled           boolean     NOT NULL DEFAULT true,
    firing            boolean     NOT NULL DEFAULT false,
    last_value        float8,
    last_evaluated_at timestamptz,
    changed_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_rules_name_key UNIQUE (name),
    CONSTRAINT alert_rules_kind_check
        CHECK (kind IN ('dead_letters_above', 'failure_rate_above', 'oldest_queued_above', 'no_live_worker')),
    CONSTRAINT alert_rules_threshold_check CHECK (threshold >= 0),
    CONSTRAINT alert_rules_window_check CHECK (window_seconds BETWEEN 10 AND 86400),
    CONSTRAINT alert_rules_webhook_check CHECK (webhook_url ~ '^https?://')
);

-- Alert history: one row per change of a rule (firing, resolved). It doubles as the webhook's delivery queue
-- until the transactional outbox lands: pending rows are posted, retried with backoff, then marked failed.
CREATE TABLE IF NOT EXISTS pgqueue.alert_events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id         bigint,
    rule_name       text        NOT NULL,
    kind            text        NOT NULL,
    queue           text,
    status          text        NOT NULL,
    value           float8,
    threshold       float8      NOT NULL,
    message         text        NOT NULL,
    webhook_url     text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivery        text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    last_error      text,
    CONSTRAINT alert_events_rule_fkey FOREIGN KEY (rule_id) REFERENCES pgqueue.alert_rules (id) ON DELETE SET NULL,
    CONSTRAINT alert_events_status_check CHECK (status IN ('firing', 'resolved')),
    CONSTRAINT alert_events_delivery_check CHECK (delivery IN ('pending', 'delivered', 'failed'))
);

CREATE INDEX IF NOT EXISTS alert_events_pending_idx ON pgqueue.alert_events (next_attempt_at)
    WHERE delivery = 'pending';
CREATE INDEX IF NOT EXISTS alert_events_created_idx ON pgqueue.alert_events (created_at);

-- Queue depth over time for the dashboard: the leader samples pgqueue.jobs every few seconds. The live table
-- keeps no history of its own, so this is the only way to draw the curve afterwards.
CREATE TABLE IF NOT EXISTS pgqueue.queue_depth_samples (
    queue      text        NOT NULL,
    sampled_at timestamptz NOT NULL,
    scheduled  bigint      NOT NULL,
    queued     bigint      NOT NULL,
    running    bigint      NOT NULL,
    CONSTRAINT queue_depth_samples_pkey PRIMARY KEY (queue, sampled_at)
);

CREATE INDEX IF NOT EXISTS queue_depth_samples_sampled_at_idx ON pgqueue.queue_depth_samples (sampled_at);
