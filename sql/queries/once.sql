-- Effectively-once named queries: the outbox and its relay, idempotency keys, enqueue keys, job callbacks.
-- Loaded by pgqueue.queries. Time always comes from the database (now()).

-- name: outbox_insert
INSERT INTO pgqueue.outbox (topic, key, payload, url)
VALUES (%(topic)s, %(key)s, %(payload)s::json, %(url)s)
RETURNING id, delivery_id, created_at;

-- name: outbox_claim
-- Claim up to %(limit)s deliverable messages: pending, due, and the oldest pending one of their key (a key's
-- later messages wait until it is delivered or dead; NULL keys never wait). Claiming counts the attempt and
-- moves available_at a lease ahead, so while one relay delivers a message nobody else claims it or anything
-- after it in its key; if that relay dies, the lease runs out and the message is claimed again. The CTE is a
-- fence (no more rows updated than picked); SKIP LOCKED lets relays pass over each other's picks.
WITH picked AS (
    SELECT o.id FROM pgqueue.outbox AS o
    WHERE o.state = 'pending' AND o.available_at <= now()
      AND NOT EXISTS (SELECT 1 FROM pgqueue.outbox AS p
                      WHERE p.state = 'pending' AND p.key = o.key AND p.id < o.id)
    ORDER BY o.id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE pgqueue.outbox AS o
SET attempt = o.attempt + 1, available_at = now() + make_interval(secs => %(lease)s)
FROM picked
WHERE o.id = picked.id
RETURNING o.id, o.topic, o.key, o.payload::text, o.url, o.delivery_id, o.attempt, o.created_at,
          extract(epoch FROM now())::bigint;

-- name: outbox_next_due_in
-- Seconds until the next claimable message falls due (NULL when none), so the relay sleeps just that long.
-- Only the heads of keys count: a later message of a key waits for its head, however long ago it fell due.
SELECT extract(epoch FROM min(o.available_at) - now())::float8 FROM pgqueue.outbox AS o
WHERE o.state = 'pending' AND o.available_at > now()
  AND NOT EXISTS (SELECT 1 FROM pgqueue.outbox AS p WHERE p.state = 'pending' AND p.key = o.key AND p.id < o.id);

-- name: outbox_mark_delivered
-- A delivery that succeeded is a fact whoever claimed the message since, so only the state is fenced.
UPDATE pgqueue.outbox SET state = 'delivered', finished_at = now(), last_error = NULL
WHERE id = %(id)s AND state = 'pending'
RETURNING id;

-- name: outbox_deliver_notify
-- The NOTIFY sink: the notification and the mark go in one transaction, so listeners connected at the time
-- hear it exactly when it is marked delivered.
WITH m AS (
    UPDATE pgqueue.outbox SET state = 'delivered', finished_at = now(), last_error = NULL
    WHERE id = %(id)s AND state = 'pending'
    RETURNING id
)
SELECT id, pg_notify(%(channel)s, %(body)s) FROM m;

-- name: outbox_mark_failed
-- A failed attempt of the relay's own claim (fenced on the attempt it claimed): try again after %(delay)s
-- seconds, or give up (dead) once %(max_attempts)s attempts are spent.
UPDATE pgqueue.outbox
SET state = CASE WHEN attempt >= %(max_attempts)s THEN 'dead' ELSE 'pending' END,
    finished_at = CASE WHEN attempt >= %(max_attempts)s THEN now() END,
    available_at = now() + make_interval(secs => %(delay)s::float8),
    last_error = %(error)s
WHERE id = %(id)s AND attempt = %(attempt)s AND state = 'pending'
RETURNING state;

-- name: outbox_release
-- A relay that stops hands back what it claimed but did not deliver: due at once, the attempt not counted.
UPDATE pgqueue.outbox AS o SET attempt = o.attempt - 1, available_at = now()
FROM unnest(%(ids)s::bigint[], %(attempts)s::integer[]) AS r(id, attempt)
WHERE o.id = r.id AND o.attempt = r.attempt AND o.state = 'pending'
RETURNING o.id;

-- name: outbox_get
SELECT id, topic, key, payload::text, url, delivery_id, state, attempt, available_at, created_at, finished_at,
       last_error
FROM pgqueue.outbox WHERE id = %(id)s;

-- name: outbox_list
-- Newest first; NULL filters match everything.
SELECT id, topic, key, payload::text, url, delivery_id, state, attempt, available_at, created_at, finished_at,
       last_error
FROM pgqueue.outbox
WHERE (%(state)s::text IS NULL OR state = %(state)s) AND (%(topic)s::text IS NULL OR topic = %(topic)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: outbox_replay
-- Dead messages back to pending, due at once, with a full set of attempts. The delivery id stays, so a receiver
-- that did get an earlier attempt recognises the duplicate.
UPDATE pgqueue.outbox
SET state = 'pending', attempt = 0, available_at = now(), finished_at = NULL
WHERE state = 'dead'
  AND (%(ids)s::bigint[] IS NULL OR id = ANY(%(ids)s::bigint[]))
  AND (%(topic)s::text IS NULL OR topic = %(topic)s)
RETURNING id;

-- name: outbox_prune
-- Forget a slice of messages delivered more than %(older_than)s seconds ago; the count comes back.
WITH d AS (
    DELETE FROM pgqueue.outbox
    WHERE id IN (
        SELECT id FROM pgqueue.outbox
        WHERE state = 'delivered' AND finished_at < now() - make_interval(secs => %(older_than)s)
        LIMIT %(limit)s
    )
    RETURNING 1
)
SELECT count(*) FROM d;

-- name: relay_try_lead
-- Leader election among relays: a session advisory lock, held for as long as the relay's connection lives.
-- It saves work (one relay polls and delivers instead of all of them); correctness rests on the claims'
-- leases, not on it.
SELECT pg_try_advisory_lock(%(key)s::bigint);

-- name: relay_listen
LISTEN pgqueue_outbox;

-- name: idempotency_lock_wait
-- Idempotent blocks of one key run one at a time: a transaction-scoped advisory lock, released by the commit
-- that stores the block's result, or by the rollback of a block that raised or whose process died.
SELECT pg_advisory_xact_lock(%(space)s::integer, hashtext(%(key)s));

-- name: idempotency_lock_try
SELECT pg_try_advisory_xact_lock(%(space)s::integer, hashtext(%(key)s));

-- name: idempotency_lock_timeout
SELECT set_config('lock_timeout', %(timeout)s, true);

-- name: idempotency_get
-- Run after the lock is held, as a statement of its own, so its snapshot sees what the previous holder stored.
SELECT result::text FROM pgqueue.idempotency_keys WHERE key = %(key)s AND expires_at > now();

-- name: idempotency_store
INSERT INTO pgqueue.idempotency_keys (key, result, job_id, expires_at)
VALUES (%(key)s, %(result)s::json, %(job_id)s, now() + make_interval(secs => %(ttl)s::float8))
ON CONFLICT (key) DO UPDATE
SET result = excluded.result, job_id = excluded.job_id, created_at = now(), expires_at = excluded.expires_at;

-- name: idempotency_prune
WITH d AS (
    DELETE FROM pgqueue.idempotency_keys
    WHERE key IN (SELECT key FROM pgqueue.idempotency_keys WHERE expires_at <= now() LIMIT %(limit)s)
    RETURNING 1
)
SELECT count(*) FROM d;

-- name: enqueue_key_get
SELECT job_id FROM pgqueue.enqueue_keys WHERE key = %(key)s AND expires_at > now();

-- name: enqueue_key_claim
-- Give %(key)s to job %(job_id)s unless a live key has it already; either way the owner comes back. ON CONFLICT
-- DO UPDATE waits for a concurrent claimer's transaction and then reads its committed row, so every caller
-- learns the one winner in this statement. An expired key is taken over.
INSERT INTO pgqueue.enqueue_keys AS k (key, job_id, expires_at)
VALUES (%(key)s, %(job_id)s, now() + make_interval(secs => %(ttl)s::float8))
ON CONFLICT (key) DO UPDATE
SET job_id = CASE WHEN k.expires_at <= now() THEN excluded.job_id ELSE k.job_id END,
    created_at = CASE WHEN k.expires_at <= now() THEN now() ELSE k.created_at END,
    expires_at = CASE WHEN k.expires_at <= now() THEN excluded.expires_at ELSE k.expires_at END
RETURNING k.job_id;

-- name: enqueue_key_savepoint
SAVEPOINT pgqueue_enqueue_key;

-- name: enqueue_key_rollback
-- Another caller's job owns the key: undo the job this caller inserted.
ROLLBACK TO SAVEPOINT pgqueue_enqueue_key;

-- name: enqueue_key_release
RELEASE SAVEPOINT pgqueue_enqueue_key;

-- name: enqueue_key_prune
WITH d AS (
    DELETE FROM pgqueue.enqueue_keys
    WHERE key IN (SELECT key FROM pgqueue.enqueue_keys WHERE expires_at <= now() LIMIT %(limit)s)
    RETURNING 1
)
SELECT count(*) FROM d;

-- name: job_callback_insert
INSERT INTO pgqueue.job_callbacks (job_id, url) VALUES (%(job_id)s, %(url)s)
ON CONFLICT (job_id) DO UPDATE SET url = excluded.url;
