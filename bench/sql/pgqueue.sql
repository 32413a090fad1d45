-- pgqueue's benchmark driver (bench/drivers/pgqueue_driver.py): set-up and bookkeeping, never the hot path
-- (the hot path is pgqueue's own code and its sql/queries).

-- name: pgq_reset
TRUNCATE pgqueue.jobs, pgqueue.finished_jobs, pgqueue.job_errors, pgqueue.workers

-- name: pgq_remaining
SELECT count(*) FROM pgqueue.jobs

-- name: pgq_fill_finished
-- History: %(finished)s succeeded jobs, with ids below any the sequence will hand out.
INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts,
                                   scheduled_for, created_at, started_at, finished_at)
SELECT -g, 'default', 'noop', '[]', '{}', 0, 'succeeded', 1, 10, now(), now(), now(), now()
FROM generate_series(1, %(finished)s) AS g

-- name: pgq_fill_queued
-- The backlog: %(queued)s queued no-op jobs, in one statement (so one notification).
INSERT INTO pgqueue.jobs (queue, task) SELECT 'default', 'noop' FROM generate_series(1, %(queued)s)

-- name: pgq_claim_baseline
-- The claim as it was before rate limits, fairness, dependencies and unique keys (issue 3): the yardstick
-- for "unused features cost the plain claim path under 10%". Same shape and parameters as job_claim_any.
WITH picked AS (
    SELECT id FROM pgqueue.jobs
    WHERE state = 'queued'
    ORDER BY priority DESC, scheduled_for, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE pgqueue.jobs AS j
SET state = 'running', attempt = j.attempt + 1, started_at = now(), worker_id = %(worker_id)s,
    lease_expires_at = now() + make_interval(secs => %(lease)s)
FROM picked
WHERE j.id = picked.id
RETURNING j.id, j.queue, j.task, j.args::text, j.kwargs::text, j.priority, j.attempt, j.max_attempts
