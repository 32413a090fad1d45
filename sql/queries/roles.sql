-- Least-privilege roles (pgqueue.roles, `pgqueue roles`). Statements are psycopg.sql templates: {enqueue},
-- {worker} and {admin} are role identifiers, {enqueue_name} and the like the same names as literals. Every
-- statement can run again (after each `pgqueue migrate`, so new objects get their grants).

-- name: roles_create
-- Three group roles, NOLOGIN: grant them to login roles (GRANT pgqueue_worker TO billing_worker).
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {enqueue_name}) THEN
        CREATE ROLE {enqueue} NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {worker_name}) THEN
        CREATE ROLE {worker} NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = {admin_name}) THEN
        CREATE ROLE {admin} NOLOGIN;
    END IF;
END;
$$;

-- name: roles_grant
-- {enqueue}: may call pgqueue.enqueue() (SECURITY DEFINER) and nothing else: no right on any table.
-- {worker}: what a worker does: claims, outcomes, heartbeats, maintenance (which prunes finished jobs, so it
--   deletes from finished_jobs: the dead-letter operations use the same rights), and enqueues from handlers.
-- {admin}: every right on pgqueue's tables, views and sequences (dead letters, prune, TRUNCATE). Migrations
--   stay with the role that owns the schema.
GRANT USAGE ON SCHEMA pgqueue TO {enqueue}, {worker}, {admin};
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT p.oid::regprocedure FROM pg_proc p
              WHERE p.pronamespace = 'pgqueue'::regnamespace AND p.proname = 'enqueue'
    LOOP
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I, %I, %I', fn, {enqueue_name}, {worker_name},
                       {admin_name});
    END LOOP;
END;
$$;
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.jobs, pgqueue.workers TO {worker};
GRANT SELECT, INSERT, DELETE ON pgqueue.finished_jobs, pgqueue.job_errors TO {worker};
GRANT SELECT ON pgqueue.schema_migrations, pgqueue.queue_stats, pgqueue.worker_stats, pgqueue.dead_letters
    TO {worker};
-- Flow control: claim_controlled locks a queue's row (UPDATE right), fair claims keep group virtual times,
-- rate limits log starts, dependencies settle, batches and cron schedules are written by workers.
GRANT SELECT, UPDATE ON pgqueue.queues TO {worker};
GRANT SELECT, INSERT, UPDATE ON pgqueue.job_groups, pgqueue.batches, pgqueue.schedules TO {worker};
GRANT SELECT, INSERT, UPDATE, DELETE ON pgqueue.job_dependencies TO {worker};
GRANT SELECT, INSERT, DELETE ON pgqueue.rate_starts, pgqueue.schedule_ticks TO {worker};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA pgqueue TO {worker};
GRANT ALL PRIVILEGES ON ALL TABLES IN SCHEMA pgqueue TO {admin};
GRANT ALL PRIVILEGES ON ALL SEQUENCES IN SCHEMA pgqueue TO {admin};
