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
    group_key         text,
    unique_key        text,
    batch_id          bigint,
    has_dependants    boolean NOT NULL DEFAULT false,
    on_parent_failure text    NOT NULL DEFAULT 'cancel',
    cancel_requested  boolean NOT NULL DEFAULT false,
    progress          real,
    progress_message  text,
    pending_parents   integer NOT NULL DEFAULT 0,
    parent_failed     boolean NOT NULL DEFAULT false,
    CONSTRAINT jobs_state_check CHECK (state IN ('waiting', 'scheduled', 'queued', 'running')),
    CONSTRAINT jobs_group_key_check CHECK (octet_length(group_key) <= 200),
    CONSTRAINT jobs_unique_key_check CHECK (octet_length(unique_key) <= 500),
    CONSTRAINT jobs_on_parent_failure_check CHECK (on_parent_failure IN ('cancel', 'run')),
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
    group_key        text,
    unique_key       text,
    batch_id         bigint,
    has_dependants   boolean NOT NULL DEFAULT false,
    progress         real,
    progress_message text,
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

-- ==== Scheduling and flow control (migration 0002) ====

-- At most one live job per unique key: the live table holds only unfinished jobs, so a key is free again the
-- moment its job finishes, with nothing to clean up.
CREATE UNIQUE INDEX jobs_unique_key_idx ON pgqueue.jobs (unique_key) WHERE unique_key IS NOT NULL;
CREATE INDEX finished_jobs_unique_key_idx ON pgqueue.finished_jobs (unique_key, finished_at)
    WHERE unique_key IS NOT NULL;
-- Fair claims walk the groups that have queued work with a loose index scan over this index.
CREATE INDEX jobs_claim_group_idx ON pgqueue.jobs (queue, group_key, priority DESC, scheduled_for, id)
    WHERE state = 'queued' AND group_key IS NOT NULL;
