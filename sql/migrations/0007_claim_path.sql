-- Migration 7 (performance): cheaper checks on the claim path, and autovacuum tuned for the hot table.
-- Every statement can run again.

-- Name checks. PostgreSQL's regex engine expands a bounded repeat such as {1,100} into that many states, so
-- the old checks cost 3 to 8 microseconds per row, and CHECK constraints run on every UPDATE (each claim, each
-- retry), not only on INSERT: about a third of a claim's server time. An unbounded class plus a length test
-- accepts exactly the same names for a tenth of the cost. NOT VALID then VALIDATE: the new constraint is
-- checked against existing rows without blocking enqueues and claims meanwhile.
ALTER TABLE pgqueue.jobs DROP CONSTRAINT IF EXISTS jobs_queue_check;
ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_queue_check
    CHECK (queue ~ '^[A-Za-z0-9_.:-]+$' AND length(queue) <= 100) NOT VALID;
ALTER TABLE pgqueue.jobs VALIDATE CONSTRAINT jobs_queue_check;
ALTER TABLE pgqueue.jobs DROP CONSTRAINT IF EXISTS jobs_task_check;
ALTER TABLE pgqueue.jobs ADD CONSTRAINT jobs_task_check
    CHECK (task ~ '^[A-Za-z_][A-Za-z0-9_.:-]*$' AND length(task) <= 200) NOT VALID;
ALTER TABLE pgqueue.jobs VALIDATE CONSTRAINT jobs_task_check;

-- The live table turns over every row it holds: each job is inserted, updated on claim and deleted on
-- completion. Vacuum it after a small share of dead rows (the claim index otherwise walks over dead entries
-- after a burst) and without the cost-based pauses meant for large, quiet tables.
ALTER TABLE pgqueue.jobs SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 1000,
                              autovacuum_analyze_scale_factor = 0.05, autovacuum_vacuum_cost_delay = 0);
