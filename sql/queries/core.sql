-- Core named queries: enqueue, claim, complete, fail, leases, maintenance, reads. Loaded by pgqueue.queries.
-- Time always comes from the database (now()); workers' clocks are never compared with anything.
--
-- `state = 'running' COLLATE "C"` in the statements that fence writes by job id: the same test (states are
-- ASCII, and equality under any deterministic collation is byte equality), but no partial index of running
-- jobs can be proven to match it, so the planner must find the rows by primary key, one probe per id. Written
-- plainly, the planner may read every running job of every worker through jobs_running_queue_idx instead (it
-- does whenever the statistics were gathered while few jobs ran): a completion of 100, or one failure, then
-- costs as much as the whole fleet's running jobs (5,100 rows read for 1 with 5,000 running elsewhere).

-- name: job_insert
INSERT INTO pgqueue.jobs (queue, task, args, kwargs, priority, state, max_attempts, scheduled_for, group_key,
                          batch_id)
VALUES (
    %(queue)s, %(task)s, %(args)s::json, %(kwargs)s::json, %(priority)s,
    CASE WHEN %(run_at)s::timestamptz > now() OR %(delay)s::float8 > 0 THEN 'scheduled' ELSE 'queued' END,
    %(max_attempts)s,
    greatest(coalesce(%(run_at)s::timestamptz, now()), now() + make_interval(secs => coalesce(%(delay)s, 0))),
    %(group_key)s, %(batch_id)s
)
RETURNING id, state, scheduled_for, created_at;

-- name: job_insert_unique
-- As job_insert, unless a live job holds the unique key: then nothing is inserted and no row comes back.
INSERT INTO pgqueue.jobs (queue, task, args, kwargs, priority, state, max_attempts, scheduled_for, group_key,
                          batch_id, unique_key)
VALUES (
    %(queue)s, %(task)s, %(args)s::json, %(kwargs)s::json, %(priority)s,
    CASE WHEN %(run_at)s::timestamptz > now() OR %(delay)s::float8 > 0 THEN 'scheduled' ELSE 'queued' END,
    %(max_attempts)s,
    greatest(coalesce(%(run_at)s::timestamptz, now()), now() + make_interval(secs => coalesce(%(delay)s, 0))),
    %(group_key)s, %(batch_id)s, %(unique_key)s
)
ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL DO NOTHING
RETURNING id, state, scheduled_for, created_at;

-- name: job_unique_holder
-- The job holding a unique key: the live one, else one that finished within the window.
(SELECT id, state, scheduled_for, created_at FROM pgqueue.jobs WHERE unique_key = %(unique_key)s)
UNION ALL
(SELECT id, state, scheduled_for, created_at FROM pgqueue.finished_jobs
 WHERE unique_key = %(unique_key)s AND finished_at > now() - make_interval(secs => %(window)s)
 ORDER BY finished_at DESC LIMIT 1)
LIMIT 1;

-- name: job_insert_dependent
SELECT id, state, scheduled_for, created_at FROM pgqueue.enqueue_dependent(
    %(task)s, %(args)s::json, %(kwargs)s::json, %(queue)s, %(priority)s, %(max_attempts)s,
    coalesce(%(run_at)s::timestamptz, now() + make_interval(secs => coalesce(%(delay)s, 0))),
    %(depends_on)s::bigint[], %(on_parent_failure)s, %(group_key)s, %(unique_key)s, %(batch_id)s);

-- name: job_insert_many
-- One statement for a whole batch. ids come from the sequence in input order (the subquery is read in
-- ordinality order before nextval runs), so sorting the returned ids maps them back to the input.
INSERT INTO pgqueue.jobs (id, queue, task, args, kwargs, priority, state, max_attempts, scheduled_for,
                          group_key, batch_id)
SELECT nextval('pgqueue.job_id_seq'), b.queue, b.task, b.args, b.kwargs, b.priority,
       CASE WHEN b.run_at > now() OR b.delay > 0 THEN 'scheduled' ELSE 'queued' END,
       b.max_attempts, greatest(coalesce(b.run_at, now()), now() + make_interval(secs => coalesce(b.delay, 0))),
       b.group_key, b.batch_id