-- Concurrency limits count running jobs per queue and group (at most the sum of all workers' slots).
CREATE INDEX jobs_running_queue_idx ON pgqueue.jobs (queue, group_key) WHERE state = 'running';
CREATE INDEX jobs_waiting_idx ON pgqueue.jobs (id) WHERE state = 'waiting';
CREATE INDEX jobs_batch_idx ON pgqueue.jobs (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX finished_jobs_batch_idx ON pgqueue.finished_jobs (batch_id) WHERE batch_id IS NOT NULL;

-- Per-queue settings. A queue without a row (or with a row of defaults) is a plain queue.
CREATE TABLE pgqueue.queues (
    name                    text        PRIMARY KEY,
    paused                  boolean     NOT NULL DEFAULT false,
    concurrency_limit       integer,
    rate_limit              integer,
    rate_period             float8,
    group_concurrency_limit integer,
    group_rate_limit        integer,
    group_rate_period       float8,
    fair                    boolean     NOT NULL DEFAULT false,
    priority_aging          float8,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT queues_name_check CHECK (name ~ '^[A-Za-z0-9_.:-]{1,100}$'),
    CONSTRAINT queues_limits_check CHECK (
        coalesce(concurrency_limit, 1) >= 0 AND coalesce(group_concurrency_limit, 1) >= 0
        AND coalesce(rate_limit, 1) >= 0 AND coalesce(group_rate_limit, 1) >= 0
        AND (rate_limit IS NULL) = (rate_period IS NULL) AND coalesce(rate_period, 1) > 0
        AND (group_rate_limit IS NULL) = (group_rate_period IS NULL) AND coalesce(group_rate_period, 1) > 0
        AND coalesce(priority_aging, 1) > 0
    ),
    -- A controlled queue is claimed through pgqueue.claim_controlled(); the plain claim leaves it alone.
    controlled boolean GENERATED ALWAYS AS (
        paused OR fair OR concurrency_limit IS NOT NULL OR rate_limit IS NOT NULL
        OR group_concurrency_limit IS NOT NULL OR group_rate_limit IS NOT NULL
    ) STORED
);

-- Per-group state of fair queues: weighted virtual time (a group that got more service waits its turn).
CREATE TABLE pgqueue.job_groups (
    queue     text    NOT NULL,
    group_key text    NOT NULL,
    weight    float8  NOT NULL DEFAULT 1,
    vtime     float8  NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, group_key),
    CONSTRAINT job_groups_weight_check CHECK (weight > 0)
);

-- Starts within the rate window, for rate-limited queues and groups only. group_key '' is the queue itself.
CREATE TABLE pgqueue.rate_starts (
    queue      text        NOT NULL,
    group_key  text        NOT NULL,
    started_at timestamptz NOT NULL
);
CREATE INDEX rate_starts_idx ON pgqueue.rate_starts (queue, group_key, started_at);

-- Dependencies: job_id waits for every parent_id to finish.
-- settled: the parent's outcome has been counted in the child's pending_parents (exactly once, even if the
-- parent is later retried from the dead letters and finishes again).
CREATE TABLE pgqueue.job_dependencies (
    job_id    bigint  NOT NULL,
    parent_id bigint  NOT NULL,
    settled   boolean NOT NULL DEFAULT false,
    PRIMARY KEY (job_id, parent_id)
);
CREATE INDEX job_dependencies_parent_idx ON pgqueue.job_dependencies (parent_id);

CREATE TABLE pgqueue.batches (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text        NOT NULL,
    total           integer     NOT NULL,
    callback_job_id bigint,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Cron schedules. source 'code' rows mirror @app.periodic declarations; 'cli' rows come from `pgqueue cron add`.
CREATE TABLE pgqueue.schedules (
    name         text        PRIMARY KEY,
    cron         text        NOT NULL,
    timezone     text        NOT NULL DEFAULT 'UTC',
    task         text        NOT NULL,
    args         json        NOT NULL DEFAULT '[]',
    kwargs       json        NOT NULL DEFAULT '{}',
    queue        text        NOT NULL DEFAULT 'default',
    priority     smallint    NOT NULL DEFAULT 0,
    max_attempts integer     NOT NULL DEFAULT 10,
    missed       text        NOT NULL DEFAULT 'once',
    max_catchup  integer     NOT NULL DEFAULT 100,
    paused       boolean     NOT NULL DEFAULT false,
    source       text        NOT NULL DEFAULT 'cli',
    last_tick_at timestamptz NOT NULL DEFAULT now(),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_missed_check CHECK (missed IN ('skip', 'once', 'all')),
    CONSTRAINT schedules_source_check CHECK (source IN ('code', 'cli')),
    CONSTRAINT schedules_catchup_check CHECK (max_catchup BETWEEN 1 AND 10000)
);

-- Exactly once per (schedule, tick), whatever the number of schedulers, stale or not.
CREATE TABLE pgqueue.schedule_ticks (
    schedule   text        NOT NULL,
    tick       timestamptz NOT NULL,
    job_id     bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, tick)
);

-- Settle the dependants of a finished parent. Runs as a row trigger on finished_jobs (only for parents that
-- have dependants), so every way a job finishes (completion, dead, cancel, reaper) settles its children in
-- the same transaction. It is VOLATILE: each statement takes a fresh snapshot, so it sees a dependant enqueued
-- by a transaction that committed while this one waited for the parent's row lock. Each child keeps a count
-- of unsettled parents, so a batch callback waiting on 10,000 jobs costs O(1) per finished parent.
CREATE FUNCTION pgqueue.settle_dependants() RETURNS trigger
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    edge record;
    child record;
BEGIN
    FOR edge IN
        UPDATE pgqueue.job_dependencies SET settled = true
        WHERE parent_id = NEW.id AND NOT settled
        RETURNING job_id
    LOOP
        UPDATE pgqueue.jobs
        SET pending_parents = pending_parents - 1, parent_failed = parent_failed OR NEW.state <> 'succeeded'
        WHERE id = edge.job_id AND state = 'waiting'
        RETURNING id, queue, pending_parents, parent_failed, on_parent_failure INTO child;
        CONTINUE WHEN child.id IS NULL OR child.pending_parents > 0;
        IF child.parent_failed AND child.on_parent_failure = 'cancel' THEN
            -- Moving it to finished_jobs fires this trigger again for its own dependants: a cascade.
            WITH c AS (DELETE FROM pgqueue.jobs WHERE id = child.id RETURNING *)
            INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt,
                max_attempts, scheduled_for, created_at, finished_at, group_key, unique_key, batch_id,
                has_dependants, error_type)
            SELECT id, queue, task, args, kwargs, priority, 'cancelled', attempt, max_attempts, scheduled_for,
                   created_at, now(), group_key, unique_key, batch_id, has_dependants, 'ParentFailed'
            FROM c;
        ELSE
            UPDATE pgqueue.jobs SET state = 'queued', scheduled_for = greatest(scheduled_for, now())
            WHERE id = child.id;
            PERFORM pg_notify('pgqueue_jobs', child.queue);
        END IF;
        child := NULL;
    END LOOP;
    RETURN NULL;
