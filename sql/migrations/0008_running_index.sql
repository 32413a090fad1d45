-- Migration 8 (performance): one index entry fewer for every claim. Every statement can run again.

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
