"""The REST API on real PostgreSQL: enqueue, read, page, cancel, retry; dead letters; every bad request is a
4xx naming the field, with nothing written; every change of state needs its scope."""

from __future__ import annotations

import csv
import io
import json
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import psycopg
import pytest

from pgqueue import App, Fatal, JobState, testing
from tests.conftest import wait_for
from tests.web.conftest import Live, as_scope


def count_jobs(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT (SELECT count(*) FROM pgqueue.jobs) + (SELECT count(*) FROM pgqueue.finished_jobs)"
                     ).fetchone()
    return int(row[0]) if row else 0


def test_enqueue_returns_id_state_and_queue_position(client: httpx.Client, app: App) -> None:
    first = client.post("/jobs", json={"task": "mail.send", "queue": "mail", "kwargs": {"to": "a@b.c"}})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["state"] == "queued" and body["queue_position"] == 0 and body["queue"] == "mail"
    second = client.post("/jobs", json={"task": "mail.send", "queue": "mail", "args": [1, "x"]}).json()
    urgent = client.post("/jobs", json={"task": "mail.send", "queue": "mail", "priority": 10}).json()
    assert second["queue_position"] == 1
    assert urgent["queue_position"] == 0  # higher priority runs first
    later = client.post("/jobs", json={"task": "mail.send", "queue": "mail", "delay": 60}).json()
    assert later["state"] == "scheduled" and later["queue_position"] is None
    at = client.post("/jobs", json={"task": "mail.send", "run_at": "2999-01-01T00:00:00+00:00"}).json()
    assert at["state"] == "scheduled" and at["queue"] == "default"
    far = client.post("/jobs", json={"task": "mail.send", "run_at": "2999-01-01T00:00:00+23:30"})  # ISO, not PG
    assert far.status_code == 201 and datetime.fromisoformat(far.json()["scheduled_for"]) == datetime(
        2998, 12, 31, 0, 30, tzinfo=timezone.utc)
    job = app.job(second["id"])
    assert (job.task, job.args, job.kwargs, job.queue, job.state) == ("mail.send", [1, "x"], {}, "mail",
                                                                     JobState.QUEUED)


BAD_BODIES: list[tuple[str, Any, int, str]] = [
    ("missing task", {"queue": "q"}, 422, "task"),
    ("task not a string", {"task": 5}, 422, "task"),
    ("bad task name", {"task": "9 lives"}, 422, "task"),
    ("bad queue name", {"task": "t", "queue": "no spaces"}, 422, "queue"),
    ("empty queue", {"task": "t", "queue": ""}, 422, "queue"),
    ("priority too high", {"task": "t", "priority": 40000}, 422, "priority"),
    ("negative priority", {"task": "t", "priority": -1}, 422, "priority"),
    ("priority a word", {"task": "t", "priority": "high"}, 422, "priority"),
    ("max_attempts zero", {"task": "t", "max_attempts": 0}, 422, "max_attempts"),
    ("run_at without timezone", {"task": "t", "run_at": "2030-01-01T00:00:00"}, 422, "run_at"),
    ("run_at not a date", {"task": "t", "run_at": "tomorrow"}, 422, "run_at"),
    ("run_at past year 9999 in UTC", {"task": "t", "run_at": "9999-12-31T23:00:00-05:00"}, 422, "run_at"),
    ("negative delay", {"task": "t", "delay": -5}, 422, "delay"),
    ("run_at and delay", {"task": "t", "delay": 5, "run_at": "2030-01-01T00:00:00Z"}, 422, "body"),
    ("args an object", {"task": "t", "args": {"a": 1}}, 422, "args"),
    ("kwargs a list", {"task": "t", "kwargs": [1]}, 422, "kwargs"),
    ("unknown field", {"task": "t", "colour": "red"}, 422, "colour"),
    ("body a list", [{"task": "t"}], 422, "body"),
    ("empty unique key", {"task": "t", "unique_key": ""}, 422, "unique_key"),
    ("depends_on not ids", {"task": "t", "depends_on": ["a"]}, 422, "depends_on.0"),
    ("depends_on on a missing job", {"task": "t", "depends_on": [987654]}, 404, "depends_on"),
    ("bad on_parent_failure", {"task": "t", "depends_on": [1], "on_parent_failure": "sulk"}, 422,
     "on_parent_failure"),
    ("empty idempotency key", {"task": "t", "idempotency_key": ""}, 422, "idempotency_key"),
    ("idempotency key a number", {"task": "t", "idempotency_key": 7}, 422, "idempotency_key"),
]


