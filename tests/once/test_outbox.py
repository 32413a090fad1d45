"""The outbox in-process: publishing in transactions, the relay, sinks, retries, dead messages, completion webhooks."""

from __future__ import annotations

import asyncio
import json
import select
import threading
import time
from collections import defaultdict
from typing import Any

import psycopg
import pytest

from pgqueue import (
    App,
    Context,
    HttpSink,
    Message,
    MessageNotFound,
    NotifySink,
    RelayConfig,
    ValidationError,
    verify_webhook,
)
from pgqueue.testing import running_worker
from tests.acceptance.conftest import run_cli
from tests.conftest import wait_for
from tests.once.conftest import Arrival, Receiver

SECRET = "s3cret"
RELAY = RelayConfig(lease=5, poll_interval=0.2, retry_base=0.05, retry_cap=0.2, max_attempts=3)
FAST: dict[str, Any] = {"poll_interval": 0.5, "promote_interval": 0.05, "relay": RELAY}


def states(app: App) -> dict[str, int]:
    counts: dict[str, int] = defaultdict(int)
    for m in app.outbox_messages(limit=10_000):
        counts[m.state] += 1
    return dict(counts)


def test_a_message_exists_iff_its_transaction_commits(app: App, dsn: str) -> None:
    with psycopg.connect(dsn) as conn:
        app.publish("orders.paid", {"order": 1}, conn=conn)
        assert app.outbox_messages() == []
        conn.rollback()
        published = app.publish("orders.paid", {"order": 2}, key="order:2", conn=conn)
        conn.commit()
    (message,) = app.outbox_messages()
    assert (message.id, message.delivery_id, message.payload, message.key, message.state) == \
        (published.id, published.delivery_id, {"order": 2}, "order:2", "pending")
    assert app.outbox_message(message.id) == message
    with pytest.raises(MessageNotFound):
        app.outbox_message(message.id + 1000)


@pytest.mark.parametrize("bad", [{"topic": "a b"}, {"topic": ""}, {"key": ""}, {"url": "ftp://x"},
                                 {"url": "http://a b"}, {"payload": float("nan")}, {"payload": object()}])
def test_bad_messages_are_refused_whole(app: App, bad: dict[str, Any]) -> None:
    kwargs: dict[str, Any] = {"topic": "t", "payload": {}, **bad}
    with pytest.raises(ValidationError):
        app.publish(kwargs.pop("topic"), kwargs.pop("payload"), **kwargs)
    assert app.outbox_messages() == []


def test_webhooks_are_signed_deduplicable_and_byte_exact(app: App, receiver: Receiver) -> None:
    app.sink("orders.*", HttpSink(f"{receiver.url}/hooks", secret=SECRET))
    payload = {"z": 1, "a": "日本\u2028", "n": [1.5, None]}
    published = app.publish("orders.paid", payload, key="order:7")
    with running_worker(app, **FAST):
        wait_for(lambda: app.outbox_message(published.id).state == "delivered")
    (arrival,) = receiver.received()
    assert arrival.path == "/hooks" and arrival.payload == payload
    assert arrival.body == json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    assert arrival.headers["webhook-id"] == str(published.delivery_id)
    assert arrival.headers["pgqueue-topic"] == "orders.paid" and arrival.headers["pgqueue-key"] == "order:7"
    assert verify_webhook(SECRET, arrival.body, arrival.headers)
    assert not verify_webhook("wrong", arrival.body, arrival.headers)
    assert not verify_webhook(SECRET, arrival.body + b" ", arrival.headers)
    assert not verify_webhook(SECRET, arrival.body, arrival.headers, now=time.time() + 3600)


def test_failures_are_retried_with_the_same_delivery_id_then_delivered(app: App, receiver: Receiver) -> None:
    receiver.status = lambda arrival: 500 if len(receiver.arrivals) <= 2 else 200
    app.sink("*", HttpSink(receiver.url, secret=SECRET))
    published = app.publish("flaky", {"x": 1})
    with running_worker(app, **FAST):
        wait_for(lambda: app.outbox_message(published.id).state == "delivered", timeout=10)
    arrivals = receiver.received()
    assert [a.headers["pgqueue-attempt"] for a in arrivals] == ["1", "2", "3"]
    assert {a.headers["webhook-id"] for a in arrivals} == {str(published.delivery_id)}
    assert app.outbox_message(published.id).last_error is None


def test_per_key_order_one_at_a_time_and_keys_in_parallel(app: App, receiver: Receiver) -> None:
    in_flight: dict[str, int] = defaultdict(int)
    overlaps: list[str] = []
    lock = threading.Lock()

    def slow_ok(arrival: Arrival) -> int:
        key = arrival.headers["pgqueue-key"]
        with lock:
            in_flight[key] += 1
            if in_flight[key] > 1:
                overlaps.append(key)
        time.sleep(0.005)
        with lock:
            in_flight[key] -= 1
        return 200

    receiver.status = slow_ok
    app.sink("seq", HttpSink(receiver.url))
    for i in range(40):
        for key in "abcde":
            app.publish("seq", {"key": key, "i": i}, key=key)
    with running_worker(app, **FAST):
        wait_for(lambda: states(app) == {"delivered": 200}, timeout=30)
    per_key: dict[str, list[int]] = defaultdict(list)
    for arrival in receiver.received():
        per_key[arrival.payload["key"]].append(arrival.payload["i"])
    assert per_key == {key: list(range(40)) for key in "abcde"}
    assert overlaps == []


