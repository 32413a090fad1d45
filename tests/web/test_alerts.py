"""Alerts: rules in the database, measured by the serve leader, published to the outbox with the change that
fires them and posted to the rule's webhook by the relay (retried on failure), with a history that shows the
delivery; leadership passes to another serve process when the leader goes."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psycopg
import pytest

from pgqueue import App, Relay, RelayConfig
from pgqueue.web import alerts
from pgqueue.web.access import Settings
from pgqueue.web.database import Database
from pgqueue.web.leader import Leader
from pgqueue.web.models import AlertEvent
from tests.conftest import ROOT, wait_for
from tests.web.conftest import Live, clean_web_tables


class Hook:
    """A webhook receiver on 127.0.0.1 that answers 500 to its first ``failures`` posts. ``posts`` holds every
    post (headers and body), ``received`` the bodies of those it accepted."""

    def __init__(self) -> None:
        self.posts: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.received: list[dict[str, Any]] = []
        self.failures = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.posts.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if hook.failures > 0:
                    hook.failures -= 1
                    self.send_response(500)
                else:
                    hook.received.append(body)
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# A relay that retries quickly, so a test sees a failed attempt retried within a second.
FAST_RELAY = RelayConfig(retry_base=0.05, retry_cap=0.2, poll_interval=0.2, max_attempts=2)


MIGRATION = ROOT / "sql" / "migrations" / "0006_web_followups.sql"


def alert_history(dsn: str) -> list[AlertEvent]:
    """GET /alerts/events, read as the endpoint reads it."""

    async def read() -> list[AlertEvent]:
        database = Database(dsn)
        await database.open()
        try:
            keys = list(AlertEvent.model_fields)
            rows = await database.fetch("alert_event_list", {"before": None, "limit": 100})
            return [AlertEvent(**dict(zip(keys, row, strict=True))) for row in rows]
        finally:
            await database.close()

    return asyncio.run(read())


@pytest.fixture
def hook() -> Iterator[Hook]:
    receiver = Hook()
    yield receiver
    receiver.close()


def bury(db: psycopg.Connection[Any], job_id: int, queue: str) -> None:
    db.execute("""INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt,
                  max_attempts, scheduled_for, created_at, finished_at)
                  VALUES (%s, %s, 't.x', '[]', '{}', 0, 'dead', 1, 1, now(), now(), now())""", (job_id, queue))


def test_rule_api_validates_and_keeps_rules(client: httpx.Client, hook: Hook) -> None:
    rule = {"name": "dlq", "kind": "dead_letters_above", "queue": "mail", "threshold": 10, "webhook_url": hook.url}
    created = client.post("/alerts/rules", json=rule)
    assert created.status_code == 201 and created.json()["firing"] is False
    assert client.post("/alerts/rules", json=rule).status_code == 409
    for change, field in [({"kind": "cpu_above"}, "kind"), ({"webhook_url": "ftp://x"}, "webhook_url"),
                          ({"threshold": -1}, "threshold"), ({"name": ""}, "name"), ({"name": "a\x00b"}, "name"),
                          ({"window_seconds": 5}, "window_seconds"), ({"queue": "a b"}, "queue"),
                          ({"kind": "failure_rate_above", "threshold": 150, "name": "x"}, "threshold")]:
        response = client.post("/alerts/rules", json={**rule, "name": "other", **change})
        assert response.status_code == 422 and response.json()["fields"][0]["field"] == field, change
    rule_id = created.json()["id"]
    assert client.patch(f"/alerts/rules/{rule_id}", json={"enabled": False}).json()["enabled"] is False
    assert client.patch("/alerts/rules/999", json={"enabled": True}).status_code == 404
    assert [r["name"] for r in client.get("/alerts/rules").json()] == ["dlq"]
    assert client.delete(f"/alerts/rules/{rule_id}").json()["name"] == "dlq"
    assert client.delete(f"/alerts/rules/{rule_id}").status_code == 404


def test_a_firing_rule_posts_its_webhook_once_through_the_outbox(
        serve: Callable[..., Live], tokens: dict[str, str], hook: Hook, db: psycopg.Connection[Any]) -> None:
    web = serve(leader=True, alert_interval=0.1, sample_interval=0.1, relay=FAST_RELAY)
    hook.failures = 1  # the first post is answered 500: the relay tries again
    with httpx.Client(base_url=web.url + "/api/v1", headers={"Authorization": f"Bearer {tokens['admin']}"}) as http:
        http.post("/alerts/rules", json={"name": "mail-dlq", "kind": "dead_letters_above", "queue": "mail",
                                         "threshold": 1, "webhook_url": hook.url})
        bury(db, 1, "mail")
        bury(db, 2, "other")  # another queue: does not count
        bury(db, 3, "mail")
        wait_for(lambda: hook.received, timeout=10, message="the webhook to fire")
        fired = hook.received[0]
        assert (fired["alert"], fired["status"], fired["value"], fired["queue"]) == ("mail-dlq", "firing", 2.0, "mail")
        assert fired["event"] == "alert.firing" and "FIRING" in fired["message"]
        [(failed, _), (delivered, body)] = hook.posts
        assert body == fired and failed["webhook-id"] == delivered["webhook-id"]  # one message, tried twice
        assert (failed["pgqueue-attempt"], delivered["pgqueue-attempt"]) == ("1", "2")
        assert delivered["pgqueue-topic"] == "pgqueue.alert.firing"
        http.post("/dead-letters/delete", json={"queue": "mail"})
        wait_for(lambda: len(hook.received) == 2, timeout=10, message="the webhook to resolve")
        assert hook.received[1]["status"] == "resolved"
        # The resolution is behind the firing in the rule's key, so any second post of the firing would have
        # come before it: the firing was posted successfully exactly once.
        assert [b["status"] for _, b in hook.posts] == ["firing", "firing", "resolved"]
        wait_for(lambda: all(e["delivery"] == "delivered" for e in http.get("/alerts/events").json()),
                 timeout=10, message="the relay to mark the resolution delivered")  # just after the post
        history = http.get("/alerts/events").json()
        assert [(e["status"], e["delivery"], e["attempts"]) for e in history] == [
            ("resolved", "delivered", 1), ("firing", "delivered", 2)]
        assert all(e["outbox_id"] and e["delivered_at"] for e in history)
        assert web.services.extra["leader"].samples >= 1
    topics = db.execute("SELECT topic, key, state FROM pgqueue.outbox ORDER BY id").fetchall()
    rule_id = history[0]["rule_id"]
    assert topics == [("pgqueue.alert.firing", f"pgqueue.alert:{rule_id}", "delivered"),
                      ("pgqueue.alert.resolved", f"pgqueue.alert:{rule_id}", "delivered")]


def test_every_kind_of_rule_measures_what_it_says(dsn: str, app: App, hook: Hook,
                                                  db: psycopg.Connection[Any]) -> None:
    clean_web_tables(dsn)
    for name, kind, queue, threshold in [("fail", "failure_rate_above", "q", 40.0),
                                         ("old", "oldest_queued_above", None, 60.0),
                                         ("alone", "no_live_worker", "q", 60.0),
                                         ("other-q", "no_live_worker", "elsewhere", 60.0)]:
        db.execute("""INSERT INTO pgqueue.alert_rules (name, kind, queue, threshold, webhook_url)
                      VALUES (%s, %s, %s, %s, %s)""", (name, kind, queue, threshold, hook.url))
    # 1 success and 1 failed attempt in the window: 50% > 40%. A job queued 2 minutes ago. One live worker on q.
    db.execute("""INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt,
                  max_attempts, scheduled_for, created_at) VALUES (9, 'q', 't', '[]', '{}', 0, 'succeeded', 1, 1,
                  now(), now())""")
    db.execute("""INSERT INTO pgqueue.job_errors (job_id, attempt, task, queue, kind, error_type, message)
                  VALUES (9, 1, 't', 'q', 'error', 'E', 'x')""")
    db.execute("INSERT INTO pgqueue.jobs (queue, task, scheduled_for) VALUES ('q', 't', now() - interval '2 min')")
    db.execute("INSERT INTO pgqueue.workers (id, host, pid, queues, concurrency) VALUES "
               "(gen_random_uuid(), 'h', 1, ARRAY['q'], 1)")

    async def evaluate() -> dict[str, tuple[bool, float]]:
        database = Database(dsn)
        await database.open()
        try:
            assert await alerts.evaluate(database, app) == 3
            assert await alerts.evaluate(database, app) == 0  # no change, no new event
            return {r[1]: (r[8], r[9]) for r in await database.fetch("alert_rule_list")}
        finally:
            await database.close()

    state = asyncio.run(evaluate())
    assert state["fail"] == (True, 50.0)
    assert state["old"][0] and state["old"][1] >= 120
    assert state["alone"] == (False, 1.0)
    assert state["other-q"] == (True, 0.0)
    # One outbox message per change, written with it, to the rule's webhook.
    messages = db.execute("SELECT e.rule_name, o.topic, o.url FROM pgqueue.alert_events e "
                          "JOIN pgqueue.outbox o ON o.id = e.outbox_id ORDER BY e.rule_name").fetchall()
    assert messages == [(name, "pgqueue.alert.firing", hook.url) for name in ("fail", "old", "other-q")]


def test_the_relay_retries_a_webhook_then_gives_up_and_the_history_says_so(
        dsn: str, app: App, hook: Hook, db: psycopg.Connection[Any]) -> None:
    clean_web_tables(dsn)
    db.execute("""INSERT INTO pgqueue.alert_rules (name, kind, threshold, webhook_url)
                  VALUES ('r1', 'no_live_worker', 60, %s), ('r2', 'no_live_worker', 60, 'http://127.0.0.1:9/')""",
               (hook.url,))
    hook.failures = 1

    def history() -> list[tuple[Any, ...]]:
        rows = alert_history(dsn)
        return [(e.rule_name, e.delivery, e.attempts, e.last_error) for e in sorted(rows, key=lambda e: e.rule_name)]

    async def run() -> None:
        database = Database(dsn)
        await database.open()
        relay = Relay(app, FAST_RELAY)
        stopping = asyncio.Event()
        relaying = asyncio.create_task(relay.run(stopping))
        try:
            assert await alerts.evaluate(database, app) == 2
            for _ in range(500):  # until both deliveries have an outcome (the relay backs off 0.05-0.2 s)
                if all(delivery != "pending" for _, delivery, _, _ in await asyncio.to_thread(history)):
                    break
                await asyncio.sleep(0.02)
        finally:
            stopping.set()
            await relaying
            await database.close()

    asyncio.run(run())
    (r1, r2) = history()
    assert r1[:3] == ("r1", "delivered", 2) and r1[3] is None
    assert r2[:3] == ("r2", "failed", 2) and "refused" in (r2[3] or "").lower()
    assert len(hook.posts) == 2 and len(hook.received) == 1  # a 500, then the delivery


def test_a_rule_whose_url_the_outbox_refuses_is_recorded_as_failed(dsn: str, app: App,
                                                                   db: psycopg.Connection[Any]) -> None:
    clean_web_tables(dsn)  # written with SQL: the API refuses such a URL (422), the table's CHECK does not
    db.execute("""INSERT INTO pgqueue.alert_rules (name, kind, threshold, webhook_url)
                  VALUES ('no-host', 'no_live_worker', 60, 'http:///path'), ('fine', 'no_live_worker', 60,
                          'http://127.0.0.1:9/')""")

    async def run() -> int:
        database = Database(dsn)
        await database.open()
        try:
            return await alerts.evaluate(database, app)
        finally:
            await database.close()

    assert asyncio.run(run()) == 2  # the other rule is not held up
    events = {e.rule_name: (e.delivery, e.outbox_id is None, e.last_error) for e in alert_history(dsn)}
    assert events["fine"] == ("pending", False, None)
    assert events["no-host"][:2] == ("failed", True) and "url" in (events["no-host"][2] or "")


def test_events_waiting_before_the_upgrade_go_through_the_outbox(dsn: str, app: App,
                                                                 db: psycopg.Connection[Any]) -> None:
    clean_web_tables(dsn)
    db.execute("""INSERT INTO pgqueue.alert_events (rule_name, kind, status, value, threshold, message, webhook_url,
                                                    delivery, attempts, delivered_at)
                  VALUES ('old', 'no_live_worker', 'firing', 0, 60, 'was waiting', 'http://127.0.0.1:9/', 'pending',
                          3, NULL),
                         ('older', 'no_live_worker', 'firing', 0, 60, 'was sent', 'http://127.0.0.1:9/',
                          'delivered', 1, now())""")
    db.execute(MIGRATION.read_text())  # what `pgqueue migrate` ran on a database with these rows (it can run again)
    message = db.execute("SELECT topic, url, payload::text FROM pgqueue.outbox").fetchall()
    assert len(message) == 1 and message[0][:2] == ("pgqueue.alert.firing", "http://127.0.0.1:9/")
    assert json.loads(message[0][2])["message"] == "was waiting"
    events = {e.rule_name: (e.delivery, e.attempts, e.outbox_id is not None) for e in alert_history(dsn)}
    assert events == {"old": ("pending", 0, True), "older": ("delivered", 1, False)}


def test_leadership_passes_when_the_leader_goes(dsn: str, app: App) -> None:
    clean_web_tables(dsn)

    async def run() -> None:
        database = Database(dsn)
        await database.open()
        settings = Settings(dsn=dsn)
        first, second = Leader(settings, database, app, retry=0.1), Leader(settings, database, app, retry=0.1)
        one = asyncio.create_task(first.run())
        await asyncio.wait_for(first.leading.wait(), 10)
        two = asyncio.create_task(second.run())
        await asyncio.sleep(0.5)
        assert not second.leading.is_set()
        one.cancel()
        await asyncio.gather(one, return_exceptions=True)  # its connection closes: the lock is released
        await asyncio.wait_for(second.leading.wait(), 10)
        two.cancel()
        await asyncio.gather(two, return_exceptions=True)
        await database.close()

    asyncio.run(run())