def test_unique_keys_dependencies_and_groups(client: httpx.Client, app: App) -> None:
    first = client.post("/jobs", json={"task": "t.report", "unique_key": "daily", "group": "acme"}).json()
    again = client.post("/jobs", json={"task": "t.report", "unique_key": "daily"}).json()
    assert again["id"] == first["id"]  # the key is held: the same job comes back
    child = client.post("/jobs", json={"task": "t.after", "depends_on": [first["id"]]}).json()
    assert child["state"] == "waiting" and child["queue_position"] is None
    detail = client.get(f"/jobs/{first['id']}").json()
    assert (detail["unique_key"], detail["group_key"]) == ("daily", "acme")
    assert [j["state"] for j in client.get("/jobs", params={"state": "waiting"}).json()["items"]] == ["waiting"]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES])
def test_bad_enqueues_say_which_field_and_write_nothing(client: httpx.Client, db: psycopg.Connection[Any],
                                                        case: str, body: Any, status: int, field: str) -> None:
    before = count_jobs(db)
    response = client.post("/jobs", json=body)
    assert response.status_code == status, response.text
    problem = response.json()
    assert problem["error"] and problem["message"]
    if field:
        assert field in [f["field"] for f in problem["fields"]], problem
    assert count_jobs(db) == before


@pytest.mark.parametrize(("raw", "field"), [
    (b'{"task": "t", "args": [NaN]}', "args"),
    (b'{"task": "t", "kwargs": {"x": Infinity}}', "args"),
    (b'{"task": "t", "args": ["\\ud800"]}', "args"),
    (b'{"task": ', "body"),
    (b"", "body"),
])
def test_unstorable_or_broken_json_is_refused(client: httpx.Client, db: psycopg.Connection[Any], raw: bytes,
                                              field: str) -> None:
    before = count_jobs(db)
    response = client.post("/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["fields"][0]["field"].startswith(field)
    assert count_jobs(db) == before


def test_payload_and_body_limits(serve: Callable[..., Live], tokens: dict[str, str],
                                 db: psycopg.Connection[Any]) -> None:
    web = serve(max_payload_bytes=1000)
    with as_scope(web, tokens, "enqueue") as http:
        too_big = http.post("/jobs", json={"task": "t", "args": ["x" * 2000]})
        assert too_big.status_code == 413 and too_big.json()["fields"][0]["field"] == "args"
        huge = http.post("/jobs", content=b"[" + b"1," * 3_000_000 + b"1]",
                         headers={"Content-Type": "application/json"})
        assert huge.status_code == 413 and huge.json()["error"] == "too_large"
    assert count_jobs(db) == 0


def test_enqueue_is_checked_against_the_served_app(serve: Callable[..., Live], tokens: dict[str, str],
                                                   app: App) -> None:
    @app.task(name="shop.charge", queue="billing", priority=3, max_attempts=4)
    def charge(order: int) -> None: ...

    web = serve(app=app)
    with as_scope(web, tokens, "enqueue") as http:
        unknown = http.post("/jobs", json={"task": "shop.refund"})
        assert unknown.status_code == 422 and unknown.json()["fields"][0]["field"] == "task"
        wrong = http.post("/jobs", json={"task": "shop.charge", "kwargs": {"amount": 3}})
        assert wrong.status_code == 422 and wrong.json()["fields"][0]["field"] == "args"
        ok = http.post("/jobs", json={"task": "shop.charge", "kwargs": {"order": 7}})
        assert ok.status_code == 201
    job = app.job(ok.json()["id"])
    assert (job.queue, job.priority, job.max_attempts) == ("billing", 3, 4)  # the task's defaults


def test_read_cancel_and_retry(client: httpx.Client, app: App) -> None:
    @app.task(name="t.fail", max_attempts=1)
    def fail() -> None:
        raise Fatal("the card is invalid")

    dead = fail.enqueue()
    testing.run_jobs(app)
    detail = client.get(f"/jobs/{dead.id}").json()
    assert detail["state"] == "dead" and detail["attempt"] == 1
    (error,) = detail["errors"]
    assert error["error_type"] == "Fatal" and "card is invalid" in error["message"]
    assert "Traceback" in error["traceback"]

    assert client.post(f"/jobs/{dead.id}/retry").json() == {"id": dead.id, "state": "queued",
                                                            "cancel_requested": False}
    assert app.job(dead.id).state is JobState.QUEUED
    again = client.post(f"/jobs/{dead.id}/retry")
    assert again.status_code == 409 and "queued" in again.json()["message"]

    assert client.delete(f"/jobs/{dead.id}").json() == {"id": dead.id, "state": "cancelled",
                                                        "cancel_requested": False}
    assert app.job(dead.id).state is JobState.CANCELLED
    assert client.delete(f"/jobs/{dead.id}").status_code == 409
    assert client.post(f"/jobs/{dead.id}/retry").status_code == 200  # cancelled jobs can be retried

    for path in ("/jobs/999999", "/jobs/999999/retry"):
        response = client.get(path) if path.count("/") == 2 else client.post(path)
        assert response.status_code == 404 and response.json()["error"] == "not_found"
    assert client.delete("/jobs/999999").status_code == 404
    bad = client.get("/jobs/zero")
    assert bad.status_code == 422 and bad.json()["fields"][0] == {"field": "job_id", "location": "path",
                                                                   "message": bad.json()["fields"][0]["message"]}


def test_cursor_pagination_is_stable(client: httpx.Client, app: App) -> None:
    ids = [client.post("/jobs", json={"task": "t.page", "queue": "pages"}).json()["id"] for _ in range(7)]
    client.post("/jobs", json={"task": "t.other", "queue": "elsewhere"})
    seen: list[int] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"queue": "pages", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = client.get("/jobs", params=params).json()
        seen += [item["id"] for item in page["items"]]
        pages += 1
        # An enqueue between pages does not shift what the cursor points at.
        client.post("/jobs", json={"task": "t.page", "queue": "pages-new"})
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True) and pages == 3
    filtered = client.get("/jobs", params={"state": "queued", "task": "t.other"}).json()["items"]
    assert [j["task"] for j in filtered] == ["t.other"]
    for params, field in [({"cursor": "not-ours"}, "cursor"), ({"cursor": 0}, "cursor"), ({"limit": 0}, "limit"),
                          ({"limit": 501}, "limit"),
                          ({"state": "sleeping"}, "state"), ({"queue": "a b"}, "queue")]:
        response = client.get("/jobs", params=params)
        assert response.status_code == 422 and response.json()["fields"][0]["field"] == field, params