FROM (
    SELECT * FROM unnest(
        %(queue)s::text[], %(task)s::text[], %(args)s::json[], %(kwargs)s::json[], %(priority)s::smallint[],
        %(run_at)s::timestamptz[], %(delay)s::float8[], %(max_attempts)s::integer[], %(group_key)s::text[],
        %(batch_id)s::bigint[]
    ) WITH ORDINALITY AS u(queue, task, args, kwargs, priority, run_at, delay, max_attempts, group_key, batch_id,
                           ord)
    ORDER BY ord
) AS b
RETURNING id, state, scheduled_for, created_at;

-- name: job_claim_any
-- Claim up to %(limit)s queued jobs from any queue, from the head of the queue. The CTE is a fence: the planner
-- must finish the locking SELECT (and its LIMIT) before the UPDATE runs, so no more rows are updated than were
-- picked. SKIP LOCKED lets concurrent claimers pass over each other's rows instead of queueing behind them.
-- It returns what running the job needs and no more: psycopg spends about 2 µs turning each timestamptz into a
-- datetime, so the job's times (which the worker never reads) would triple the cost of taking the rows. The last
-- column, the same on every row, is the claim's position: the last picked job in index order, as
-- 'priority,id,scheduled_for' text, from which job_claim_any_after goes on (see pgqueue.claiming). The UPDATE
-- finds the picked rows by primary key (= ANY of their ids): planned as a join, it costs more to plan, and with a
-- live table of a few thousand rows the planner chose to hash it whole (a sequential scan per claim); the
-- position's subquery then costs nothing measurable (server CPU per job 24.1 µs against 24.0 µs before it, 25.9
-- µs with the join; claims of 50, six interleaved rounds of 40,000 jobs).
-- Controlled queues (paused, limited, fair) are left to claim_controlled. Written as NOT EXISTS on purpose: the
-- planner keeps walking jobs_claim_any_idx in order; the equivalent `queue <> ALL (ARRAY(...))` made it sort
-- every queued job (about 8x slower at 20,000 queued). The first, uncorrelated NOT EXISTS runs once per claim:
-- with no controlled queue at all (the usual case) no row is probed, and otherwise the planner hashes the few
-- controlled names once instead of probing the queues index per row (a claim of 100 reads about 100 fewer
-- buffers).
WITH picked AS (
    SELECT id, priority, scheduled_for FROM pgqueue.jobs
    WHERE state = 'queued'
      AND (NOT EXISTS (SELECT 1 FROM pgqueue.queues WHERE controlled)
           OR NOT EXISTS (SELECT 1 FROM pgqueue.queues AS c WHERE c.name = jobs.queue AND c.controlled))
    ORDER BY priority DESC, scheduled_for, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, started_at = now(), worker_id = %(worker_id)s,
        lease_expires_at = now() + make_interval(secs => %(lease)s)
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING j.id, j.queue, j.task, j.args::text, j.kwargs::text, j.priority, j.attempt, j.max_attempts
)
SELECT claimed.*, (SELECT concat_ws(',', priority, id, scheduled_for) FROM picked
                   ORDER BY priority, scheduled_for DESC, id DESC LIMIT 1) AS position
FROM claimed;

-- name: job_claim_any_after
-- As job_claim_any, going on from a position it returned instead of from the head of the queue: only jobs of
-- the position's priority that come after it in index order. The index scan starts at the position, so the
-- entries that jobs claimed before it left behind are never read, however many an open snapshot keeps from
-- vacuum (pgqueue.claiming says when a worker claims this way and when from the head).
WITH picked AS (
    SELECT id, priority, scheduled_for FROM pgqueue.jobs
    WHERE state = 'queued' AND priority = split_part(%(after)s, ',', 1)::smallint
      AND (scheduled_for, id) > (split_part(%(after)s, ',', 3)::timestamptz, split_part(%(after)s, ',', 2)::bigint)
      AND (NOT EXISTS (SELECT 1 FROM pgqueue.queues WHERE controlled)
           OR NOT EXISTS (SELECT 1 FROM pgqueue.queues AS c WHERE c.name = jobs.queue AND c.controlled))
    ORDER BY priority DESC, scheduled_for, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, started_at = now(), worker_id = %(worker_id)s,
        lease_expires_at = now() + make_interval(secs => %(lease)s)
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING j.id, j.queue, j.task, j.args::text, j.kwargs::text, j.priority, j.attempt, j.max_attempts
)
SELECT claimed.*, (SELECT concat_ws(',', priority, id, scheduled_for) FROM picked
                   ORDER BY priority, scheduled_for DESC, id DESC LIMIT 1) AS position