def test_dead_messages_stop_blocking_their_key_are_listed_and_replayed(app: App, receiver: Receiver) -> None:
    broken = threading.Event()
    broken.set()
    receiver.status = lambda arrival: 503 if broken.is_set() and arrival.payload.get("poison") else 200
    app.sink("*", HttpSink(receiver.url))
    poison = app.publish("k", {"poison": True}, key="k")
    after = app.publish("k", {"poison": False}, key="k")
    with running_worker(app, **FAST):
        wait_for(lambda: app.outbox_message(after.id).state == "delivered", timeout=10)
        dead = app.outbox_messages(state="dead")
        assert [m.id for m in dead] == [poison.id] and dead[0].attempt == 3
        assert dead[0].last_error is not None and "HTTP 503" in dead[0].last_error
        broken.clear()
        assert app.replay(poison.id) == 1 and app.replay(all=True) == 0
        wait_for(lambda: app.outbox_message(poison.id).state == "delivered", timeout=10)
    ids = [a.headers["webhook-id"] for a in receiver.received() if a.payload["poison"]]
    assert len(ids) == 4 and set(ids) == {str(poison.delivery_id)}


def test_callable_and_notify_sinks(app: App, dsn: str) -> None:
    got: list[Message] = []

    def record(message: Message) -> None:
        got.append(message)

    async def record_async(message: Message) -> None:
        await asyncio.sleep(0)
        got.append(message)

    def refuse(message: Message) -> None:
        raise RuntimeError("sink says no")

    app.sink("audit.sync", record)
    app.sink("audit.async", record_async)
    app.sink("refused", refuse)
    app.sink("cache.*", NotifySink("test_cache_events"))
    with psycopg.connect(dsn, autocommit=True) as listener:
        listener.execute("LISTEN test_cache_events")
        a = app.publish("audit.sync", [1])
        b = app.publish("audit.async", [2])
        c = app.publish("cache.evict", {"page": "/x"}, key="cache")
        d = app.publish("refused", {})
        e = app.publish("nobody.listens", {})
        with running_worker(app, **FAST):
            wait_for(lambda: app.outbox_message(d.id).state == "dead" and app.outbox_message(e.id).state == "dead"
                     and app.outbox_message(c.id).state == "delivered", timeout=10)
        select.select([listener.fileno()], [], [], 2)
        notes = list(listener.notifies(timeout=0.5))
    assert sorted((m.id, m.payload) for m in got) == [(a.id, [1]), (b.id, [2])]
    (note,) = notes
    assert json.loads(note.payload) == {"id": c.id, "delivery_id": str(c.delivery_id), "topic": "cache.evict",
                                        "key": "cache", "payload": {"page": "/x"}}
    assert "RuntimeError: sink says no" in (app.outbox_message(d.id).last_error or "")
    assert "no sink takes topic 'nobody.listens'" in (app.outbox_message(e.id).last_error or "")


def test_completion_webhooks_for_succeeded_dead_and_cancelled(app: App, receiver: Receiver) -> None:
    app.webhooks = HttpSink(secret=SECRET)

    @app.task()
    def ok(n: int) -> dict[str, int]:
        return {"n": n}

    @app.task(max_attempts=1)
    def broken() -> None:
        raise ValueError("bad input")

    url = f"{receiver.url}/done"
    a = ok.using(callback_url=url).enqueue(3)
    b = broken.using(callback_url=url).enqueue()
    c = ok.using(callback_url=url, delay=60).enqueue(4)
    plain = ok.enqueue(5)  # no callback: no message
    assert app.cancel(c.id)
    with running_worker(app, **FAST):
        wait_for(lambda: len(receiver.received()) == 3, timeout=10)
        wait_for(lambda: states(app) == {"delivered": 3})
    reports = {arrival.payload["job_id"]: arrival for arrival in receiver.received()}
    assert set(reports) == {a.id, b.id, c.id} and plain.id not in reports
    assert all(verify_webhook(SECRET, r.body, r.headers) and r.path == "/done" for r in reports.values())
    done, dead, cancelled = (reports[j.id].payload for j in (a, b, c))
    assert (done["event"], done["state"], done["result"], done["error"], done["task"]) == \
        ("job.succeeded", "succeeded", {"n": 3}, None, ok.name)
    assert (dead["event"], dead["error"], dead["attempt"]) == \
        ("job.dead", {"type": "ValueError", "message": "bad input"}, 1)
    assert (cancelled["event"], cancelled["result"]) == ("job.cancelled", None)
    assert reports[a.id].headers["pgqueue-key"] == f"pgqueue.job:{a.id}"


