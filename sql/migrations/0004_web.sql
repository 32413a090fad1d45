-- 0004: the web layer (issue 7): API tokens, a control channel to workers with their counters, alert rules and
-- their history, and samples of queue depth for the dashboard's charts. Idempotent: safe to apply twice.

-- API tokens, stored hashed. A token is 256 random bits, so a fast hash (SHA-256) is enough: there is nothing
-- to brute-force that a slow hash would protect. The prefix is kept in clear so a user can tell tokens apart.
CREATE TABLE IF NOT EXISTS pgqueue.api_tokens (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL,
    token_hash   bytea       NOT NULL,
    prefix       text        NOT NULL,
    scopes       text[]      NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz,
    CONSTRAINT api_tokens_hash_key UNIQUE (token_hash),
    CONSTRAINT api_tokens_scopes_check
        CHECK (cardinality(scopes) >= 1 AND scopes <@ ARRAY['enqueue', 'read', 'admin']::text[])
);

-- The control channel to workers: the API writes a request on the worker's row, the worker reads it at its next
-- heartbeat (and clears it). The same round trip reports the worker's counters, which /metrics exposes.
ALTER TABLE pgqueue.workers
    ADD COLUMN IF NOT EXISTS requested_concurrency integer
        CONSTRAINT workers_requested_concurrency_check CHECK (requested_concurrency BETWEEN 1 AND 10000),
    ADD COLUMN IF NOT EXISTS drain_requested_at timestamptz,
    ADD COLUMN IF NOT EXISTS jobs_claimed bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS jobs_dead bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS leases_reclaimed bigint NOT NULL DEFAULT 0,
    ADD COLUMN IF NOT EXISTS notify_wakeups bigint NOT NULL DEFAULT 0;

-- Alert rules, evaluated by the leader of the serve processes. threshold means: a count of dead jobs
-- (dead_letters_above), a percentage of failed attempts over window_seconds (failure_rate_above), an age in
-- seconds (oldest_queued_above), a heartbeat age in seconds past which a worker is not live (no_live_worker).
-- queue NULL: every queue together.
CREATE TABLE IF NOT EXISTS pgqueue.alert_rules (
    id                bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name              text        NOT NULL,
    kind              text        NOT NULL,
    queue             text,
    threshold         float8      NOT NULL,
    window_seconds    integer     NOT NULL DEFAULT 300,
    webhook_url       text        NOT NULL,
    enabled           boolean     NOT NULL DEFAULT true,
    firing            boolean     NOT NULL DEFAULT false,
    last_value        float8,
    last_evaluated_at timestamptz,
    changed_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT alert_rules_name_key UNIQUE (name),
    CONSTRAINT alert_rules_kind_check
        CHECK (kind IN ('dead_letters_above', 'failure_rate_above', 'oldest_queued_above', 'no_live_worker')),
    CONSTRAINT alert_rules_threshold_check CHECK (threshold >= 0),
    CONSTRAINT alert_rules_window_check CHECK (window_seconds BETWEEN 10 AND 86400),
    CONSTRAINT alert_rules_webhook_check CHECK (webhook_url ~ '^https?://')
);

-- Alert history: one row per change of a rule (firing, resolved). It doubles as the webhook's delivery queue
-- until the transactional outbox lands: pending rows are posted, retried with backoff, then marked failed.
CREATE TABLE IF NOT EXISTS pgqueue.alert_events (
    id              bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id         bigint,
    rule_name       text        NOT NULL,
    kind            text        NOT NULL,
    queue           text,
    status          text        NOT NULL,
    value           float8,
    threshold       float8      NOT NULL,
    message         text        NOT NULL,
    webhook_url     text        NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivery        text        NOT NULL DEFAULT 'pending',
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    last_error      text,
    CONSTRAINT alert_events_rule_fkey FOREIGN KEY (rule_id) REFERENCES pgqueue.alert_rules (id) ON DELETE SET NULL,
    CONSTRAINT alert_events_status_check CHECK (status IN ('firing', 'resolved')),
    CONSTRAINT alert_events_delivery_check CHECK (delivery IN ('pending', 'delivered', 'failed'))
);

CREATE INDEX IF NOT EXISTS alert_events_pending_idx ON pgqueue.alert_events (next_attempt_at)
    WHERE delivery = 'pending';
CREATE INDEX IF NOT EXISTS alert_events_created_idx ON pgqueue.alert_events (created_at);

-- Queue depth over time for the dashboard: the leader samples pgqueue.jobs every few seconds. The live table
-- keeps no history of its own, so this is the only way to draw the curve afterwards.
CREATE TABLE IF NOT EXISTS pgqueue.queue_depth_samples (
    queue      text        NOT NULL,
    sampled_at timestamptz NOT NULL,
    scheduled  bigint      NOT NULL,
    queued     bigint      NOT NULL,
    running    bigint      NOT NULL,
    CONSTRAINT queue_depth_samples_pkey PRIMARY KEY (queue, sampled_at)
);

CREATE INDEX IF NOT EXISTS queue_depth_samples_sampled_at_idx ON pgqueue.queue_depth_samples (sampled_at);