FROM claimed;

-- name: job_claim_queues
-- As job_claim_any, for the queues a worker serves. Each queue is read in index order through its own
-- lateral subquery, so a deep backlog in one queue never means sorting it; the outer ORDER BY merges them.
-- The position (last column) is the last job picked in that order; a worker serving one queue goes on from it
-- with job_claim_queue_after.
WITH picked AS (
    SELECT c.id, c.priority, c.scheduled_for FROM unnest(%(queues)s::text[]) AS q(name)
    CROSS JOIN LATERAL (
        SELECT id, priority, scheduled_for FROM pgqueue.jobs
        WHERE state = 'queued' AND queue = q.name
        ORDER BY priority DESC, scheduled_for, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS c
    WHERE q.name <> ALL (ARRAY(SELECT name FROM pgqueue.queues WHERE controlled))
    ORDER BY c.priority DESC, c.scheduled_for, c.id
    LIMIT %(limit)s
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, started_at = now(), worker_id = %(worker_id)s,
        lease_expires_at = now() + make_interval(secs => %(lease)s)
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING j.id, j.queue, j.task, j.args::text, j.kwargs::text, j.priority, j.attempt, j.max_attempts
)
SELECT claimed.*, (SELECT concat_ws(',', priority, id, scheduled_for) FROM picked
                   ORDER BY priority, scheduled_for DESC, id DESC LIMIT 1) AS position
FROM claimed;

-- name: job_claim_queue_after
-- As job_claim_any_after, for a worker serving the one queue %(queue)s.
WITH picked AS (
    SELECT id, priority, scheduled_for FROM pgqueue.jobs
    WHERE state = 'queued' AND queue = %(queue)s AND priority = split_part(%(after)s, ',', 1)::smallint
      AND (scheduled_for, id) > (split_part(%(after)s, ',', 3)::timestamptz, split_part(%(after)s, ',', 2)::bigint)
      AND %(queue)s <> ALL (ARRAY(SELECT name FROM pgqueue.queues WHERE controlled))
    ORDER BY priority DESC, scheduled_for, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, started_at = now(), worker_id = %(worker_id)s,
        lease_expires_at = now() + make_interval(secs => %(lease)s)
    WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING j.id, j.queue, j.task, j.args::text, j.kwargs::text, j.priority, j.attempt, j.max_attempts
)
SELECT claimed.*, (SELECT concat_ws(',', priority, id, scheduled_for) FROM picked
                   ORDER BY priority, scheduled_for DESC, id DESC LIMIT 1) AS position
FROM claimed;

-- name: job_claim_controlled
SELECT id, queue, task, args::text, kwargs::text, priority, attempt, max_attempts
FROM pgqueue.claim_controlled(%(queue)s, %(worker_id)s, %(lease)s, %(limit)s);

-- name: queue_controlled_list
SELECT name FROM pgqueue.queues WHERE controlled AND NOT paused ORDER BY name;

-- name: job_complete_many
-- Acknowledge a batch of successes in one statement. The fence is (id, attempt, worker_id, state): a worker
-- whose lease was taken over (the attempt moved on) or whose job was handed back matches nothing, so its late
-- completion changes nothing. The ids that did match come back.
WITH input AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[], %(results)s::json[])
        AS t(id, attempt, result)
), done AS (
    DELETE FROM pgqueue.jobs AS j
    USING input AS i
    WHERE j.id = i.id AND j.attempt = i.attempt AND j.worker_id = %(worker_id)s AND j.state = 'running' COLLATE "C"
    RETURNING j.*, i.result
)
INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts,
                                   scheduled_for, created_at, started_at, finished_at, worker_id, result,
                                   group_key, unique_key, batch_id, has_dependants, progress, progress_message)
SELECT id, queue, task, args, kwargs, priority, 'succeeded', attempt, max_attempts,
       scheduled_for, created_at, started_at, now(), worker_id, result,
       group_key, unique_key, batch_id, has_dependants, progress, progress_message