END;
$$;

CREATE TRIGGER finished_jobs_settle_dependants
    AFTER INSERT ON pgqueue.finished_jobs
    FOR EACH ROW WHEN (NEW.has_dependants)
    EXECUTE FUNCTION pgqueue.settle_dependants();

-- Enqueue a job that waits for parents (and optionally joins a batch). Live parents are locked first (the
-- has_dependants flag), so none can finish unseen while this runs; a fresh statement then counts them.
CREATE FUNCTION pgqueue.enqueue_dependent(
    p_task text, p_args json, p_kwargs json, p_queue text, p_priority integer, p_max_attempts integer,
    p_run_at timestamptz, p_depends_on bigint[], p_on_parent_failure text, p_group_key text,
    p_unique_key text, p_batch_id bigint
) RETURNS TABLE (id bigint, state text, scheduled_for timestamptz, created_at timestamptz)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    live bigint[];
    unknown bigint;
    failed boolean;
    new_state text;
    new_id bigint := nextval('pgqueue.job_id_seq');
BEGIN
    UPDATE pgqueue.jobs SET has_dependants = true WHERE jobs.id = ANY(p_depends_on);
    SELECT p INTO unknown FROM unnest(p_depends_on) AS p
    WHERE NOT EXISTS (SELECT 1 FROM pgqueue.jobs j WHERE j.id = p)
      AND NOT EXISTS (SELECT 1 FROM pgqueue.finished_jobs f WHERE f.id = p)
    LIMIT 1;
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'pgqueue: depends_on names job %, which does not exist', unknown
            USING ERRCODE = '22023', HINT = 'Parents must be enqueued (and committed, or in this transaction) first.';
    END IF;
    SELECT coalesce(array_agg(DISTINCT j.id), '{}') INTO live FROM pgqueue.jobs j WHERE j.id = ANY(p_depends_on);
    SELECT coalesce(bool_or(f.state <> 'succeeded'), false) INTO failed
    FROM pgqueue.finished_jobs f WHERE f.id = ANY(p_depends_on);
    new_state := CASE
        WHEN cardinality(live) > 0 THEN 'waiting'
        WHEN failed AND p_on_parent_failure = 'cancel' THEN 'cancelled'
        WHEN p_run_at > now() THEN 'scheduled'
        ELSE 'queued' END;
    INSERT INTO pgqueue.job_dependencies (job_id, parent_id, settled)
    SELECT DISTINCT new_id, p, NOT (p = ANY(live)) FROM unnest(p_depends_on) AS p;
    IF new_state = 'cancelled' THEN
        INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts,
            scheduled_for, created_at, finished_at, group_key, unique_key, batch_id, error_type)
        VALUES (new_id, p_queue, p_task, p_args, p_kwargs, p_priority, 'cancelled', 0, p_max_attempts,
                now(), now(), now(), p_group_key, p_unique_key, p_batch_id, 'ParentFailed');
    ELSE
        INSERT INTO pgqueue.jobs (id, queue, task, args, kwargs, priority, state, max_attempts, scheduled_for,
                                  on_parent_failure, group_key, unique_key, batch_id, pending_parents,
                                  parent_failed)
        VALUES (new_id, p_queue, p_task, p_args, p_kwargs, p_priority, new_state, p_max_attempts,
                greatest(coalesce(p_run_at, now()), now()), p_on_parent_failure, p_group_key, p_unique_key,
                p_batch_id, cardinality(live), failed);
    END IF;
    RETURN QUERY SELECT new_id, new_state, greatest(coalesce(p_run_at, now()), now()), now();