def _bury(db: psycopg.Connection[Any], job_id: int, queue: str, task: str, error_type: str, message: str) -> None:
    db.execute("""INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt,
                  max_attempts, scheduled_for, created_at, started_at, finished_at, error_type)
                  VALUES (%s, %s, %s, '[1]', '{"k": "=cmd"}', 0, 'dead', 3, 3, now(), now(), now(),
                          now() - make_interval(secs => %s), %s)""", (job_id, queue, task, job_id, error_type))
    db.execute("""INSERT INTO pgqueue.job_errors (job_id, attempt, task, queue, kind, error_type, message)
                  VALUES (%s, 3, %s, %s, 'error', %s, %s)""", (job_id, task, queue, error_type, message))


def test_dead_letters_list_filter_export_and_bulk(client: httpx.Client, db: psycopg.Connection[Any],
                                                  app: App) -> None:
    for i in range(1, 6):
        _bury(db, 1000 + i, "mail" if i <= 3 else "img", "t.send" if i <= 3 else "t.resize",
              "ValueError" if i % 2 else "KeyError", f"=SUM(A{i})" if i == 1 else f"broke {i}")
    listed = client.get("/dead-letters").json()
    assert [d["id"] for d in listed["items"]] == [1001, 1002, 1003, 1004, 1005]  # most recently dead first
    assert listed["items"][1]["error_message"] == "broke 2" and listed["items"][0]["kwargs"] == {"k": "=cmd"}
    page = client.get("/dead-letters", params={"limit": 2}).json()
    rest = client.get("/dead-letters", params={"limit": 10, "cursor": page["next_cursor"]}).json()
    assert [d["id"] for d in page["items"] + rest["items"]] == [1001, 1002, 1003, 1004, 1005]
    by_type = client.get("/dead-letters", params={"error_type": "KeyError"}).json()["items"]
    assert sorted(d["id"] for d in by_type) == [1002, 1004]

    exported = client.get("/dead-letters.csv", params={"queue": "mail"})
    assert exported.status_code == 200 and exported.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.text)))
    assert [int(r["id"]) for r in rows] == [1001, 1002, 1003]
    assert rows[0]["error_message"] == "'=SUM(A1)"  # a formula is defused for spreadsheets
    assert json.loads(rows[1]["args"]) == [1]

    empty = client.post("/dead-letters/retry", json={})
    assert empty.status_code == 422 and "say which" in empty.json()["message"]
    for body in ({"queue": None}, {"all": False}, {"ids": []}, {"ids": [0]}, {"all": 1}, {"everything": True}):
        assert client.post("/dead-letters/delete", json=body).status_code == 422, body
    assert client.get("/dead-letters", params={"cursor": "yesterday"}).status_code == 422
    far = client.get("/dead-letters", params={"cursor": "9999999999999999_9999999999999999999"})
    assert len(far.json()["items"]) == 5  # a cursor past the end of time pages from the newest
    assert client.post("/dead-letters/retry", json={"ids": [1001, 1002, 4242]}).json() == {"count": 2}
    assert app.job(1001).state is JobState.QUEUED and app.job(1001).max_attempts == 4
    assert client.post("/dead-letters/delete", json={"queue": "img"}).json() == {"count": 2}
    assert client.post("/dead-letters/retry", json={"all": True}).json() == {"count": 1}
    assert client.get("/dead-letters").json()["items"] == []


