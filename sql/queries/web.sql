-- Named queries of the web layer (pgqueue serve): tokens, API reads, dashboard aggregates, Prometheus metrics,
-- worker control, alerts. Loaded by pgqueue.queries. Time always comes from the database (now()).

-- ---------------------------------------------------------------------------------------------------------
-- API tokens
-- ---------------------------------------------------------------------------------------------------------

-- name: token_insert
INSERT INTO pgqueue.api_tokens (name, token_hash, prefix, scopes)
VALUES (%(name)s, %(hash)s, %(prefix)s, %(scopes)s::text[])
RETURNING id, created_at;

-- name: token_verify
-- The scopes of a live token. last_used_at is written at most once a minute per token, so a busy client does
-- not turn every read into a write.
WITH t AS (
    SELECT id, scopes FROM pgqueue.api_tokens WHERE token_hash = %(hash)s AND revoked_at IS NULL
), used AS (
    UPDATE pgqueue.api_tokens SET last_used_at = now()
    WHERE id IN (SELECT id FROM t) AND (last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
)
SELECT id, scopes FROM t;

-- name: token_list
SELECT id, name, prefix, scopes, created_at, last_used_at, revoked_at FROM pgqueue.api_tokens ORDER BY id;

-- name: token_revoke
UPDATE pgqueue.api_tokens SET revoked_at = now() WHERE id = %(id)s AND revoked_at IS NULL RETURNING id;

-- ---------------------------------------------------------------------------------------------------------
-- Jobs
-- ---------------------------------------------------------------------------------------------------------

-- name: web_job_page
-- One page of jobs, newest first, after the cursor %(before)s (an id; NULL: from the newest). Each branch reads
-- its table's primary key backwards, so the planner merges two index scans and stops at the LIMIT. Columns as
-- job_get (Job.from_row).
SELECT * FROM (
    (SELECT id, queue, task, args::text, kwargs::text, priority, state, attempt, max_attempts, scheduled_for,
            created_at, started_at, NULL::timestamptz AS finished_at, worker_id, NULL::text AS result,
            lease_expires_at, progress, progress_message, group_key, unique_key, batch_id
     FROM pgqueue.jobs
     WHERE (%(before)s::bigint IS NULL OR id < %(before)s)
       AND (%(queue)s::text IS NULL OR queue = %(queue)s) AND (%(task)s::text IS NULL OR task = %(task)s)
       AND (%(state)s::text IS NULL OR state = %(state)s)
     ORDER BY id DESC LIMIT %(limit)s)
    UNION ALL
    (SELECT id, queue, task, args::text, kwargs::text, priority, state, attempt, max_attempts, scheduled_for,
            created_at, started_at, finished_at, worker_id, result::text, NULL, progress, progress_message,
            group_key, unique_key, batch_id
     FROM pgqueue.finished_jobs
     WHERE (%(before)s::bigint IS NULL OR id < %(before)s)
       AND (%(queue)s::text IS NULL OR queue = %(queue)s) AND (%(task)s::text IS NULL OR task = %(task)s)
       AND (%(state)s::text IS NULL OR state = %(state)s)
     ORDER BY id DESC LIMIT %(limit)s)
) AS j
ORDER BY id DESC
LIMIT %(limit)s;

-- name: web_job_queue_position
-- How many queued jobs of the same queue a worker would claim before this one (claim order: priority
-- descending, then scheduled_for, then id). Counted along the partial claim index. NULL unless queued.
SELECT CASE WHEN j.state = 'queued' THEN (
    SELECT count(*) FROM pgqueue.jobs o
    WHERE o.state = 'queued' AND o.queue = j.queue
      AND (o.priority > j.priority
           OR (o.priority = j.priority AND (o.scheduled_for, o.id) < (j.scheduled_for, j.id)))
) END
FROM pgqueue.jobs j WHERE j.id = %(id)s;

-- name: web_dead_page
-- Dead letters, most recently dead first, after the keyset cursor (%(before_at)s, %(before_id)s).
SELECT f.id, f.queue, f.task, f.args::text, f.kwargs::text, f.attempt, f.max_attempts, f.created_at,
       f.finished_at, f.error_type, e.message
FROM pgqueue.finished_jobs f
LEFT JOIN LATERAL (
    SELECT message FROM pgqueue.job_errors e WHERE e.job_id = f.id ORDER BY e.id DESC LIMIT 1
) e ON true
WHERE f.state = 'dead'
  AND (%(queue)s::text IS NULL OR f.queue = %(queue)s) AND (%(task)s::text IS NULL OR f.task = %(task)s)
  AND (%(error_type)s::text IS NULL OR f.error_type = %(error_type)s)
  AND (%(before_at)s::timestamptz IS NULL OR (f.finished_at, f.id) < (%(before_at)s, %(before_id)s::bigint))
ORDER BY f.finished_at DESC, f.id DESC
LIMIT %(limit)s;

-- name: web_dead_retry
-- Bulk retry of dead letters chosen by ids or by filters (the same ones the list takes), in one statement.
WITH moved AS (
    DELETE FROM pgqueue.finished_jobs
    WHERE state = 'dead'
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(queue)s::text IS NULL OR queue = %(queue)s) AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(error_type)s::text IS NULL OR error_type = %(error_type)s)
    RETURNING *
)
INSERT INTO pgqueue.jobs (id, queue, task, args, kwargs, priority, state, attempt, max_attempts,
                          scheduled_for, created_at)
