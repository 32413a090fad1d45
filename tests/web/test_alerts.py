"""Alerts: rules in the database, measured by the serve leader, fired to a webhook with retries, and a history;
leadership passes to another serve process when the leader goes."""

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

from pgqueue.web import alerts
from pgqueue.web.access import Settings
from pgqueue.web.database import Database
from pgqueue.web.leader import Leader
from tests.conftest import wait_for
from tests.web.conftest import Live, clean_web_tables


class Hook:
    """A webhook receiver on 127.0.0.1 that answers 500 to its first ``failures`` posts."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.failures = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
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


def test_the_leader_fires_and_resolves_through_the_webhook(serve: Callable[..., Live], tokens: dict[str, str],
                                                           hook: Hook, db: psycopg.Connection[Any]) -> None:
    web = serve(leader=True, alert_interval=0.1, sample_interval=0.1)
    with httpx.Client(base_url=web.url + "/api/v1", headers={"Authorization": f"Bearer {tokens['admin']}"}) as http:
        http.post("/alerts/rules", json={"name": "mail-dlq", "kind": "dead_letters_above", "queue": "mail",
                                         "threshold": 1, "webhook_url": hook.url})
        bury(db, 1, "mail")
        bury(db, 2, "other")  # another queue: does not count
        bury(db, 3, "mail")
        wait_for(lambda: hook.received, timeout=10, message="the webhook to fire")
        fired = hook.received[0]
        assert (fired["alert"], fired["status"], fired["value"], fired["queue"]) == ("mail-dlq", "firing", 2.0, "mail")
        assert "FIRING" in fired["message"]
        http.post("/dead-letters/delete", json={"queue": "mail"})
        wait_for(lambda: len(hook.received) == 2, timeout=10, message="the webhook to resolve")
        assert hook.received[1]["status"] == "resolved"
        history = http.get("/alerts/events").json()
        assert [(e["status"], e["delivery"]) for e in history] == [("resolved", "delivered"), ("firing", "delivered")]
        assert web.services.extra["leader"].samples >= 1


def test_every_kind_of_rule_measures_what_it_says(dsn: str, app: Any, hook: Hook,
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
            assert await alerts.evaluate(database) == 3
            assert await alerts.evaluate(database) == 0  # no change, no new event
            return {r[1]: (r[8], r[9]) for r in await database.fetch("alert_rule_list")}
        finally:
            await database.close()

    state = asyncio.run(evaluate())
    assert state["fail"] == (True, 50.0)
    assert state["old"][0] and state["old"][1] >= 120
    assert state["alone"] == (False, 1.0)
    assert state["other-q"] == (True, 0.0)


def test_webhook_delivery_retries_then_gives_up(dsn: str, app: Any, hook: Hook, db: psycopg.Connection[Any]
                                                ) -> None:
    clean_web_tables(dsn)
    db.execute("""INSERT INTO pgqueue.alert_rules (name, kind, threshold, webhook_url)
                  VALUES ('r1', 'no_live_worker', 60, %s), ('r2', 'no_live_worker', 60, 'http://127.0.0.1:9/')""",
               (hook.url,))
    hook.failures = 1

    async def run() -> None:
        database = Database(dsn)
        await database.open()
        try:
            assert await alerts.evaluate(database) == 2
            assert await alerts.deliver_due(database, timeout=2, max_attempts=2) == 0  # 500, and refused
            rows = db.execute("SELECT rule_name, delivery, attempts, last_error FROM pgqueue.alert_events "
                              "ORDER BY rule_name").fetchall()
            assert [r[:3] for r in rows] == [("r1", "pending", 1), ("r2", "pending", 1)]
            assert "500" in rows[0][3]
            delivered = 0
            for _ in range(100):  # the retry is due after its 1 s backoff
                delivered += await alerts.deliver_due(database, timeout=2, max_attempts=2)
                states = {r[0] for r in db.execute("SELECT delivery FROM pgqueue.alert_events").fetchall()}
                if "pending" not in states:
                    break
                await asyncio.sleep(0.1)
            assert delivered == 1
        finally:
            await database.close()

    asyncio.run(run())
    rows = db.execute("SELECT rule_name, delivery, attempts FROM pgqueue.alert_events ORDER BY rule_name").fetchall()
    assert rows == [("r1", "delivered", 2), ("r2", "failed", 2)]
    assert len(hook.received) == 1 and hook.received[0]["attempt"] == 2


def test_leadership_passes_when_the_leader_goes(dsn: str, app: Any) -> None:
    clean_web_tables(dsn)

    async def run() -> None:
        database = Database(dsn)
        await database.open()
        settings = Settings(dsn=dsn)
        first, second = Leader(settings, database, retry=0.1), Leader(settings, database, retry=0.1)
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