def test_queues_list_and_health(client: httpx.Client) -> None:
    client.post("/jobs", json={"task": "t.x", "queue": "waiting"})
    (queue,) = client.get("/queues").json()
    assert queue["queue"] == "waiting" and queue["queued"] == 1 and queue["live_workers"] == 0
    assert queue["health"] == "red" and "no live worker" in queue["health_reason"]
    assert client.get("/queues/waiting").json()["queued"] == 1
    assert client.get("/queues/nothing-here").status_code == 404


def test_queue_pause_resume_and_limits(client: httpx.Client, app: App) -> None:
    client.post("/jobs", json={"task": "t.x", "queue": "ctl"})
    paused = client.post("/queues/ctl/pause").json()
    assert paused["paused"] is True and paused["health"] == "amber" and "paused" in paused["health_reason"]
    assert [q.paused for q in app.queues() if q.name == "ctl"] == [True]
    assert client.post("/queues/ctl/resume").json()["paused"] is False
    limits = client.put("/queues/ctl/limits", json={"concurrency": 2, "rate": {"limit": 10, "period": 60},
                                                     "fair": True})
    assert limits.json() == {"concurrency": 2, "rate": {"limit": 10, "period": 60.0}, "group_concurrency": None,
                             "group_rate": None, "fair": True, "priority_aging": None}
    assert client.get("/queues/ctl").json()["limits"]["concurrency"] == 2
    assert client.post("/queues/empty-one/pause").json()["queued"] == 0  # a queue with no jobs yet
    for body, field in [({"rate": {"limit": 10}}, "rate.period"), ({"concurrency": -1}, "concurrency"),
                        ({"fair": "yes"}, "fair"), ({"rate": {"limit": 1, "period": 0}}, "rate.period")]:
        response = client.put("/queues/ctl/limits", json=body)
        assert response.status_code == 422 and response.json()["fields"][0]["field"] == field, body


def test_schedules_and_batches(client: httpx.Client, app: App) -> None:
    created = client.post("/schedules", json={"name": "nightly", "cron": "0 3 * * *", "task": "t.report",
                                              "timezone": "Europe/Paris", "kwargs": {"full": True}})
    assert created.status_code == 201, created.text
    assert created.json()["paused"] is False and created.json()["kwargs"] == {"full": True}
    for change, field in [({"cron": "every day"}, "cron"), ({"timezone": "Mars/Olympus"}, "timezone"),
                          ({"missed": "panic"}, "missed")]:
        response = client.post("/schedules", json={"name": "bad", "cron": "* * * * *", "task": "t", **change})
        assert response.status_code == 422 and response.json()["fields"][0]["field"] == field, change
    assert client.post("/schedules/nightly/pause").json()["paused"] is True
    assert client.post("/schedules/nightly/resume").json()["paused"] is False
    assert [s["name"] for s in client.get("/schedules").json()] == ["nightly"]
    assert client.delete("/schedules/nightly").json()["name"] == "nightly"
    assert client.delete("/schedules/nightly").status_code == 404
    assert client.post("/schedules/nightly/pause").status_code == 404

    @app.task(name="t.part")
    def part(n: int) -> None: ...

    batch = app.create_batch("import", [part.call(1), part.call(2)])
    info = client.get(f"/batches/{batch.id}").json()
    assert (info["name"], info["total"], info["done"], info["counts"]) == ("import", 2, False, {"queued": 2})
    assert client.get("/batches/99999").status_code == 404