SELECT id, queue, task, args, kwargs, priority, 'queued', attempt, greatest(max_attempts, attempt + 1),
       now(), created_at
FROM moved
RETURNING id;

-- name: web_dead_delete
WITH d AS (
    DELETE FROM pgqueue.finished_jobs
    WHERE state = 'dead'
      AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
      AND (%(queue)s::text IS NULL OR queue = %(queue)s) AND (%(task)s::text IS NULL OR task = %(task)s)
      AND (%(error_type)s::text IS NULL OR error_type = %(error_type)s)
    RETURNING id
), e AS (
    DELETE FROM pgqueue.job_errors WHERE job_id IN (SELECT id FROM d)
)
SELECT count(*) FROM d;

-- ---------------------------------------------------------------------------------------------------------
-- Queues and workers
-- ---------------------------------------------------------------------------------------------------------

-- name: web_queue_overview
-- Per queue (any with jobs, history or settings): live counts, dead letters, the last minute's outcomes, live
-- workers serving it. Cheap enough to
-- run several times a second: the live table is small and the last minute of history is one index range.
WITH live AS (
    SELECT queue,
           count(*) FILTER (WHERE state = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE state = 'queued') AS queued,
           count(*) FILTER (WHERE state = 'running') AS running,
           extract(epoch FROM max(now() - scheduled_for) FILTER (WHERE state = 'queued'))::float8 AS oldest
    FROM pgqueue.jobs GROUP BY queue
), recent AS (
    SELECT queue, count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'dead') AS dead
    FROM pgqueue.finished_jobs WHERE finished_at > now() - interval '1 minute' GROUP BY queue
), failures AS (
    SELECT queue, count(*) AS failed
    FROM pgqueue.job_errors WHERE failed_at > now() - interval '1 minute' GROUP BY queue
), dead AS (
    SELECT queue, count(*) AS dead FROM pgqueue.finished_jobs WHERE state = 'dead' GROUP BY queue
), names AS (
    SELECT queue FROM live UNION SELECT queue FROM recent UNION SELECT queue FROM dead
    UNION SELECT queue FROM failures UNION SELECT name FROM pgqueue.queues
)
SELECT n.queue,
       coalesce(live.scheduled, 0), coalesce(live.queued, 0), coalesce(live.running, 0),
       coalesce(dead.dead, 0), live.oldest,
       coalesce(recent.succeeded, 0), coalesce(failures.failed, 0), coalesce(recent.dead, 0),
       (SELECT count(*) FROM pgqueue.workers w
        WHERE w.last_heartbeat_at > now() - interval '1 minute'
          AND (w.queues IS NULL OR n.queue = ANY(w.queues)))
FROM names n
LEFT JOIN live USING (queue) LEFT JOIN recent USING (queue) LEFT JOIN failures USING (queue)
LEFT JOIN dead USING (queue)
ORDER BY n.queue;