FROM done
RETURNING id;

-- name: job_retry
-- A failed attempt that will be tried again: record the error and schedule the job after %(delay)s seconds.
WITH j AS (
    UPDATE pgqueue.jobs
    SET state = CASE WHEN %(delay)s::float8 > 0 THEN 'scheduled' ELSE 'queued' END,
        scheduled_for = now() + make_interval(secs => %(delay)s::float8),
        worker_id = NULL, lease_expires_at = NULL
    WHERE id = %(id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s AND state = 'running' COLLATE "C"
    RETURNING id, attempt, task, queue, started_at, scheduled_for
), e AS (
    INSERT INTO pgqueue.job_errors (job_id, attempt, task, queue, worker_id, kind, error_type, message,
                                    traceback, started_at)
    SELECT id, attempt, task, queue, %(worker_id)s, %(kind)s, %(error_type)s, %(message)s, %(traceback)s,
           started_at
    FROM j
)
SELECT id, scheduled_for FROM j;

-- name: job_dead
-- A failed attempt that ends the job: record the error and move it to the dead letters.
WITH d AS (
    DELETE FROM pgqueue.jobs
    WHERE id = %(id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s AND state = 'running' COLLATE "C"
    RETURNING *
), e AS (
    INSERT INTO pgqueue.job_errors (job_id, attempt, task, queue, worker_id, kind, error_type, message,
                                    traceback, started_at)
    SELECT id, attempt, task, queue, %(worker_id)s, %(kind)s, %(error_type)s, %(message)s, %(traceback)s,
           started_at
    FROM d
)
INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts,
                                   scheduled_for, created_at, started_at, finished_at, worker_id, error_type,
                                   group_key, unique_key, batch_id, has_dependants, progress, progress_message)
SELECT id, queue, task, args, kwargs, priority, 'dead', attempt, max_attempts,
       scheduled_for, created_at, started_at, now(), worker_id, %(error_type)s,
       group_key, unique_key, batch_id, has_dependants, progress, progress_message
FROM d
RETURNING id;

-- name: job_progress_update
-- Progress reported since the last flush, for jobs this worker still holds. Rows another statement has locked
-- (our own completion deleting them) are skipped rather than waited for: waiting could close a lock cycle with
-- a completion of several jobs, and a job being completed has no progress left to report.
UPDATE pgqueue.jobs AS j SET progress = p.progress, progress_message = p.message
FROM unnest(%(progress_ids)s::bigint[], %(progress)s::real[], %(progress_messages)s::text[]) AS p(id, progress, message)
WHERE j.id = p.id AND j.worker_id = %(worker_id)s AND j.state = 'running' COLLATE "C"
  AND j.id IN (SELECT l.id FROM pgqueue.jobs AS l
               WHERE l.id = ANY(%(progress_ids)s::bigint[]) AND l.worker_id = %(worker_id)s
                 AND l.state = 'running' COLLATE "C"
               FOR NO KEY UPDATE SKIP LOCKED);

-- name: job_release
-- Graceful shutdown: hand unfinished jobs back to the queue at once. The interrupted attempt is not counted
-- (the job did not fail), and a notification wakes the workers still running.
WITH r AS (
    UPDATE pgqueue.jobs
    SET state = 'queued', attempt = attempt - 1, worker_id = NULL, lease_expires_at = NULL, started_at = NULL
    WHERE worker_id = %(worker_id)s AND state = 'running' COLLATE "C" AND id = ANY(%(ids)s::bigint[])
    RETURNING id, queue
)
SELECT r.queue, count(*), pg_notify('pgqueue_jobs', r.queue) FROM r GROUP BY r.queue;

-- name: job_heartbeat
-- Renew the lease of every job this worker holds and say the worker is alive, in one round trip. The ids it
-- still holds come back: a job the worker runs that is not among them was taken from it (its lease expired).
-- Progress reported by handlers since the last heartbeat rides along; jobs whose cancellation was requested
-- come back too. Only the jobs it says it runs (%(ids)s) are renewed: a job it claimed but lost track of (the
-- claim's reply lost with its connection, an internal error) must expire and be reclaimed, not be renewed
-- forever.
-- A row another statement has locked is skipped, not waited for. The locker is nearly always this worker's own
-- completion of a batch, which deletes rows in its own order: waiting for it while holding other rows it wants
-- next is a deadlock (PostgreSQL breaks it by failing one side). A skipped job still counts as held (this
-- statement's snapshot shows it ours) and its lease, several heartbeats long, is renewed by the next beat.
WITH progress AS (
    SELECT * FROM unnest(%(progress_ids)s::bigint[], %(progress)s::real[], %(progress_messages)s::text[])
        AS p(id, progress, message)
), held AS (
    SELECT j.id FROM pgqueue.jobs AS j
    WHERE j.worker_id = %(worker_id)s AND j.state = 'running' COLLATE "C" AND j.id = ANY(%(ids)s::bigint[])
), free AS (
    SELECT j.id FROM pgqueue.jobs AS j
    WHERE j.worker_id = %(worker_id)s AND j.state = 'running' COLLATE "C" AND j.id = ANY(%(ids)s::bigint[])
    FOR NO KEY UPDATE SKIP LOCKED
), renewed AS (
    UPDATE pgqueue.jobs AS j
    SET lease_expires_at = now() + make_interval(secs => %(lease)s),
        progress = coalesce((SELECT p.progress FROM progress AS p WHERE p.id = j.id), j.progress),
        progress_message = coalesce((SELECT p.message FROM progress AS p WHERE p.id = j.id), j.progress_message)
    FROM free AS f
    WHERE j.id = f.id AND j.worker_id = %(worker_id)s AND j.state = 'running' COLLATE "C"
    RETURNING j.id, j.cancel_requested
), w AS (
    UPDATE pgqueue.workers
    SET last_heartbeat_at = now(), jobs_done = %(jobs_done)s, jobs_failed = %(jobs_failed)s, state = %(state)s
    WHERE id = %(worker_id)s
    RETURNING id
)
SELECT array(SELECT id FROM held) AS held, (SELECT count(*) FROM w) AS registered,
       array(SELECT id FROM renewed WHERE cancel_requested) AS cancel_requested;

-- name: job_reap_expired
-- Reclaim jobs whose worker stopped renewing their lease (crashed, killed, partitioned away). The lost attempt
-- counts: it is recorded as a lease_expired error, and a job out of attempts goes to the dead letters. The
-- rest are queued again at once: they have already waited a whole lease.
WITH expired AS (
    SELECT id FROM pgqueue.jobs
    WHERE state = 'running' AND lease_expires_at < now()
    ORDER BY lease_expires_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), errs AS (
    INSERT INTO pgqueue.job_errors (job_id, attempt, task, queue, worker_id, kind, error_type, message,
                                    started_at)
    SELECT j.id, j.attempt, j.task, j.queue, j.worker_id, 'lease_expired', 'LeaseExpired',
           'the worker stopped renewing the lease (it crashed, was killed or lost the database)', j.started_at
    FROM pgqueue.jobs j JOIN expired USING (id)
), requeued AS (
    UPDATE pgqueue.jobs AS j
    SET state = 'queued', scheduled_for = now(), worker_id = NULL, lease_expires_at = NULL
    FROM expired
    WHERE j.id = expired.id AND j.attempt < j.max_attempts
    RETURNING j.id, j.queue
), died AS (
    DELETE FROM pgqueue.jobs AS j
    USING expired
    WHERE j.id = expired.id AND j.attempt >= j.max_attempts
    RETURNING j.*
), buried AS (
    INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts,
                                       scheduled_for, created_at, started_at, finished_at, worker_id,
                                       error_type, group_key, unique_key, batch_id, has_dependants, progress,
                                       progress_message)
    SELECT id, queue, task, args, kwargs, priority, 'dead', attempt, max_attempts,
           scheduled_for, created_at, started_at, now(), worker_id, 'LeaseExpired', group_key, unique_key,
           batch_id, has_dependants, progress, progress_message
    FROM died
    RETURNING id
), woken AS (
    SELECT pg_notify('pgqueue_jobs', queue) FROM (SELECT DISTINCT queue FROM requeued) AS q
)
SELECT (SELECT count(*) FROM requeued) AS requeued, (SELECT count(*) FROM buried) AS dead,
       (SELECT count(*) FROM woken) AS notified;

-- name: job_promote_due
-- Scheduled jobs (delayed, or waiting out a retry backoff) whose time has come become queued, and the
-- workers of their queues are woken.
WITH due AS (
    SELECT id FROM pgqueue.jobs
    WHERE state = 'scheduled' AND scheduled_for <= now()
    ORDER BY scheduled_for
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), promoted AS (
    UPDATE pgqueue.jobs AS j SET state = 'queued'
    FROM due WHERE j.id = due.id
    RETURNING j.queue
)
SELECT queue, count(*), pg_notify('pgqueue_jobs', queue) FROM promoted GROUP BY queue;

-- name: job_next_scheduled_in
-- Seconds until the earliest scheduled job is due (NULL when none), so the promoter can sleep exactly that.
-- A job scheduled for 'infinity' (the SQL API accepts it) is never due; before PostgreSQL 17 subtracting it
-- fails, and with it every maintenance sweep.
SELECT extract(epoch FROM min(scheduled_for) - now())::float8 FROM pgqueue.jobs
WHERE state = 'scheduled' AND isfinite(scheduled_for);

-- name: job_get
SELECT id, queue, task, args::text, kwargs::text, priority, state, attempt, max_attempts, scheduled_for,
       created_at, started_at, NULL::timestamptz AS finished_at, worker_id, NULL::text AS result,
       lease_expires_at, progress, progress_message, group_key, unique_key, batch_id
FROM pgqueue.jobs WHERE id = %(id)s
UNION ALL
SELECT id, queue, task, args::text, kwargs::text, priority, state, attempt, max_attempts, scheduled_for,
       created_at, started_at, finished_at, worker_id, result::text, NULL, progress, progress_message, group_key,
       unique_key, batch_id
FROM pgqueue.finished_jobs WHERE id = %(id)s;

-- name: job_errors_get
SELECT attempt, kind, error_type, message, traceback, worker_id, started_at, failed_at
FROM pgqueue.job_errors WHERE job_id = %(id)s ORDER BY id;

-- name: job_list
-- Live and finished jobs, newest first, filtered; NULL filters match everything.
SELECT * FROM (
    SELECT id, queue, task, args::text, kwargs::text, priority, state, attempt, max_attempts, scheduled_for,
           created_at, started_at, NULL::timestamptz AS finished_at, worker_id, NULL::text AS result,
           lease_expires_at, progress, progress_message, group_key, unique_key, batch_id
    FROM pgqueue.jobs
    WHERE (%(queue)s::text IS NULL OR queue = %(queue)s) AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(state)s::text IS NULL OR state = %(state)s)
    UNION ALL
    SELECT id, queue, task, args::text, kwargs::text, priority, state, attempt, max_attempts, scheduled_for,
           created_at, started_at, finished_at, worker_id, result::text, NULL, progress, progress_message,
           group_key, unique_key, batch_id
    FROM pgqueue.finished_jobs
    WHERE (%(queue)s::text IS NULL OR queue = %(queue)s) AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(state)s::text IS NULL OR state = %(state)s)
) AS j
ORDER BY id DESC
LIMIT %(limit)s;

