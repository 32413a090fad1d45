-- Queries of the migration runner (pgqueue.migrate). The runner makes its own bookkeeping table, so that
-- migration 1 is recorded like every other.

-- name: migrations_lock
SELECT pg_advisory_lock(%(key)s::bigint);

-- name: migrations_unlock
SELECT pg_advisory_unlock(%(key)s::bigint);

-- name: migrations_prepare
CREATE SCHEMA IF NOT EXISTS pgqueue;
CREATE TABLE IF NOT EXISTS pgqueue.schema_migrations (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: migrations_table_exists
SELECT to_regclass('pgqueue.schema_migrations') IS NOT NULL;

-- name: migrations_applied
SELECT version, applied_at FROM pgqueue.schema_migrations ORDER BY version;

-- name: migrations_record
INSERT INTO pgqueue.schema_migrations (version, name) VALUES (%(version)s, %(name)s);
