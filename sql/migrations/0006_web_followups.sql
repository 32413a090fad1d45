-- Migration 6 (issue 7 follow-ups): alerts are delivered through the transactional outbox. Each change of an
-- alert rule is published to pgqueue.outbox in the transaction that records it, and the relay delivers it to
-- the rule's webhook (retries, backoff, dead messages and replay are the outbox's); the history reads the
-- delivery state from the message. Every statement can run again.

-- The outbox message that delivers this event. NULL only for events recorded before this migration that had
-- already been delivered or given up on: those keep their own delivery columns, which newer events ignore.
ALTER TABLE pgqueue.alert_events ADD COLUMN IF NOT EXISTS outbox_id bigint;

-- Events still waiting for the old delivery become outbox messages, so none is dropped by the upgrade.
WITH waiting AS (
    SELECT id, rule_id, rule_name, kind, queue, status, value, threshold, message, webhook_url, created_at
    FROM pgqueue.alert_events
    WHERE delivery = 'pending' AND outbox_id IS NULL
    ORDER BY id
    FOR UPDATE
), sent AS (
    INSERT INTO pgqueue.outbox (topic, key, payload, url)
    SELECT 'pgqueue.alert.' || w.status, 'pgqueue.alert:' || coalesce(w.rule_id::text, w.rule_name),
           json_build_object('event', 'alert.' || w.status, 'event_id', w.id, 'alert', w.rule_name,
                             'kind', w.kind, 'queue', w.queue, 'status', w.status, 'value', w.value,
                             'threshold', w.threshold, 'message', w.message, 'at', w.created_at),
           w.webhook_url
    FROM waiting AS w
    ORDER BY w.id
    RETURNING id, (payload ->> 'event_id')::bigint AS event_id
)
UPDATE pgqueue.alert_events AS e SET outbox_id = sent.id FROM sent WHERE e.id = sent.event_id;

-- The old delivery queue's index: nothing reads it any more.
DROP INDEX IF EXISTS pgqueue.alert_events_pending_idx;