-- name: job_cancel
-- Cancel a job that has not started: it moves to finished_jobs as cancelled and will never run.
WITH c AS (
    DELETE FROM pgqueue.jobs WHERE id = %(id)s AND state IN ('waiting', 'scheduled', 'queued') RETURNING *
)
INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts,
                                   scheduled_for, created_at, started_at, finished_at, worker_id, group_key,
                                   unique_key, batch_id, has_dependants)
SELECT id, queue, task, args, kwargs, priority, 'cancelled', attempt, max_attempts,
       scheduled_for, created_at, started_at, now(), worker_id, group_key, unique_key, batch_id, has_dependants
FROM c
RETURNING id;

-- name: job_cancel_running
-- Ask the worker running a job to stop it: the flag is read at heartbeat, and the notification tells the
-- worker at once. The handler sees ctx.cancelled (or, if async, a CancelledError) and the job ends cancelled.
WITH r AS (
    UPDATE pgqueue.jobs SET cancel_requested = true WHERE id = %(id)s AND state = 'running' COLLATE "C" RETURNING id
)
SELECT id, pg_notify('pgqueue_control', 'cancel:' || id) FROM r;

-- name: job_cancelled
-- The worker stopped a job whose cancellation was requested (fenced like every write of an attempt).
WITH c AS (
    DELETE FROM pgqueue.jobs
    WHERE id = %(id)s AND attempt = %(attempt)s AND worker_id = %(worker_id)s AND state = 'running' COLLATE "C"
    RETURNING *
)
INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts,
                                   scheduled_for, created_at, started_at, finished_at, worker_id, group_key,
                                   unique_key, batch_id, has_dependants, progress, progress_message)
