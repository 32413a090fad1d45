-- Bulk enqueue through COPY (App._enqueue_many): the fastest way rows get into PostgreSQL. COPY cannot run
-- expressions, so ids are taken from the sequence first, in the same transaction, and the columns left out
-- (state 'queued', scheduled_for and created_at now()) come from their defaults; jobs with a run_at go through
-- job_insert_many instead, so that "is it due?" is decided by the database clock. The statement trigger on
-- pgqueue.jobs fires for COPY as for INSERT: one notification per queue.

-- name: job_ids_take
-- %(n)s fresh job ids, in order, and the transaction's now() (what the defaults will write).
SELECT now(), array(SELECT nextval('pgqueue.job_id_seq') FROM generate_series(1, %(n)s))

-- name: job_copy_in
COPY pgqueue.jobs (id, queue, task, args, kwargs, priority, max_attempts) FROM STDIN
