-- Named queries of scheduling and flow control: queue settings, groups, dependencies, batches.

-- name: queue_set_paused
-- Pausing changes only the flag; a notification makes every worker look at its queues again at once.
WITH q AS (
    INSERT INTO pgqueue.queues (name, paused) VALUES (%(queue)s, %(paused)s)
    ON CONFLICT (name) DO UPDATE SET paused = excluded.paused, updated_at = now()
    RETURNING name
)
SELECT name, pg_notify('pgqueue_control', 'queues:' || name) FROM q;

-- name: queue_configure
WITH q AS (
    INSERT INTO pgqueue.queues AS s (name, concurrency_limit, rate_limit, rate_period, group_concurrency_limit,
                                     group_rate_limit, group_rate_period, fair, priority_aging)
    VALUES (%(queue)s, %(concurrency)s, %(rate_limit)s, %(rate_period)s, %(group_concurrency)s,
            %(group_rate_limit)s, %(group_rate_period)s, %(fair)s, %(priority_aging)s)
    ON CONFLICT (name) DO UPDATE SET
        concurrency_limit = excluded.concurrency_limit, rate_limit = excluded.rate_limit,
        rate_period = excluded.rate_period, group_concurrency_limit = excluded.group_concurrency_limit,
        group_rate_limit = excluded.group_rate_limit, group_rate_period = excluded.group_rate_period,
        fair = excluded.fair, priority_aging = excluded.priority_aging, updated_at = now()
    RETURNING *
), told AS (
    SELECT pg_notify('pgqueue_control', 'queues:' || name) FROM q
)
SELECT name, paused, concurrency_limit, rate_limit, rate_period, group_concurrency_limit, group_rate_limit,
       group_rate_period, fair, priority_aging
FROM q WHERE (SELECT count(*) FROM told) >= 0;

-- name: queue_settings_list
SELECT name, paused, concurrency_limit, rate_limit, rate_period, group_concurrency_limit, group_rate_limit,
       group_rate_period, fair, priority_aging
FROM pgqueue.queues ORDER BY name;

-- name: group_set_weight
INSERT INTO pgqueue.job_groups AS g (queue, group_key, weight) VALUES (%(queue)s, %(group_key)s, %(weight)s)
ON CONFLICT (queue, group_key) DO UPDATE SET weight = excluded.weight;

-- name: rate_starts_prune
-- Starts older than the longest rate window of their queue no longer count for anything.
DELETE FROM pgqueue.rate_starts AS r
USING pgqueue.queues AS q
WHERE q.name = r.queue
  AND r.started_at < now() - make_interval(secs => greatest(coalesce(q.rate_period, 0),
                                                             coalesce(q.group_rate_period, 0)));

-- name: queue_priority_aging
-- Queued jobs of an aging queue that have waited a whole aging interval since they were queued (or last
-- aged) move up one priority, so low priorities cannot be starved for ever by a stream of higher ones.
WITH aged AS (
    UPDATE pgqueue.jobs AS j
    SET priority = least(j.priority + 1, 32767), scheduled_for = now()
    FROM pgqueue.queues AS q
    WHERE q.name = j.queue AND q.priority_aging IS NOT NULL AND j.state = 'queued'
      AND j.scheduled_for < now() - make_interval(secs => q.priority_aging) AND j.priority < 32767
    RETURNING j.id
)
SELECT count(*) FROM aged;

-- name: job_parent_results
SELECT d.parent_id, f.result::text
FROM pgqueue.job_dependencies d
LEFT JOIN pgqueue.finished_jobs f ON f.id = d.parent_id
WHERE d.job_id = %(id)s
ORDER BY d.parent_id;

-- name: batch_create
INSERT INTO pgqueue.batches (name, total) VALUES (%(name)s, %(total)s) RETURNING id;

-- name: batch_set_callback
UPDATE pgqueue.batches SET callback_job_id = %(callback_job_id)s WHERE id = %(id)s;

-- name: batch_get
SELECT b.id, b.name, b.total, b.callback_job_id, b.created_at,
       (SELECT json_object_agg(state, n) FROM (
            SELECT state, count(*) AS n FROM pgqueue.jobs WHERE batch_id = b.id GROUP BY state
            UNION ALL
            SELECT state, count(*) FROM pgqueue.finished_jobs WHERE batch_id = b.id GROUP BY state) AS c)
FROM pgqueue.batches b WHERE b.id = %(id)s;

-- name: schedule_upsert
-- Mirror a schedule declared in code (or add one from the CLI). Its tick history and pause survive.
INSERT INTO pgqueue.schedules AS s (name, cron, timezone, task, args, kwargs, queue, priority, max_attempts,
                                    missed, max_catchup, source)
VALUES (%(name)s, %(cron)s, %(timezone)s, %(task)s, %(args)s::json, %(kwargs)s::json, %(queue)s, %(priority)s,
        %(max_attempts)s, %(missed)s, %(max_catchup)s, %(source)s)
ON CONFLICT (name) DO UPDATE SET
    cron = excluded.cron, timezone = excluded.timezone, task = excluded.task, args = excluded.args,
    kwargs = excluded.kwargs, queue = excluded.queue, priority = excluded.priority,
    max_attempts = excluded.max_attempts, missed = excluded.missed, max_catchup = excluded.max_catchup,
    source = excluded.source
RETURNING name;

-- name: schedule_list
SELECT name, cron, timezone, task, args::text, kwargs::text, queue, priority, max_attempts, missed, max_catchup,
       paused, source, last_tick_at
FROM pgqueue.schedules ORDER BY name;

-- name: schedule_due
-- The schedules this scheduler fires (every CLI one, and the code ones this app declares), with the clock.
SELECT name, cron, timezone, missed, max_catchup, last_tick_at, now()
FROM pgqueue.schedules
WHERE NOT paused AND (source = 'cli' OR name = ANY(%(code_names)s::text[]));

-- name: schedule_tick_enqueue
-- Enqueue ticks of one schedule, exactly once: a compare-and-set on last_tick_at (a scheduler that read an
-- older state changes nothing) and a primary key on (schedule, tick).
WITH advanced AS (
    UPDATE pgqueue.schedules SET last_tick_at = %(new_last)s
    WHERE name = %(name)s AND last_tick_at = %(expected_last)s AND NOT paused
    RETURNING *
), ticks AS (
    INSERT INTO pgqueue.schedule_ticks (schedule, tick, job_id)
    SELECT a.name, t.tick, nextval('pgqueue.job_id_seq')
    FROM advanced AS a CROSS JOIN unnest(%(ticks)s::timestamptz[]) AS t(tick)
    ON CONFLICT DO NOTHING
    RETURNING schedule, tick, job_id
)
INSERT INTO pgqueue.jobs (id, queue, task, args, kwargs, priority, max_attempts, state, scheduled_for)
SELECT t.job_id, a.queue, a.task, a.args, a.kwargs, a.priority, a.max_attempts, 'queued', now()
FROM ticks AS t JOIN advanced AS a ON a.name = t.schedule
RETURNING id;

-- name: schedule_set_paused
UPDATE pgqueue.schedules SET paused = %(paused)s WHERE name = %(name)s RETURNING name;

-- name: schedule_delete
DELETE FROM pgqueue.schedules WHERE name = %(name)s RETURNING name;

-- name: schedule_ticks_prune
-- Tick rows guard against double enqueues only around the present; last_tick_at guards the past.
DELETE FROM pgqueue.schedule_ticks WHERE created_at < now() - interval '7 days';