def test_schedules_show_their_next_tick_and_policy(client: httpx.Client, db: psycopg.Connection[Any]) -> None:
    client.post("/schedules", json={"name": "hourly", "cron": "0 * * * *", "task": "t.sweep", "missed": "skip"})
    now = db.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    [hourly] = client.get("/schedules").json()
    next_tick = datetime.fromisoformat(hourly["next_tick_at"])
    assert now < next_tick <= now + timedelta(hours=1) and (next_tick.minute, next_tick.second) == (0, 0)
    assert (hourly["missed"], hourly["paused"], hourly["source"]) == ("skip", False, "cli")
    assert datetime.fromisoformat(hourly["last_tick_at"]) <= now  # ticks are counted from its creation
    assert client.post("/schedules/hourly/pause").json()["next_tick_at"] is None  # a paused schedule has none


def test_idempotency_keys_make_one_job_whoever_asks(client: httpx.Client, web: Live, app: App,
                                                    db: psycopg.Connection[Any]) -> None:
    body = {"task": "pay.charge", "kwargs": {"order": 1}, "idempotency_key": "charge:1"}
    first = client.post("/jobs", json=body)
    assert first.status_code == 201 and first.json()["created"] is True, first.text
    again = client.post("/jobs", json={**body, "kwargs": {"order": 999}})  # the key decides, not the arguments
    assert again.status_code == 200 and again.json()["created"] is False
    assert again.json()["id"] == first.json()["id"] and again.json()["queue_position"] == 0
    assert app.enqueue("pay.charge", kwargs={"order": 1}, idempotency_key="charge:1").id == first.json()["id"]
    made_in_python = app.enqueue("pay.charge", idempotency_key="charge:2")
    over_http = client.post("/jobs", json={"task": "pay.charge", "idempotency_key": "charge:2"})
    assert (over_http.status_code, over_http.json()["id"]) == (200, made_in_python.id)
    assert client.delete(f"/jobs/{first.json()['id']}").status_code == 200
    cancelled = client.post("/jobs", json=body)  # whatever its state, the key's job comes back
    assert (cancelled.status_code, cancelled.json()["id"], cancelled.json()["state"]) == (
        200, first.json()["id"], "cancelled")
    other_task = client.post("/jobs", json={"task": "pay.refund", "idempotency_key": "charge:1"})
    assert other_task.status_code == 409 and other_task.json()["fields"][0]["field"] == "idempotency_key"
    assert "pay.charge" in other_task.json()["message"]
    assert count_jobs(db) == 2
    held = client.post("/jobs", json={"task": "t.report", "unique_key": "u"})
    same = client.post("/jobs", json={"task": "t.report", "unique_key": "u"})
    assert (held.status_code, same.status_code, same.json()["created"]) == (201, 200, False)
    spec = httpx.get(web.url + "/openapi.json").json()
    assert "idempotency_key" in spec["components"]["schemas"]["JobCreate"]["properties"]