-- name: web_queue_hour
-- The last hour's outcomes per queue: heavier than the last minute, so the serve process caches it a few
-- seconds instead of reading it on every push.
WITH recent AS (
    SELECT queue, count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'dead') AS dead
    FROM pgqueue.finished_jobs WHERE finished_at > now() - interval '1 hour' GROUP BY queue
), failures AS (
    SELECT queue, count(*) AS failed
    FROM pgqueue.job_errors WHERE failed_at > now() - interval '1 hour' GROUP BY queue
)
SELECT queue, coalesce(recent.succeeded, 0), coalesce(failures.failed, 0), coalesce(recent.dead, 0)
FROM recent FULL JOIN failures USING (queue);

-- name: web_worker_list
SELECT w.id, w.host, w.pid, w.queues, w.concurrency, w.state, w.started_at, w.last_heartbeat_at,
       extract(epoch FROM now() - w.started_at)::float8 AS uptime,
       extract(epoch FROM now() - w.last_heartbeat_at)::float8 AS heartbeat_age,
       coalesce(r.running, 0) AS running,
       w.jobs_done, w.jobs_failed, w.requested_concurrency, w.drain_requested_at
FROM pgqueue.workers w
-- Every worker's count in one pass over the running jobs (no index by worker: see migration 8).
LEFT JOIN (SELECT worker_id, count(*) AS running FROM pgqueue.jobs WHERE state = 'running' GROUP BY worker_id)
    AS r ON r.worker_id = w.id
ORDER BY w.started_at, w.id;

-- name: web_worker_request
-- Ask a worker to change its concurrency or to drain; it reads the request at its next heartbeat.
UPDATE pgqueue.workers
SET requested_concurrency = coalesce(%(concurrency)s::integer, requested_concurrency),
    drain_requested_at = CASE WHEN %(drain)s::boolean THEN coalesce(drain_requested_at, now())
                              ELSE drain_requested_at END
WHERE id = %(id)s
RETURNING id;

-- name: worker_sync
-- Run by each worker after its heartbeat: report its counters and take the requests written for it. A
-- requested concurrency becomes the row's concurrency at once (and the request is cleared), so the row always
-- says what the worker runs with after this statement.
UPDATE pgqueue.workers
SET jobs_claimed = %(claimed)s, jobs_dead = %(dead)s, leases_reclaimed = %(reclaimed)s,
    notify_wakeups = %(wakeups)s,
    concurrency = coalesce(requested_concurrency, concurrency), requested_concurrency = NULL
WHERE id = %(worker_id)s
RETURNING concurrency, drain_requested_at IS NOT NULL;

-- ---------------------------------------------------------------------------------------------------------
-- Charts (the JSON metrics endpoints)
-- ---------------------------------------------------------------------------------------------------------

-- name: web_throughput
-- Outcomes per time bucket of %(step)s seconds between %(from)s and %(to)s: succeeded and dead jobs from
-- finished_jobs, failed attempts from job_errors. Both read their time index.
WITH f AS (
    SELECT date_bin(make_interval(secs => %(step)s), finished_at, %(from)s::timestamptz) AS bucket,
           count(*) FILTER (WHERE state = 'succeeded') AS succeeded,
           count(*) FILTER (WHERE state = 'dead') AS dead
    FROM pgqueue.finished_jobs
    WHERE finished_at >= %(from)s AND finished_at < %(to)s AND (%(queue)s::text IS NULL OR queue = %(queue)s)
    GROUP BY 1
), e AS (
    SELECT date_bin(make_interval(secs => %(step)s), failed_at, %(from)s::timestamptz) AS bucket,
           count(*) AS failed
    FROM pgqueue.job_errors
    WHERE failed_at >= %(from)s AND failed_at < %(to)s AND (%(queue)s::text IS NULL OR queue = %(queue)s)
    GROUP BY 1
)
SELECT bucket, coalesce(f.succeeded, 0), coalesce(e.failed, 0), coalesce(f.dead, 0)
FROM f FULL JOIN e USING (bucket)
ORDER BY bucket;

-- name: web_outcomes_by_queue
SELECT queue, sum(succeeded)::bigint, sum(failed)::bigint, sum(dead)::bigint FROM (
    SELECT queue, count(*) FILTER (WHERE state = 'succeeded') AS succeeded, 0 AS failed,
           count(*) FILTER (WHERE state = 'dead') AS dead
    FROM pgqueue.finished_jobs WHERE finished_at >= %(from)s AND finished_at < %(to)s GROUP BY queue
    UNION ALL
    SELECT queue, 0, count(*), 0 FROM pgqueue.job_errors
    WHERE failed_at >= %(from)s AND failed_at < %(to)s GROUP BY queue
) AS t
GROUP BY queue ORDER BY queue;