END;
$$;

-- Claim from a controlled queue: paused, limited or fair. The queue's row is locked for the claim, so the
-- claimers of one controlled queue take turns and every count they read is exact; plain queues never come here.
CREATE FUNCTION pgqueue.claim_controlled(p_queue text, p_worker uuid, p_lease float8, p_limit integer)
RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cfg pgqueue.queues;
    allowance integer := p_limit;
    running integer;
    started integer;
    group_keys text[];
    group_vtimes float8[];
    group_weights float8[];
    group_shares integer[];
    group_allow integer;
    due integer;
    carry integer;
    taken integer;
    ids bigint[] := '{}';
    picked bigint[];
BEGIN
    SELECT * INTO cfg FROM pgqueue.queues WHERE name = p_queue FOR UPDATE;
    IF NOT FOUND OR cfg.paused THEN
        RETURN;
    END IF;
    IF cfg.concurrency_limit IS NOT NULL THEN
        SELECT count(*) INTO running FROM pgqueue.jobs WHERE queue = p_queue AND state = 'running';
        allowance := least(allowance, cfg.concurrency_limit - running);
    END IF;
    IF cfg.rate_limit IS NOT NULL THEN
        SELECT count(*) INTO started FROM pgqueue.rate_starts
        WHERE queue = p_queue AND group_key = '' AND started_at > now() - make_interval(secs => cfg.rate_period);
        allowance := least(allowance, cfg.rate_limit - started);
    END IF;
    IF allowance <= 0 THEN
        RETURN;
    END IF;

    IF cfg.fair OR cfg.group_concurrency_limit IS NOT NULL OR cfg.group_rate_limit IS NOT NULL THEN
        -- Groups with queued work, found by a loose index scan, served lowest virtual time first. A group's
        -- virtual time grows by 1/weight per job it is given, so a group with a million jobs cannot take every
        -- slot and one of weight 3 gets three claims for every one of weight 1.
        WITH RECURSIVE g AS (
            (SELECT j.group_key FROM pgqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = p_queue AND j.group_key IS NOT NULL
             ORDER BY j.group_key LIMIT 1)
            UNION ALL
            SELECT (SELECT j.group_key FROM pgqueue.jobs j
                    WHERE j.state = 'queued' AND j.queue = p_queue AND j.group_key > g.group_key
                    ORDER BY j.group_key LIMIT 1)
            FROM g WHERE g.group_key IS NOT NULL
        ), active AS (
            SELECT g.group_key,
                   coalesce(s.vtime, (SELECT coalesce(min(vtime), 0) FROM pgqueue.job_groups WHERE queue = p_queue))
                       AS vtime,
                   coalesce(s.weight, 1) AS weight
            FROM g LEFT JOIN pgqueue.job_groups s ON s.queue = p_queue AND s.group_key = g.group_key
            WHERE g.group_key IS NOT NULL
        )
        SELECT coalesce(array_agg(a.group_key ORDER BY a.vtime, a.group_key), '{}'),
               coalesce(array_agg(a.vtime ORDER BY a.vtime, a.group_key), '{}'),
               coalesce(array_agg(a.weight ORDER BY a.vtime, a.group_key), '{}')
        INTO group_keys, group_vtimes, group_weights FROM active a;
        -- Each group's share of this claim, by weighted fair queueing: a group's k-th next job starts at virtual
        -- time vtime + (k - 1) / weight, and the claim takes the `allowance` earliest starts. A group's first
        -- start is its vtime, so only the first `allowance` groups in vtime order can hold one. (An even split of
        -- one claim among its groups ignored the weights whenever a claim asked for more than one job.)
        SELECT coalesce(array_agg(coalesce(t.n, 0) ORDER BY g.i), '{}') INTO group_shares
        FROM generate_series(1, least(cardinality(group_keys), allowance)) AS g(i)
        LEFT JOIN (
            SELECT s.i, count(*)::integer AS n FROM (
                SELECT g2.i FROM generate_series(1, least(cardinality(group_keys), allowance)) AS g2(i),
                                 generate_series(0, allowance - 1) AS k
                ORDER BY group_vtimes[g2.i] + k / group_weights[g2.i], g2.i
                LIMIT allowance
            ) AS s GROUP BY s.i
        ) AS t ON t.i = g.i;
        -- Two sweeps in virtual time order. The first gives each group its share, plus what groups before it
        -- could not take (limits, fewer jobs, rows locked by others). A group short of jobs late in the order
        -- leaves part unused; the second sweep hands that round again, so a claim comes back short only when
        -- the queue is. Not with per-group limits: their counts are read once per group, in the first sweep.
        FOR sweep IN 1 .. 2 LOOP
            EXIT WHEN allowance <= 0 OR (sweep = 2 AND (cardinality(ids) = 0
                OR cfg.group_concurrency_limit IS NOT NULL OR cfg.group_rate_limit IS NOT NULL));
            carry := 0;
            FOR i IN 1 .. cardinality(group_keys) LOOP
                EXIT WHEN allowance <= 0;
                due := CASE WHEN sweep = 1 THEN coalesce(group_shares[i], 0) + carry ELSE allowance END;
                group_allow := least(allowance, due);
                IF cfg.group_concurrency_limit IS NOT NULL THEN
                    SELECT count(*) INTO running FROM pgqueue.jobs
                    WHERE queue = p_queue AND group_key = group_keys[i] AND state = 'running';
                    group_allow := least(group_allow, cfg.group_concurrency_limit - running);
                END IF;
                IF cfg.group_rate_limit IS NOT NULL THEN
                    SELECT count(*) INTO started FROM pgqueue.rate_starts
                    WHERE queue = p_queue AND group_key = group_keys[i]
                      AND started_at > now() - make_interval(secs => cfg.group_rate_period);
                    group_allow := least(group_allow, cfg.group_rate_limit - started);
                END IF;
                carry := due;
                CONTINUE WHEN group_allow <= 0;
                -- SKIP LOCKED passes over other transactions' locks, not ours: leave out what we picked.
                SELECT array_agg(c.id) INTO picked FROM (
                    SELECT j.id FROM pgqueue.jobs j
                    WHERE j.state = 'queued' AND j.queue = p_queue AND j.group_key = group_keys[i]
                      AND j.id <> ALL (ids)
                    ORDER BY j.priority DESC, j.scheduled_for, j.id
                    LIMIT group_allow FOR UPDATE SKIP LOCKED
                ) AS c;
                taken := coalesce(cardinality(picked), 0);
                carry := due - taken;
                CONTINUE WHEN taken = 0;
                ids := ids || picked;
                allowance := allowance - taken;
                INSERT INTO pgqueue.job_groups AS s (queue, group_key, vtime)
                VALUES (p_queue, group_keys[i], group_vtimes[i] + taken / group_weights[i])
                ON CONFLICT (queue, group_key) DO UPDATE SET vtime = s.vtime + taken / s.weight;
                IF cfg.group_rate_limit IS NOT NULL THEN
                    INSERT INTO pgqueue.rate_starts SELECT p_queue, group_keys[i], now() FROM generate_series(1, taken);
                END IF;
            END LOOP;
        END LOOP;
        -- Jobs without a group share what the groups left.
        IF allowance > 0 THEN
            SELECT array_agg(c.id) INTO picked FROM (
                SELECT j.id FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = p_queue AND j.group_key IS NULL
                ORDER BY j.priority DESC, j.scheduled_for, j.id
                LIMIT allowance FOR UPDATE SKIP LOCKED
            ) AS c;
            ids := ids || coalesce(picked, '{}');
        END IF;
    ELSE
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT j.id FROM pgqueue.jobs j
            WHERE j.state = 'queued' AND j.queue = p_queue
            ORDER BY j.priority DESC, j.scheduled_for, j.id
            LIMIT allowance FOR UPDATE SKIP LOCKED
        ) AS c;
        ids := coalesce(picked, '{}');
    END IF;

    IF cfg.rate_limit IS NOT NULL AND cardinality(ids) > 0 THEN
        INSERT INTO pgqueue.rate_starts SELECT p_queue, '', now() FROM generate_series(1, cardinality(ids));
    END IF;
    RETURN QUERY
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, started_at = now(), worker_id = p_worker,
        lease_expires_at = now() + make_interval(secs => p_lease)
    WHERE j.id = ANY(ids)
    RETURNING j.*;
