-- Bulk enqueue through COPY (pgqueue/bulk.py).

-- name: job_ids_take
-- %(n)s ids from the jobs sequence, in order, and the transaction's now(): the COPY that follows writes the ids
-- itself, as RETURNING cannot tell a COPY's ids. The COPY runs in the same transaction and leaves state,
-- scheduled_for and created_at to their column defaults ('queued', now(), now()), so the now() read here is
-- the jobs' time exactly, and the server parses no timestamp per row.
SELECT array(SELECT nextval('pgqueue.job_id_seq') FROM generate_series(1, %(n)s)), now();

-- name: job_copy_in
COPY pgqueue.jobs (id, queue, task, args, kwargs, priority, max_attempts, group_key, batch_id)
FROM STDIN;