-- name: web_duration_histogram
-- Run time (finished_at - started_at of the last attempt) of jobs that succeeded in the window, counted into
-- the buckets whose upper bounds are %(bounds)s (width_bucket: 0 is below the first bound).
SELECT width_bucket(extract(epoch FROM finished_at - started_at)::float8, %(bounds)s::float8[]) AS b, count(*)
FROM pgqueue.finished_jobs
WHERE state = 'succeeded' AND started_at IS NOT NULL AND finished_at >= %(from)s AND finished_at < %(to)s
  AND (%(queue)s::text IS NULL OR queue = %(queue)s) AND (%(task)s::text IS NULL OR task = %(task)s)
GROUP BY 1 ORDER BY 1;

-- name: web_duration_percentiles
SELECT count(*), percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY d), avg(d), max(d)
FROM (
    SELECT extract(epoch FROM finished_at - started_at)::float8 AS d FROM pgqueue.finished_jobs
    WHERE state = 'succeeded' AND started_at IS NOT NULL AND finished_at >= %(from)s AND finished_at < %(to)s
      AND (%(queue)s::text IS NULL OR queue = %(queue)s) AND (%(task)s::text IS NULL OR task = %(task)s)
) AS t;

-- name: web_depth_history
SELECT sampled_at, sum(scheduled)::bigint, sum(queued)::bigint, sum(running)::bigint
FROM pgqueue.queue_depth_samples
WHERE sampled_at >= %(from)s AND sampled_at < %(to)s AND (%(queue)s::text IS NULL OR queue = %(queue)s)
GROUP BY sampled_at ORDER BY sampled_at;

-- name: web_depth_sample
-- One sample per queue that has live jobs or had them in the last hour (so an emptied queue drops to zero on
-- the chart instead of leaving a gap).
INSERT INTO pgqueue.queue_depth_samples (queue, sampled_at, scheduled, queued, running)
SELECT n.queue, now(), coalesce(c.scheduled, 0), coalesce(c.queued, 0), coalesce(c.running, 0)
FROM (
    SELECT queue FROM pgqueue.jobs
    UNION
    SELECT queue FROM pgqueue.queue_depth_samples WHERE sampled_at > now() - interval '1 hour'
) AS n
LEFT JOIN (
    SELECT queue, count(*) FILTER (WHERE state = 'scheduled') AS scheduled,
           count(*) FILTER (WHERE state = 'queued') AS queued, count(*) FILTER (WHERE state = 'running') AS running
    FROM pgqueue.jobs GROUP BY queue
) AS c USING (queue)
ON CONFLICT DO NOTHING;

-- name: web_depth_prune
DELETE FROM pgqueue.queue_depth_samples WHERE sampled_at < now() - make_interval(secs => %(older_than)s);

-- name: web_now
SELECT now();

-- ---------------------------------------------------------------------------------------------------------
-- Prometheus /metrics
-- ---------------------------------------------------------------------------------------------------------

-- name: metrics_depth
SELECT queue, state, count(*) FROM pgqueue.jobs GROUP BY queue, state
UNION ALL
SELECT queue, 'dead', count(*) FROM pgqueue.finished_jobs WHERE state = 'dead' GROUP BY queue
ORDER BY 1, 2;

-- name: metrics_oldest_queued
SELECT queue, extract(epoch FROM now() - min(scheduled_for))::float8
FROM pgqueue.jobs WHERE state = 'queued' GROUP BY queue ORDER BY queue;

-- name: metrics_workers
SELECT id, host, pid, state, concurrency, jobs_claimed, jobs_done, jobs_failed, jobs_dead, leases_reclaimed,
       notify_wakeups
FROM pgqueue.workers ORDER BY id;

-- name: metrics_watermark
-- The serve process counts finished jobs into its histograms up to now() minus a margin, so a completion
-- whose transaction began just before the watermark but commits just after it is still counted next time.
SELECT now() - interval '2 seconds';

