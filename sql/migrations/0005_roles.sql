-- Migration 5 (the chaos suite's findings): least privilege for pgqueue.enqueue, and enqueue notifications
-- that do not serialise concurrent enqueuers. Every statement can run again.

-- Enqueue notifications under contention. PostgreSQL serialises the commits of every transaction that sent a
-- NOTIFY (a cluster-wide lock is held from pre-commit until the commit is flushed), so hundreds of enqueuers
-- each notifying committed one at a time: a fifth of the throughput with notifications off. Now, among the
-- transactions that started in the same 100 ms slot and enqueue into one queue at the same time, only the one
-- that takes the slot's advisory lock without waiting notifies; the others commit in parallel and leave the
-- wake-up to it. A worker woken by a notification claims once more shortly after (for the enqueues that
-- committed just after it), and the safety poll bounds every other wait. Without contention every enqueue
-- still notifies. `SET pgqueue.notify = off` turns a session's notifications off altogether.
CREATE OR REPLACE FUNCTION pgqueue.notify_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- SET pgqueue.notify = off: no wake-ups from this session (a bulk load; workers find the jobs when they
    -- next look: at once if busy, else at their safety poll).
    IF current_setting('pgqueue.notify', true) = 'off' THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify('pgqueue_jobs', q.queue)
    FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'queued') AS q
    WHERE pg_try_advisory_xact_lock(1885827445, hashtext(q.queue || ':' || floor(extract(epoch FROM now()) * 10)));
    RETURN NULL;
END;
$$;

-- Least privilege. pgqueue.enqueue runs with its owner's rights (SECURITY DEFINER), so a role may enqueue
-- through it without any right on the tables; its search_path is pinned, so no object a caller creates can
-- stand in for one the function uses. Only roles granted EXECUTE may call it (`pgqueue roles` grants it).
-- Whatever the function's signature: a later migration that replaces it must restate both attributes
-- (tests/chaos checks that every SECURITY DEFINER function in the schema pins its search_path).
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'pgqueue'::regnamespace AND p.proname = 'enqueue'
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, pg_temp', fn);
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', fn);
    END LOOP;
END;
$$;
