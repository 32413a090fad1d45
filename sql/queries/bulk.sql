-- Bulk enqueue through COPY (pgqueue/bulk.py).

-- name: job_ids_take
-- %(n)s ids from the jobs sequence, in order, and the transaction's now(): the COPY that follows writes them
-- itself, as RETURNING cannot tell a COPY's ids. now() as text goes into the COPY unchanged, so created_at
-- and scheduled_for are exactly what the column defaults would have given.
SELECT array(SELECT nextval('pgqueue.job_id_seq') FROM generate_series(1, %(n)s)), now(), now()::text;

-- name: job_copy_in
COPY pgqueue.jobs (id, queue, task, args, kwargs, priority, state, max_attempts, scheduled_for, created_at,
                   group_key, batch_id)
FROM STDIN;
