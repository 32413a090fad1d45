-- The raw-SQL ceiling (bench/drivers/raw_sql.py): the smallest honest SKIP LOCKED queue.

-- name: raw_schema
DROP TABLE IF EXISTS raw_jobs;
CREATE TABLE raw_jobs (
    id bigserial PRIMARY KEY,
    args json NOT NULL DEFAULT '{}',
    state text NOT NULL DEFAULT 'queued'
);
CREATE INDEX raw_jobs_queued_idx ON raw_jobs (id) WHERE state = 'queued';
CREATE TABLE IF NOT EXISTS raw_finished (id bigint PRIMARY KEY, args json NOT NULL, finished_at timestamptz NOT NULL)

-- name: raw_reset
TRUNCATE raw_jobs, raw_finished

-- name: raw_insert
INSERT INTO raw_jobs (args) VALUES (%s)

-- name: raw_insert_notify
-- One transaction: the row and the wake-up, as a queue's enqueue must.
WITH i AS (INSERT INTO raw_jobs (args) VALUES (%s) RETURNING id) SELECT pg_notify('raw_jobs', '') FROM i

-- name: raw_copy
COPY raw_jobs (args) FROM STDIN

-- name: raw_claim
-- Up to %s queued rows, oldest first; SKIP LOCKED lets connections pass over each other's rows. The CTE is
-- a fence: written as `WHERE id IN (subquery)` the planner may hash-join it against a scan of the whole table.
WITH picked AS (SELECT id FROM raw_jobs WHERE state = 'queued' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)
UPDATE raw_jobs AS j SET state = 'running' FROM picked WHERE j.id = picked.id
RETURNING j.id, j.args::text

-- name: raw_complete
DELETE FROM raw_jobs WHERE id = ANY(%s)

-- name: raw_remaining
SELECT count(*) FROM raw_jobs

-- name: raw_listen
LISTEN raw_jobs

-- name: raw_fill_backlog
-- The deep-backlog case: %(finished)s rows of history (in a table of their own, as a queue that keeps history
-- must) and %(queued)s queued rows, made server-side.
WITH h AS (
    INSERT INTO raw_finished (id, args, finished_at)
    SELECT -g, '{}', now() FROM generate_series(1, %(finished)s) AS g
)
INSERT INTO raw_jobs (args) SELECT '{}' FROM generate_series(1, %(queued)s)
