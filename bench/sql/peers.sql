-- Bookkeeping for the peers' drivers (bench/drivers/pgqueuer_driver.py, procrastinate_driver.py): emptying
-- their tables between runs and counting what is left. Their hot paths are their own code.

-- name: pgqueuer_reset
TRUNCATE pgqueuer, pgqueuer_log, pgqueuer_statistics

-- name: pgqueuer_remaining
SELECT count(*) FROM pgqueuer

-- name: procrastinate_reset
TRUNCATE procrastinate_jobs, procrastinate_events, procrastinate_periodic_defers, procrastinate_workers CASCADE

-- name: procrastinate_remaining
SELECT count(*) FROM procrastinate_jobs WHERE status IN ('todo', 'doing')