SELECT id, queue, task, args, kwargs, priority, 'cancelled', attempt, max_attempts,
       scheduled_for, created_at, started_at, now(), worker_id, group_key, unique_key, batch_id, has_dependants,
       progress, progress_message
FROM c
RETURNING id;

-- name: job_retry_finished
-- Bring dead (and, by id, cancelled) jobs back to the queue in one statement, however many. Attempt numbers
-- keep counting (they fence old workers); each job gets at least one more attempt.
-- A job whose unique key a live job now holds stays where it is.
WITH moved AS (
    DELETE FROM pgqueue.finished_jobs AS f
    WHERE state = ANY(%(states)s::text[])
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
      AND (f.unique_key IS NULL OR NOT EXISTS (SELECT 1 FROM pgqueue.jobs j WHERE j.unique_key = f.unique_key))
    RETURNING *
)
INSERT INTO pgqueue.jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts,
                          scheduled_for, created_at, group_key, unique_key, batch_id, has_dependants)
SELECT id, queue, task, args, kwargs, priority, 'queued', attempt, greatest(max_attempts, attempt + 1),
       now(), created_at, group_key, unique_key, batch_id, has_dependants
FROM moved
RETURNING id;

-- name: job_delete_dead
WITH d AS (
    DELETE FROM pgqueue.finished_jobs
    WHERE state = 'dead'
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(queue)s::text IS NULL OR queue = %(queue)s)
    RETURNING id
), e AS (
    DELETE FROM pgqueue.job_errors WHERE job_id IN (SELECT id FROM d)
)
SELECT count(*) FROM d;