-- name: metrics_durations_between
SELECT task, width_bucket(extract(epoch FROM finished_at - started_at)::float8, %(bounds)s::float8[]) AS b,
       count(*), sum(extract(epoch FROM finished_at - started_at)::float8)
FROM pgqueue.finished_jobs
WHERE finished_at > %(since)s AND finished_at <= %(until)s AND started_at IS NOT NULL
  AND state IN ('succeeded', 'dead')
GROUP BY 1, 2;

-- ---------------------------------------------------------------------------------------------------------
-- Alerts
-- ---------------------------------------------------------------------------------------------------------

-- name: alert_rule_list
SELECT id, name, kind, queue, threshold, window_seconds, webhook_url, enabled, firing, last_value,
       last_evaluated_at, changed_at, created_at
FROM pgqueue.alert_rules ORDER BY id;

-- name: alert_rule_insert
INSERT INTO pgqueue.alert_rules (name, kind, queue, threshold, window_seconds, webhook_url, enabled)
VALUES (%(name)s, %(kind)s, %(queue)s, %(threshold)s, %(window_seconds)s, %(webhook_url)s, %(enabled)s)
ON CONFLICT (name) DO NOTHING
RETURNING id, name, kind, queue, threshold, window_seconds, webhook_url, enabled, firing, last_value,
          last_evaluated_at, changed_at, created_at;

-- name: alert_rule_set_enabled
UPDATE pgqueue.alert_rules SET enabled = %(enabled)s,
       firing = CASE WHEN %(enabled)s THEN firing ELSE false END
WHERE id = %(id)s
RETURNING id, name, kind, queue, threshold, window_seconds, webhook_url, enabled, firing, last_value,
          last_evaluated_at, changed_at, created_at;

-- name: alert_rule_delete
DELETE FROM pgqueue.alert_rules WHERE id = %(id)s RETURNING id;

-- name: alert_rule_measure
-- The current value of every enabled rule. Each CASE branch is a correlated subquery, run only for the rules
-- of its kind. failure_rate_above: failed attempts / (failed attempts + successes) over the window, in %;
-- no_live_worker: how many workers serving the queue sent a heartbeat within threshold seconds.
SELECT r.id, r.name, r.kind, r.queue, r.threshold, r.webhook_url, r.firing,
       CASE r.kind
         WHEN 'dead_letters_above' THEN (
           SELECT count(*) FROM pgqueue.finished_jobs f
           WHERE f.state = 'dead' AND (r.queue IS NULL OR f.queue = r.queue))::float8
         WHEN 'failure_rate_above' THEN (
           SELECT CASE WHEN s.ok + e.failed = 0 THEN 0 ELSE 100.0 * e.failed / (s.ok + e.failed) END
           FROM (SELECT count(*) AS ok FROM pgqueue.finished_jobs f
                 WHERE f.state = 'succeeded' AND f.finished_at > now() - make_interval(secs => r.window_seconds)
                   AND (r.queue IS NULL OR f.queue = r.queue)) AS s,
                (SELECT count(*) AS failed FROM pgqueue.job_errors x
                 WHERE x.failed_at > now() - make_interval(secs => r.window_seconds)
                   AND (r.queue IS NULL OR x.queue = r.queue)) AS e)::float8
         WHEN 'oldest_queued_above' THEN (
           SELECT coalesce(extract(epoch FROM now() - min(j.scheduled_for)), 0) FROM pgqueue.jobs j
           WHERE j.state = 'queued' AND (r.queue IS NULL OR j.queue = r.queue))::float8
         WHEN 'no_live_worker' THEN (
           SELECT count(*) FROM pgqueue.workers w
           WHERE w.last_heartbeat_at > now() - make_interval(secs => r.threshold)
             AND (r.queue IS NULL OR w.queues IS NULL OR r.queue = ANY(w.queues)))::float8
       END AS value
FROM pgqueue.alert_rules r
WHERE r.enabled
ORDER BY r.id;

