-- Migration 10 (performance): a one-job enqueue's notification costs a quarter of what it did. Every
-- statement can run again.

-- notify_inserted picked the distinct queues of a statement's rows before deciding whom to wake. For the usual
-- statement of one job that aggregate was most of what notifying added to an enqueue (6.5 µs of PL/pgSQL per
-- statement against 1.5 µs now, measured over 20,000 one-job inserts). Under contention the slot lock's tries
-- remain the larger part of what notifications cost against `SET pgqueue.notify = off` (scenario 14). Each row
-- now tries its queue's slot lock directly: a transaction that holds it takes it again from its own lock table,
-- and pg_notify folds repeated wake-ups. A bulk insert of 100,000 rows costs the same as before, whether the
-- slot lock is free or held elsewhere.
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