END;
$$;

-- Per queue: counts per state, oldest queued age, what finished and failed in the last minute, pause.
CREATE VIEW pgqueue.queue_stats AS
WITH live AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE state = 'queued') AS queued,
           count(*) FILTER (WHERE state = 'running') AS running,
           max(now() - scheduled_for) FILTER (WHERE state = 'queued') AS oldest_queued_age,
           count(*) FILTER (WHERE state = 'waiting') AS waiting
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
       coalesce(recent.dead_last_minute, 0) AS dead_last_minute,
       coalesce(live.waiting, 0) AS waiting,
       coalesce(settings.paused, false) AS paused
FROM (SELECT queue FROM live UNION SELECT queue FROM recent UNION SELECT queue FROM dead
      UNION SELECT name FROM pgqueue.queues) AS q
LEFT JOIN live USING (queue)
LEFT JOIN recent USING (queue)
LEFT JOIN failures USING (queue)
LEFT JOIN dead USING (queue)
LEFT JOIN pgqueue.queues AS settings ON settings.name = q.queue;

-- ---------------------------------------------------------------------------------------------------------
-- Fault tolerance and least privilege (issue 6, migration 0005). notify_inserted replaces the definition above.
-- ---------------------------------------------------------------------------------------------------------


-- Enqueue notifications under contention. PostgreSQL serialises the commits of every transaction that sent a
-- NOTIFY (a cluster-wide lock is held from pre-commit until the commit is flushed), so hundreds of enqueuers
-- each notifying committed one at a time: a fifth of the throughput with notifications off. Now, among the
-- transactions that started in the same 100 ms slot and enqueue into one queue at the same time, only the one
-- that takes the slot's advisory lock without waiting notifies; the others commit in parallel and leave the
-- wake-up to it. A worker woken by a notification claims once more shortly after (for the enqueues that
-- committed just after it), and the safety poll bounds every other wait. Without contention every enqueue
-- still notifies. `SET pgqueue.notify = off` turns a session's notifications off altogether. (Body as of
-- migration 0010: the DISTINCT over the inserted rows cost most of what notifying added to a one-job enqueue.)
CREATE OR REPLACE FUNCTION pgqueue.notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- SET pgqueue.notify = off: no wake-ups from this session (a bulk load; workers find the jobs when they
    -- next look: at once if busy, else at their safety poll).
    IF current_setting('pgqueue.notify', true) = 'off' THEN
        RETURN NULL;
    END IF;
    -- Row by row, with no DISTINCT: once this transaction holds a queue's slot lock, taking it again for the
    -- queue's next rows is a look-up in its own lock table, and pg_notify folds the repeats. The key mixes
    -- the queue's hash with the number of the 100 ms slot.
    PERFORM pg_notify('pgqueue_jobs', queue)
    FROM inserted
    WHERE state = 'queued'
      AND pg_try_advisory_xact_lock(
          1885827445, hashtext(queue) # (floor(date_part('epoch', now()) * 10)::bigint % 2147483647)::integer);
    RETURN NULL;
END;
$$;

-- Least privilege. pgqueue.enqueue runs with its owner's rights (SECURITY DEFINER), so a role may enqueue
-- through it without any right on the tables; its search_path is pinned, so no object a caller creates can
-- stand in for one the function uses. Only roles granted EXECUTE may call it (`pgqueue roles` grants it).
-- Whatever the function's signature: a later migration that replaces it must restate both attributes
-- (tests/chaos checks that every SECURITY DEFINER function in the schema pins its search_path).
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'pgqueue'::regnamespace AND p.proname = 'enqueue'
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', fn);
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END;
$$;

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

-- Migration 6 (issue 7 follow-ups): alerts delivered through the transactional outbox.
-- The outbox message that delivers this event. NULL only for events recorded before this migration that had
-- already been delivered or given up on: those keep their own delivery columns, which newer events ignore.
ALTER TABLE pgqueue.alert_events ADD COLUMN IF NOT EXISTS outbox_id bigint;

-- Events still waiting for the old delivery become outbox messages, so none is dropped by the upgrade.
WITH waiting AS (
    SELECT id, rule_id, rule_name, kind, queue, status, value, threshold, message, webhook_url, created_at
    FROM pgqueue.alert_events
    WHERE delivery = 'pending' AND outbox_id IS NULL
    ORDER BY id
    FOR UPDATE
), sent AS (
    INSERT INTO pgqueue.outbox (topic, key, payload, url)
    SELECT 'pgqueue.alert.' || w.status, 'pgqueue.alert:' || coalesce(w.rule_id::text, w.rule_name),
           json_build_object('event', 'alert.' || w.status, 'event_id', w.id, 'alert', w.rule_name,
                             'kind', w.kind, 'queue', w.queue, 'status', w.status, 'value', w.value,
                             'threshold', w.threshold, 'message', w.message, 'at', w.created_at),
           w.webhook_url
    FROM waiting AS w
    ORDER BY w.id
    RETURNING id, (payload ->> 'event_id')::bigint AS event_id
)
UPDATE pgqueue.alert_events AS e SET outbox_id = sent.id FROM sent WHERE e.id = sent.event_id;

-- The old delivery queue's index: nothing reads it any more.
DROP INDEX IF EXISTS pgqueue.alert_events_pending_idx;
-- ---------------------------------------------------------------------------------------------------------
-- Migration 7: cheaper checks on the claim path, autovacuum tuned for the hot table (see the migration).
ALTER TABLE pgqueue.jobs DROP CONSTRAINT IF EXISTS jobs_queue_check;
ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_queue_check
    CHECK (queue ~ '^[A-Za-z0-9_.:-]+$' AND length(queue) <= 100) NOT VALID;
ALTER TABLE pgqueue.jobs VALIDATE CONSTRAINT jobs_queue_check;
ALTER TABLE pgqueue.jobs DROP CONSTRAINT IF EXISTS jobs_task_check;
ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_task_check
    CHECK (task ~ '^[A-Za-z_][A-Za-z0-9_.:-]*$' AND length(task) <= 200) NOT VALID;
ALTER TABLE pgqueue.jobs VALIDATE CONSTRAINT jobs_task_check;
ALTER TABLE pgqueue.jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
                              autovacuum_analyze_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0);

-- ---------------------------------------------------------------------------------------------------------
-- Migration 8: one index entry fewer for every claim (see the migration).
-- jobs_running_idx (worker_id) put an entry into an index for every job claimed, so that one worker's running
-- jobs could be found by worker. The writes that fence on a job's worker (completion, heartbeat, failure,
-- release) find their jobs by primary key instead (see sql/queries/core.sql), so only the per-worker running
-- count read it: one probe per worker row. One grouped count over the running jobs gives every worker's at
-- once, through jobs_running_queue_idx, which the concurrency limits keep anyway.
CREATE OR REPLACE VIEW pgqueue.worker_stats AS
SELECT w.id, w.host, w.pid, w.queues, w.concurrency, w.state, w.started_at, w.last_heartbeat_at,
       now() - w.started_at AS uptime,
       coalesce(r.running, 0) AS running,
       w.jobs_done, w.jobs_failed
FROM pgqueue.workers w
LEFT JOIN (SELECT worker_id, count(*) AS running FROM pgqueue.jobs WHERE state = 'running' GROUP BY worker_id)
    AS r ON r.worker_id = w.id;

DROP INDEX IF EXISTS pgqueue.jobs_running_idx;