-- name: alert_rule_record
-- Store a rule's evaluation; when its firing state changes, add the change to the history and return it (no row
-- otherwise), so the caller publishes it to the outbox in this same transaction. The row lock makes two
-- evaluators (a leader handing over) record a change once.
WITH old AS (
    SELECT id, firing FROM pgqueue.alert_rules WHERE id = %(id)s FOR UPDATE
), upd AS (
    UPDATE pgqueue.alert_rules r
    SET last_value = %(value)s, last_evaluated_at = now(), firing = %(firing)s,
        changed_at = CASE WHEN r.firing IS DISTINCT FROM %(firing)s THEN now() ELSE r.changed_at END
    FROM old WHERE r.id = old.id
    RETURNING r.*, old.firing AS was_firing
)
INSERT INTO pgqueue.alert_events (rule_id, rule_name, kind, queue, status, value, threshold, message, webhook_url)
SELECT id, name, kind, queue, CASE WHEN firing THEN 'firing' ELSE 'resolved' END, %(value)s, threshold,
       %(message)s, webhook_url
FROM upd WHERE firing IS DISTINCT FROM was_firing
RETURNING id, rule_id, rule_name, kind, queue, status, value, threshold, message, webhook_url, created_at;

-- name: alert_event_sent
-- The outbox message that delivers the event (written in the same transaction as the event).
UPDATE pgqueue.alert_events SET outbox_id = %(outbox_id)s WHERE id = %(id)s;

-- name: alert_event_undeliverable
-- An event whose message the outbox refused (the rule's URL): it stays in the history, failed, saying why.
UPDATE pgqueue.alert_events SET delivery = 'failed', last_error = %(error)s WHERE id = %(id)s;

-- name: alert_event_list
-- The history, newest first, with each event's delivery as its outbox message tells it: pending (attempts so
-- far, the last error), delivered, or failed (the message is dead: `pgqueue outbox replay` sends it again). A
-- message that is gone was delivered: the relay forgets only delivered messages. Events from before the
-- outbox (outbox_id NULL) keep their own record.
SELECT e.id, e.rule_id, e.rule_name, e.kind, e.queue, e.status, e.value, e.threshold, e.message, e.created_at,
       CASE WHEN e.outbox_id IS NULL THEN e.delivery
            WHEN o.id IS NULL OR o.state = 'delivered' THEN 'delivered'
            WHEN o.state = 'dead' THEN 'failed'
            ELSE 'pending' END,
       CASE WHEN e.outbox_id IS NULL THEN e.attempts ELSE o.attempt END,
       CASE WHEN e.outbox_id IS NULL THEN e.delivered_at WHEN o.state = 'delivered' THEN o.finished_at END,
       CASE WHEN e.outbox_id IS NULL THEN e.last_error ELSE o.last_error END,
       e.outbox_id
FROM pgqueue.alert_events AS e
LEFT JOIN pgqueue.outbox AS o ON o.id = e.outbox_id
WHERE (%(before)s::bigint IS NULL OR e.id < %(before)s)
ORDER BY e.id DESC LIMIT %(limit)s;

-- name: leader_try_lock
SELECT pg_try_advisory_lock(%(key)s::bigint);

-- name: web_jobs_missing
-- Which of these ids name no job, live or finished (depends_on must name jobs that exist).
SELECT i FROM unnest(%(ids)s::bigint[]) AS i
WHERE NOT EXISTS (SELECT 1 FROM pgqueue.jobs j WHERE j.id = i)
  AND NOT EXISTS (SELECT 1 FROM pgqueue.finished_jobs f WHERE f.id = i)
ORDER BY i;

-- name: web_job_committed
-- Whether job %(id)s exists for everyone (run outside the enqueuing transaction). POST /jobs asks it, before it
-- commits, of the job an enqueue with a key returned: a job made by that enqueue is not visible here yet, and a
-- job that a key handed back always is (the enqueue waited for its maker's commit), so this tells them apart.
SELECT EXISTS (SELECT 1 FROM pgqueue.jobs WHERE id = %(id)s)
    OR EXISTS (SELECT 1 FROM pgqueue.finished_jobs WHERE id = %(id)s);

-- name: web_enqueue_key_task
-- The task of the job an idempotency key belongs to (NULL when the key is free or its job is gone).
SELECT (SELECT task FROM pgqueue.jobs WHERE id = k.job_id
        UNION ALL SELECT task FROM pgqueue.finished_jobs WHERE id = k.job_id LIMIT 1)
FROM pgqueue.enqueue_keys AS k WHERE k.key = %(key)s AND k.expires_at > now();