def test_a_retried_dead_job_reports_again_and_pruning_forgets_callbacks(app: App, receiver: Receiver,
                                                                       db: psycopg.Connection[Any]) -> None:
    healed = threading.Event()

    @app.task(max_attempts=1)
    def fragile() -> str:
        if not healed.is_set():
            raise RuntimeError("not yet")
        return "fine"

    job = fragile.using(callback_url=receiver.url).enqueue()
    with running_worker(app, **FAST):
        wait_for(lambda: len(receiver.received()) == 1, timeout=10)
        healed.set()
        assert app.retry(job.id) == 1
        wait_for(lambda: len(receiver.received()) == 2, timeout=10)
    assert [a.payload["state"] for a in receiver.received()] == ["dead", "succeeded"]
    assert db.execute("SELECT count(*) FROM pgqueue.job_callbacks").fetchone() == (1,)
    db.execute("DELETE FROM pgqueue.finished_jobs WHERE id = %s", (job.id,))
    assert db.execute("SELECT count(*) FROM pgqueue.job_callbacks").fetchone() == (0,)


def test_only_one_relay_leads(app: App, receiver: Receiver) -> None:
    app.sink("*", HttpSink(receiver.url))
    with running_worker(app, **FAST) as first, running_worker(app, **FAST) as second:
        assert first.relay is not None and second.relay is not None
        wait_for(lambda: first.relay is not None and second.relay is not None
                 and (first.relay.leading.is_set() or second.relay.leading.is_set()))
        for i in range(20):
            app.publish("t", {"i": i})
        wait_for(lambda: states(app) == {"delivered": 20}, timeout=10)
        assert first.relay.leading.is_set() != second.relay.leading.is_set()
        leader, standby = (first, second) if first.relay.leading.is_set() else (second, first)
        assert leader.relay is not None and standby.relay is not None
        assert leader.relay.stats.delivered == 20 and standby.relay.stats.claimed == 0
    assert len(receiver.received()) == 20


def test_outbox_cli(app: App, dsn: str, receiver: Receiver) -> None:
    receiver.status = lambda arrival: 500
    app.sink("*", HttpSink(receiver.url))
    published = app.publish("cli.topic", {"v": 1}, key="k1")
    with running_worker(app, **FAST):
        wait_for(lambda: app.outbox_message(published.id).state == "dead", timeout=10)
    listed = run_cli(dsn, "outbox", "list", "--state", "dead")
    assert listed.returncode == 0 and "cli.topic" in listed.stdout and "HTTP 500" in listed.stdout
    shown = run_cli(dsn, "outbox", "show", str(published.id))
    assert shown.returncode == 0 and str(published.delivery_id) in shown.stdout and '{"v": 1}' in shown.stdout
    replayed = run_cli(dsn, "outbox", "replay", "--topic", "cli.topic")
    assert replayed.returncode == 0 and "replaying 1 dead messages" in replayed.stdout
    assert app.outbox_message(published.id).state == "pending"
    for args, code, text in [(("outbox", "list", "--state", "lost"), 2, "invalid outbox state 'lost'"),
                             (("outbox", "show", "999999"), 1, "no outbox message with id 999999"),
                             (("outbox", "replay"), 2, "say which dead messages to replay")]:
        result = run_cli(dsn, *args)
        assert result.returncode == code and result.stderr.startswith(f"error: {text}"), result
        assert result.stderr.count("\n") == 1  # one line, no traceback


def test_publish_in_a_transactional_handler_is_delivered_once_it_commits(app: App, receiver: Receiver) -> None:
    app.sink("shipped", HttpSink(receiver.url))

    @app.task(transactional=True)
    async def ship(ctx: Context, order: int) -> None:
        await ctx.publish_async("shipped", {"order": order}, key=f"order:{order}")

    job = ship.enqueue(9)
    with running_worker(app, **FAST):
        wait_for(lambda: len(receiver.received()) == 1)
    assert receiver.received()[0].payload == {"order": 9} and app.job(job.id).result is None


def test_stopping_lets_an_in_flight_delivery_finish_and_closes_the_relay(dsn: str, receiver: Receiver) -> None:
    """The worker stops while a webhook is on the wire: the relay gets its drain time (the message ends
    delivered, once), and every connection the worker and relay opened is closed when the worker returns."""
    name = f"pgqueue-relay-{time.monotonic_ns() % 10**8}"
    app = App(dsn=psycopg.conninfo.make_conninfo(dsn, application_name=name))
    try:
        def slow(arrival: Arrival) -> int:
            time.sleep(1.0)
            return 200

        receiver.status = slow
        app.sink("orders.*", HttpSink(receiver.url))
        published = app.publish("orders.paid", {"order": 1})
        with running_worker(app, **FAST):
            wait_for(lambda: len(receiver.received()) == 1, timeout=10)
        assert app.outbox_message(published.id).state == "delivered"
        assert len(receiver.received()) == 1
        app.close()
        with psycopg.connect(dsn, autocommit=True) as db:
            row = db.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                             (name,)).fetchone()
        assert row is not None and row[0] == 0
    finally:
        app.close()
