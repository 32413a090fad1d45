-- Migration 9 (flow control): a fair queue's weights hold whatever a claim asks for. Every statement can run again.

-- claim_controlled split each claim evenly among the groups it served, so weights counted only in claims of one
-- job; a worker with several free slots gave a group of weight 3 no more than one of weight 1. Each group's share
-- of a claim now follows its virtual time and weight.

-- Claim from a controlled queue: paused, limited or fair. The queue's row is locked for the claim, so the
-- claimers of one controlled queue take turns and every count they read is exact; plain queues never come here.
CREATE OR REPLACE FUNCTION pgqueue.claim_controlled(p_queue text, p_worker uuid, p_lease float8, p_limit integer)
RETURNS SETOF pgqueue.jobs
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    cfg pgqueue.queues;
    allowance integer := p_limit;
    running integer;
    started integer;
    group_keys text[];
    group_vtimes float8[];
    group_weights float8[];
    group_shares integer[];
    group_allow integer;
    due integer;
    carry integer;
    taken integer;
    ids bigint[] := '{}';
    picked bigint[];
BEGIN
    SELECT * INTO cfg FROM pgqueue.queues WHERE name = p_queue FOR UPDATE;
    IF NOT FOUND OR cfg.paused THEN
        RETURN;
    END IF;
    IF cfg.concurrency_limit IS NOT NULL THEN
        SELECT count(*) INTO running FROM pgqueue.jobs WHERE queue = p_queue AND state = 'running';
        allowance := least(allowance, cfg.concurrency_limit - running);
    END IF;
    IF cfg.rate_limit IS NOT NULL THEN
        SELECT count(*) INTO started FROM pgqueue.rate_starts
        WHERE queue = p_queue AND group_key = '' AND started_at > now() - make_interval(secs => cfg.rate_period);
        allowance := least(allowance, cfg.rate_limit - started);
    END IF;
    IF allowance <= 0 THEN
        RETURN;
    END IF;

    IF cfg.fair OR cfg.group_concurrency_limit IS NOT NULL OR cfg.group_rate_limit IS NOT NULL THEN
        -- Groups with queued work, found by a loose index scan, served lowest virtual time first. A group's
        -- virtual time grows by 1/weight per job it is given, so a group with a million jobs cannot take every
        -- slot and one of weight 3 gets three claims for every one of weight 1.
        WITH RECURSIVE g AS (
            (SELECT j.group_key FROM pgqueue.jobs j
             WHERE j.state = 'queued' AND j.queue = p_queue AND j.group_key IS NOT NULL
             ORDER BY j.group_key LIMIT 1)
            UNION ALL
            SELECT (SELECT j.group_key FROM pgqueue.jobs j
                    WHERE j.state = 'queued' AND j.queue = p_queue AND j.group_key > g.group_key
                    ORDER BY j.group_key LIMIT 1)
            FROM g WHERE g.group_key IS NOT NULL
        ), active AS (
            SELECT g.group_key,
                   coalesce(s.vtime, (SELECT coalesce(min(vtime), 0) FROM pgqueue.job_groups WHERE queue = p_queue))
                       AS vtime,
                   coalesce(s.weight, 1) AS weight
            FROM g LEFT JOIN pgqueue.job_groups s ON s.queue = p_queue AND s.group_key = g.group_key
            WHERE g.group_key IS NOT NULL
        )
        SELECT coalesce(array_agg(a.group_key ORDER BY a.vtime, a.group_key), '{}'),
               coalesce(array_agg(a.vtime ORDER BY a.vtime, a.group_key), '{}'),
               coalesce(array_agg(a.weight ORDER BY a.vtime, a.group_key), '{}')
        INTO group_keys, group_vtimes, group_weights FROM active a;
        -- Each group's share of this claim, by weighted fair queueing: a group's k-th next job starts at virtual
        -- time vtime + (k - 1) / weight, and the claim takes the `allowance` earliest starts. A group's first
        -- start is its vtime, so only the first `allowance` groups in vtime order can hold one. (An even split of
        -- one claim among its groups ignored the weights whenever a claim asked for more than one job.)
        SELECT coalesce(array_agg(coalesce(t.n, 0) ORDER BY g.i), '{}') INTO group_shares
        FROM generate_series(1, least(cardinality(group_keys), allowance)) AS g(i)
        LEFT JOIN (
            SELECT s.i, count(*)::integer AS n FROM (
                SELECT g2.i FROM generate_series(1, least(cardinality(group_keys), allowance)) AS g2(i),
                                 generate_series(0, allowance - 1) AS k
                ORDER BY group_vtimes[g2.i] + k / group_weights[g2.i], g2.i
                LIMIT allowance
            ) AS s GROUP BY s.i
        ) AS t ON t.i = g.i;
        -- Two sweeps in virtual time order. The first gives each group its share, plus what groups before it
        -- could not take (limits, fewer jobs, rows locked by others). A group short of jobs late in the order
        -- leaves part unused; the second sweep hands that round again, so a claim comes back short only when
        -- the queue is. Not with per-group limits: their counts are read once per group, in the first sweep.
        FOR sweep IN 1 .. 2 LOOP
            EXIT WHEN allowance <= 0 OR (sweep = 2 AND (cardinality(ids) = 0
                OR cfg.group_concurrency_limit IS NOT NULL OR cfg.group_rate_limit IS NOT NULL));
            carry := 0;
            FOR i IN 1 .. cardinality(group_keys) LOOP
                EXIT WHEN allowance <= 0;
                due := CASE WHEN sweep = 1 THEN coalesce(group_shares[i], 0) + carry ELSE allowance END;
                group_allow := least(allowance, due);
                IF cfg.group_concurrency_limit IS NOT NULL THEN
                    SELECT count(*) INTO running FROM pgqueue.jobs
                    WHERE queue = p_queue AND group_key = group_keys[i] AND state = 'running';
                    group_allow := least(group_allow, cfg.group_concurrency_limit - running);
                END IF;
                IF cfg.group_rate_limit IS NOT NULL THEN
                    SELECT count(*) INTO started FROM pgqueue.rate_starts
                    WHERE queue = p_queue AND group_key = group_keys[i]
                      AND started_at > now() - make_interval(secs => cfg.group_rate_period);
                    group_allow := least(group_allow, cfg.group_rate_limit - started);
                END IF;
                carry := due;
                CONTINUE WHEN group_allow <= 0;
                -- SKIP LOCKED passes over other transactions' locks, not ours: leave out what we picked.
                SELECT array_agg(c.id) INTO picked FROM (
                    SELECT j.id FROM pgqueue.jobs j
                    WHERE j.state = 'queued' AND j.queue = p_queue AND j.group_key = group_keys[i]
                      AND j.id <> ALL (ids)
                    ORDER BY j.priority DESC, j.scheduled_for, j.id
                    LIMIT group_allow FOR UPDATE SKIP LOCKED
                ) AS c;
                taken := coalesce(cardinality(picked), 0);
                carry := due - taken;
                CONTINUE WHEN taken = 0;
                ids := ids || picked;
                allowance := allowance - taken;
                INSERT INTO pgqueue.job_groups AS s (queue, group_key, vtime)
                VALUES (p_queue, group_keys[i], group_vtimes[i] + taken / group_weights[i])
                ON CONFLICT (queue, group_key) DO UPDATE SET vtime = s.vtime + taken / s.weight;
                IF cfg.group_rate_limit IS NOT NULL THEN
                    INSERT INTO pgqueue.rate_starts SELECT p_queue, group_keys[i], now() FROM generate_series(1, taken);
                END IF;
            END LOOP;
        END LOOP;
        -- Jobs without a group share what the groups left.
        IF allowance > 0 THEN
            SELECT array_agg(c.id) INTO picked FROM (
                SELECT j.id FROM pgqueue.jobs j
                WHERE j.state = 'queued' AND j.queue = p_queue AND j.group_key IS NULL
                ORDER BY j.priority DESC, j.scheduled_for, j.id
                LIMIT allowance FOR UPDATE SKIP LOCKED
            ) AS c;
            ids := ids || coalesce(picked, '{}');
        END IF;
    ELSE
        SELECT array_agg(c.id) INTO picked FROM (
            SELECT j.id FROM pgqueue.jobs j
            WHERE j.state = 'queued' AND j.queue = p_queue
            ORDER BY j.priority DESC, j.scheduled_for, j.id
            LIMIT allowance FOR UPDATE SKIP LOCKED
        ) AS c;
        ids := coalesce(picked, '{}');
    END IF;

    IF cfg.rate_limit IS NOT NULL AND cardinality(ids) > 0 THEN
        INSERT INTO pgqueue.rate_starts SELECT p_queue, '', now() FROM generate_series(1, cardinality(ids));
    END IF;
    RETURN QUERY
    UPDATE pgqueue.jobs AS j
    SET state = 'running', attempt = j.attempt + 1, started_at = now(), worker_id = p_worker,
        lease_expires_at = now() + make_interval(secs => p_lease)
    WHERE j.id = ANY(ids)
    RETURNING j.*;
END;
$$;