def test_concurrent_posts_of_one_key_make_one_job(web: Live, tokens: dict[str, str],
                                                   db: psycopg.Connection[Any]) -> None:
    posts = 24
    start = threading.Barrier(posts)

    def post(n: int) -> httpx.Response:
        with as_scope(web, tokens, "enqueue") as http:
            start.wait()
            return http.post("/jobs", json={"task": "t.once", "args": [n], "idempotency_key": "race"})

    with ThreadPoolExecutor(posts) as pool:
        answers = list(pool.map(post, range(posts)))
    assert sorted(a.status_code for a in answers) == [200] * (posts - 1) + [201], [a.text for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    assert [a.json()["created"] for a in answers].count(True) == 1
    assert count_jobs(db) == 1


def test_batches_over_http(client: httpx.Client, app: App, db: psycopg.Connection[Any]) -> None:
    created = client.post("/batches", json={
        "name": "import", "jobs": [{"task": "rows.load", "args": [1]}, {"task": "rows.load", "args": [2],
                                                                          "queue": "bulk", "priority": 5}],
        "on_complete": {"task": "rows.report", "kwargs": {"to": "ops"}}})
    assert created.status_code == 201, created.text
    batch = created.json()
    assert len(batch["job_ids"]) == 2 and batch["callback_job_id"] is not None
    info = client.get(f"/batches/{batch['id']}").json()
    assert (info["name"], info["total"], info["counts"], info["callback_job_id"]) == (
        "import", 2, {"queued": 2}, batch["callback_job_id"])
    second = app.job(batch["job_ids"][1])
    assert (second.queue, second.priority, second.args, second.batch_id) == ("bulk", 5, [2], batch["id"])
    # Mixed tasks and a delay: job_ids follow the request's order; the delay counts on the database clock.
    mixed = client.post("/batches", json={"name": "mixed", "jobs": [
        {"task": "a.one", "args": [0]}, {"task": "b.two", "args": [1], "delay": 3600}, {"task": "a.one", "args": [2]}]})
    assert mixed.status_code == 201, mixed.text
    jobs = [app.job(i) for i in mixed.json()["job_ids"]]
    assert [(j.task, j.args) for j in jobs] == [("a.one", [0]), ("b.two", [1]), ("a.one", [2])]
    assert [j.state for j in jobs] == [JobState.QUEUED, JobState.SCHEDULED, JobState.QUEUED]
    waited = (jobs[1].scheduled_for - jobs[1].created_at).total_seconds()
    assert 3599 <= waited <= 3601, waited
    callback = app.job(batch["callback_job_id"])
    assert (callback.state, callback.kwargs) == (JobState.WAITING, {"to": "ops", "batch_id": batch["id"]})
    # The largest batch allowed, of one task, goes in as one bulk insert (a stand-in task per job made it
    # 10,000 inserts, past the client's timeout).
    big = client.post("/batches", json={"name": "big", "jobs": [{"task": "rows.load", "args": [n]}
                                                                 for n in range(10_000)]})
    assert big.status_code == 201, big.text
    assert len(set(big.json()["job_ids"])) == 10_000
    assert app.job(big.json()["job_ids"][-1]).args == [9_999]
    before = count_jobs(db)
    good = {"name": "b", "jobs": [{"task": "t"}]}
    for change, field in [({"jobs": []}, "jobs"), ({"name": ""}, "name"), ({"jobs": [{"task": "9 lives"}]},
                          "jobs.0.task"), ({"jobs": [{"task": "t", "delay": -5}]}, "jobs.0.delay"),
                          ({"jobs": [{"task": "t", "delay": 5, "run_at": "2030-01-01T00:00:00Z"}]}, "jobs.0"),
                          ({"jobs": [{"task": "t", "priority": -1}]}, "jobs.0.priority"),
                          ({"on_complete": {"task": "t", "args": {}}}, "on_complete.args"), ({"size": 3}, "size")]:
        response = client.post("/batches", json={**good, **change})
        assert response.status_code == 422 and response.json()["fields"][0]["field"] == field, (change, response.text)
    assert count_jobs(db) == before


def test_batches_are_checked_against_the_served_app_and_run(serve: Callable[..., Live], tokens: dict[str, str],
                                                            app: App) -> None:
    done: list[int] = []

    @app.task(name="rows.load", queue="rows")
    def load(row: int) -> int:
        return row * 10

    @app.task(name="rows.report", queue="rows")
    def report(batch_id: int) -> None:
        done.append(batch_id)

    @app.task(name="rows.bare", queue="rows")
    def bare() -> None: ...

    web = serve(app=app)
    with as_scope(web, tokens, "enqueue") as http:
        for body, field in [({"jobs": [{"task": "rows.load", "args": [1]}, {"task": "rows.gone"}]}, "jobs.1.task"),
                            ({"jobs": [{"task": "rows.load", "kwargs": {"page": 1}}]}, "jobs.0.args"),
                            ({"jobs": [{"task": "rows.load", "args": [1]}], "on_complete": {"task": "rows.bare"}},
                             "on_complete.args")]:  # the callback is given batch_id=
            response = http.post("/batches", json={"name": "rows", **body})
            assert response.status_code == 422 and response.json()["fields"][0]["field"] == field, body
        created = http.post("/batches", json={"name": "rows", "jobs": [{"task": "rows.load", "args": [n]}
                                                                        for n in range(5)],
                                              "on_complete": {"task": "rows.report"}}).json()
        with testing.running_worker(app, queues=["rows"], concurrency=4):
            wait_for(lambda: done == [created["id"]], message="the batch's callback")
    with as_scope(web, tokens, "read") as http:
        info = http.get(f"/batches/{created['id']}").json()
        assert (info["done"], info["progress"], info["counts"]) == (True, 1.0, {"succeeded": 5})
    assert app.job(created["job_ids"][0]).state is JobState.SUCCEEDED