-- name: job_dead_list
SELECT id, queue, task, args::text, kwargs::text, attempt, max_attempts, created_at, finished_at, error_type,
       error_message
FROM pgqueue.dead_letters
WHERE (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(task)s::text IS NULL OR task = %(task)s)
  AND (%(queue)s::text IS NULL OR queue = %(queue)s)
ORDER BY finished_at DESC, id DESC
LIMIT %(limit)s;

-- name: job_prune
-- Delete a slice of finished jobs older than %(older_than)s seconds (and their errors). Called in a loop so
-- no statement holds locks or builds WAL for long.
WITH d AS (
    DELETE FROM pgqueue.finished_jobs
    WHERE id IN (
        SELECT id FROM pgqueue.finished_jobs
        WHERE finished_at < now() - make_interval(secs => %(older_than)s) AND state = ANY(%(states)s::text[])
        LIMIT %(limit)s
    )
    RETURNING id
), e AS (
    DELETE FROM pgqueue.job_errors WHERE job_id IN (SELECT id FROM d)
)
SELECT count(*) FROM d;

-- name: worker_register
INSERT INTO pgqueue.workers (id, host, pid, queues, concurrency)
VALUES (%(id)s, %(host)s, %(pid)s, %(queues)s, %(concurrency)s)
ON CONFLICT (id) DO UPDATE SET last_heartbeat_at = now(), state = 'running';

-- name: worker_deregister
DELETE FROM pgqueue.workers WHERE id = %(id)s;

-- name: worker_prune_stale
-- Forget workers that have not sent a heartbeat for %(stale_after)s seconds. Their jobs are reclaimed by
-- the lease reaper, not here: a row's age proves nothing about a job's lease.
DELETE FROM pgqueue.workers WHERE last_heartbeat_at < now() - make_interval(secs => %(stale_after)s);

-- name: worker_list
SELECT id, host, pid, queues, concurrency, state, started_at, last_heartbeat_at, uptime, running, jobs_done,
       jobs_failed
FROM pgqueue.worker_stats ORDER BY started_at;

-- name: queue_stats
SELECT queue, scheduled, queued, running, dead, oldest_queued_age, succeeded_last_minute, failed_last_minute,
       dead_last_minute, waiting, paused
