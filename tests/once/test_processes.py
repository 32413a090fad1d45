"""Real processes, real SIGKILLs: the effectively-once promises hold when workers and relays die at the worst
moments."""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psycopg

from pgqueue import App, JobState, verify_webhook
from tests.once.apps import SECRET, pay, write
from tests.once.conftest import Arrival, Processes, Receiver

JOBS = 3000
WORKER_ARGS = ("--concurrency", "8", "--lease", "1", "--heartbeat", "0.25", "--poll-interval", "0.5")


def finished(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT count(*) FROM pgqueue.finished_jobs").fetchone()
    return int(row[0]) if row else 0


def keep_alive(processes: Processes, command: str, count: int, *args: str) -> None:
    """Replace dead processes so that ``count`` run."""
    for _ in range(count - len(processes.alive())):
        processes.start(command, *args)


def test_sigkill_between_write_and_commit_never_duplicates_nor_loses_a_write(
        app: App, processes: Processes, db: psycopg.Connection[Any]) -> None:
    """Handlers kill their own worker after writing, before the commit (about 1 attempt in 200); the test also
    kills workers at 10 random moments (mid-handler, mid-commit). The handler's rows equal the jobs, exactly."""
    write.app._dsn = app.dsn
    jobs = write.enqueue_many([[i] for i in range(JOBS)])
    processes.extra_env["PGQUEUE_TEST_KILL_RATE"] = str(1 / 200)
    external_kills = 0
    next_kill = time.monotonic() + 1.0
    deadline = time.monotonic() + 150
    while finished(db) < JOBS:
        assert time.monotonic() < deadline, f"only {finished(db)} of {JOBS} finished\n{processes.output()[-3000:]}"
        keep_alive(processes, "work", 3, *WORKER_ARGS)
        if time.monotonic() >= next_kill and processes.alive() and external_kills < 10:
            random.choice(processes.alive()).send_signal(signal.SIGKILL)
            external_kills += 1
            next_kill = time.monotonic() + random.uniform(0.5, 1.5)
        time.sleep(0.05)
    processes.stop_all()

    self_kills = [tuple(map(int, line.split()[1:])) for line in processes.log_lines() if line.startswith("killed")]
    rows = db.execute("SELECT job_id, n, attempt FROM public.once_effects").fetchall()
    assert len(rows) == JOBS and len({r[0] for r in rows}) == JOBS  # one row per job: none lost, none twice
    assert {(r[0], r[1]) for r in rows} == {(j.id, i) for i, j in enumerate(jobs)}
    committed = {(r[0], r[2]) for r in rows}
    assert not committed & set(self_kills)  # every attempt that died after writing left no row
    row = db.execute("SELECT count(*) FILTER (WHERE state = 'succeeded'), max(attempt) FROM pgqueue.finished_jobs"
                     ).fetchone()
    assert row is not None and row[0] == JOBS
    final = dict(db.execute("SELECT id, attempt FROM pgqueue.finished_jobs").fetchall())
    assert all(final[job_id] == attempt for job_id, attempt in committed)  # the row is the last attempt's
    lost = db.execute("SELECT count(*) FROM pgqueue.job_errors WHERE kind = 'lease_expired'").fetchone()
    assert lost is not None and lost[0] >= len(self_kills)
    assert len(self_kills) >= 5 and external_kills >= 3, (len(self_kills), external_kills)  # it was tested


def test_relay_killed_mid_delivery_delivers_everything_in_key_order(
        app: App, dsn: str, receiver: Receiver, tmp_path: Path, db: psycopg.Connection[Any]) -> None:
    """The receiver holds some requests open (having recorded them) until the test SIGKILLs the relay, which
    therefore dies after the receiver got the message and before it was marked delivered."""
    held = threading.Event()
    relay_killed = threading.Event()
    holds_left = [4]
    lock = threading.Lock()

    def answer(arrival: Arrival) -> int:
        with lock:
            hold = arrival.payload["seq"] % 23 == 11 and holds_left[0] > 0 and not held.is_set()
            if hold:
                holds_left[0] -= 1
                relay_killed.clear()
                held.set()
        if hold:
            relay_killed.wait(10)
            return 200
        return 500 if random.random() < 0.05 else 200

    receiver.status = answer
    keys = [f"k{i}" for i in range(6)]
    per_key = 60
    processes = Processes(dsn, tmp_path, {"PGQUEUE_TEST_RECEIVER": f"{receiver.url}/hook"})
    relay_args = ("--lease", "1.5", "--poll-interval", "0.2", "--retry-base", "0.05", "--retry-cap", "0.2", "-c", "4")
    try:
        for seq in range(per_key // 2):
            for key in keys:
                app.publish("kill.test", {"key": key, "seq": seq}, key=key)
        keep_alive(processes, "relay", 2, *relay_args)
        for seq in range(per_key // 2, per_key):  # published while relays run: they are woken by NOTIFY
            for key in keys:
                app.publish("kill.test", {"key": key, "seq": seq}, key=key)
        kills = 0
        deadline = time.monotonic() + 90
        while True:
            row = db.execute("SELECT count(*) FILTER (WHERE state = 'delivered'), count(*) FROM pgqueue.outbox"
                             ).fetchone()
            assert row is not None
            if row[0] == row[1] == len(keys) * per_key and not held.is_set():
                break
            assert time.monotonic() < deadline, f"{row}\n{processes.output()[-3000:]}"
            if held.wait(0.1):
                # A request is open at the receiver: kill every relay, so the one delivering it dies with it.
                for proc in processes.alive():
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                kills += 1
                relay_killed.set()
                held.clear()
            keep_alive(processes, "relay", 2, *relay_args)
    finally:
        relay_killed.set()
        processes.stop_all()

    arrivals = receiver.received()
    assert kills >= 3, kills
    by_delivery: dict[str, set[tuple[str, int]]] = defaultdict(set)
    first_seen: dict[str, list[int]] = defaultdict(list)
    seen: set[tuple[str, int]] = set()
    for arrival in arrivals:
        assert verify_webhook(SECRET, arrival.body, arrival.headers, tolerance=600)
        message = (arrival.payload["key"], arrival.payload["seq"])
        by_delivery[arrival.headers["webhook-id"]].add(message)
        if message not in seen:
            seen.add(message)
            first_seen[message[0]].append(message[1])
    assert seen == {(key, seq) for key in keys for seq in range(per_key)}  # every message arrived
    assert all(len(messages) == 1 for messages in by_delivery.values())  # one delivery id, one message
    assert len(by_delivery) == len(seen)  # and one message, one delivery id: duplicates carry the same id
    assert first_seen == {key: list(range(per_key)) for key in keys}  # per-key order of first arrivals
    duplicates = len(arrivals) - len(seen)
    assert duplicates >= kills  # each held message was received, then delivered again after its relay died


def test_an_interrupted_idempotent_block_runs_again_a_completed_one_never(
        app: App, processes: Processes, db: psycopg.Connection[Any]) -> None:
    """Each job's worker dies once inside the block (before its result is stored) and once just after it."""
    pay.app._dsn = app.dsn
    jobs = [pay.enqueue(order) for order in (101, 102)]
    deadline = time.monotonic() + 60
    while not all(app.job(j.id).state is JobState.SUCCEEDED for j in jobs):
        assert time.monotonic() < deadline, processes.output()[-3000:]
        # One job at a time: a process that dies for one job must not also take down the other one between
        # its block's "done" and the commit that stores the result, which rightly makes that block run again.
        keep_alive(processes, "work", 1, "--concurrency", "1", "--lease", "0.6", "--heartbeat", "0.2")
        time.sleep(0.05)
    lines = processes.log_lines()
    for job, order in zip(jobs, (101, 102), strict=True):
        mine = [line.split() for line in lines if line.split()[1] == str(job.id)]
        events = [words[0] for words in mine]
        assert events.count("crash-inside") == 1 and events.count("crash-after") == 1
        assert events.count("done") == 1  # the block completed exactly once
        done_at = events.index("done")
        assert "start" not in events[done_at:]  # and never ran again after it completed
        assert events.index("crash-inside") < done_at < events.index("crash-after") < events.index("returned")
        done_attempt = int(mine[done_at][2])
        final = app.job(job.id)
        assert final.result == f"receipt-{order}-{done_attempt}"  # the stored result, from the completed run
        assert final.attempt > done_attempt  # it was returned by a later attempt, without running the block
        stored = db.execute("SELECT result::text FROM pgqueue.idempotency_keys WHERE key = %s",
                            (f"pay:{order}",)).fetchone()
        assert stored == (f'"receipt-{order}-{done_attempt}"',)