FROM pgqueue.queue_stats ORDER BY queue;

-- name: job_count_by_state
SELECT state, count(*) FROM pgqueue.jobs WHERE id = ANY(%(ids)s::bigint[]) GROUP BY state
UNION ALL
SELECT state, count(*) FROM pgqueue.finished_jobs WHERE id = ANY(%(ids)s::bigint[]) GROUP BY state;

-- name: maintenance_try_lock
-- Maintenance sweeps run in every worker; a transaction-scoped advisory lock lets one do each sweep at a time
-- while the others skip it. No leader to elect, nothing to fail over. A worker stopped inside a sweep (SIGSTOP,
-- a paused VM, a GC or swap stall) would hold the lock, and stop that sweep everywhere, until it resumed: the
-- transaction-local idle timeout has the server end such a transaction, which frees the lock.
SELECT pg_try_advisory_xact_lock(%(key)s::bigint), set_config('idle_in_transaction_session_timeout', '5s', true);

-- name: session_try_lock
-- For work that cannot run in a transaction (VACUUM), so maintenance_try_lock's transaction lock cannot guard
-- it: a session lock, given back right after. A worker that dies gives it back with its session.
SELECT pg_try_advisory_lock(%(key)s::bigint);

-- name: session_unlock
SELECT pg_advisory_unlock(%(key)s::bigint);

-- name: live_table_dead
-- Dead and live row versions in pgqueue.jobs, from the statistics every backend reports (about once a
-- second), when anyone last vacuumed it, and how many manual vacuums it has had (a VACUUM that SKIP_LOCKED
-- skipped adds none): what the worker's vacuum of the live table goes by.
SELECT pg_stat_get_dead_tuples(t.oid), pg_stat_get_live_tuples(t.oid),
       greatest(pg_stat_get_last_vacuum_time(t.oid), pg_stat_get_last_autovacuum_time(t.oid)),
       pg_stat_get_vacuum_count(t.oid)
FROM (SELECT 'pgqueue.jobs'::regclass::oid AS oid) AS t;

-- name: live_table_may_vacuum
-- Whether this login may VACUUM pgqueue.jobs: a member of its owner or of the database's owner (superusers
-- are members of every role), or from PostgreSQL 17 a holder of MAINTAIN. Others would get a warning and no
-- vacuum, so they do not try.
SELECT pg_has_role(c.relowner, 'USAGE')
       OR pg_has_role((SELECT datdba FROM pg_database WHERE datname = current_database()), 'USAGE')
       OR CASE WHEN current_setting('server_version_num')::int >= 170000
               THEN has_table_privilege(c.oid, 'MAINTAIN') ELSE false END
FROM pg_class AS c WHERE c.oid = 'pgqueue.jobs'::regclass;

-- name: live_table_vacuum
-- Every claim reads the claim index from its head, where the entries of the jobs claimed before it lie. They
-- are dead, but only VACUUM takes them out of the index (new entries go in at the other end, so the page
-- splits that clear dead entries never reach them): without it each claim of 100 reads one more index page
-- per 200 jobs claimed since the last vacuum. Autovacuum looks at a database once a minute by default, which
-- at thousands of jobs a second is far too seldom. INDEX_CLEANUP ON, because the default may skip the
-- indexes when few heap pages hold dead rows, which is the usual case here. SKIP_LOCKED: if another worker
-- (or autovacuum) is already vacuuming the table, there is nothing to do.
VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED) pgqueue.jobs;

-- name: notify_listen
LISTEN pgqueue_jobs; LISTEN pgqueue_control;

-- name: demo_summary
SELECT task, count(*), count(*) FILTER (WHERE state = 'succeeded'), count(*) FILTER (WHERE state = 'dead'),
       count(*) FILTER (WHERE state = 'cancelled'), count(*) FILTER (WHERE attempt > 1),
       coalesce(avg(attempt) FILTER (WHERE state <> 'cancelled'), 0)::float8
FROM pgqueue.finished_jobs WHERE id = ANY(%(ids)s::bigint[])
GROUP BY task ORDER BY task;

-- name: snapshot_consistent
-- First statement of a read-only transaction whose several reads must agree with each other.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;
