"""Scenarios where worker processes die, freeze, overrun or are fed poison: 1, 2, 3, 6, 7 and 15."""

from __future__ import annotations

import random
import time
from collections import Counter
from datetime import datetime
from typing import Any

import psycopg

from pgqueue.queries import q
from tests.chaos.apps import HANG_RETRY, HANG_TIMEOUT, POISON_ATTEMPTS, POISON_RETRY
from tests.chaos.fleet import Execution, Fleet, Runlog
from tests.chaos.harness import Run, scenario
from tests.chaos.load import enqueue_many
from tests.chaos.probes import counts, db_now, scalar, wait_until


def lease_args(lease: float, heartbeat: float, poll: float = 1.0, concurrency: int = 10) -> list[str]:
    return ["--lease", str(lease), "--heartbeat", str(heartbeat), "--poll-interval", str(poll),
            "--concurrency", str(concurrency), "--promote-interval", "0.1", "--drain-timeout", "5"]


def worker_ids(db: psycopg.Connection[Any], pids: list[int]) -> dict[int, str]:
    rows = db.execute("SELECT pid, id::text FROM pgqueue.workers WHERE pid = ANY(%s)", (pids,)).fetchall()
    return {int(pid): wid for pid, wid in rows}


def finished_states(db: psycopg.Connection[Any], ids: list[int]) -> Counter[str]:
    rows = db.execute("SELECT state, count(*) FROM pgqueue.finished_jobs WHERE id = ANY(%s) GROUP BY 1",
                      (ids,)).fetchall()
    return Counter({state: int(n) for state, n in rows})


def errors_of(db: psycopg.Connection[Any], ids: list[int]) -> list[tuple[int, int, str, str, str | None, datetime]]:
    """(job, attempt, kind, error_type, worker id, failed_at) of every failed attempt of these jobs."""
    return db.execute("SELECT job_id, attempt, kind, error_type, worker_id::text, failed_at FROM pgqueue.job_errors "
                      "WHERE job_id = ANY(%s) ORDER BY job_id, attempt", (ids,)).fetchall()


def all_finished(db: psycopg.Connection[Any], ids: list[int]) -> bool:
    return sum(finished_states(db, ids).values()) == len(ids)


# -- 1 ------------------------------------------------------------------------------------------------------------

@scenario(1, "worker SIGKILL storm",
          quick={"jobs": 4000, "workers": 4, "period": 1.5, "lease": 2.0, "heartbeat": 0.5, "job_ms": 50},
          full={"jobs": 50_000, "workers": 6, "period": 3.0, "lease": 2.0, "heartbeat": 0.5, "job_ms": 25})
def sigkill_storm(run: Run, jobs: int, workers: int, period: float, lease: float, heartbeat: float,
                  job_ms: float) -> None:
    """Kill half the workers every ``period`` seconds (and start as many again) until every job is done."""
    reclaim_bound = lease + heartbeat + heartbeat  # R = L + H + S; the reaper sweeps every heartbeat
    dsn = run.database()
    fleet = run.fleet(dsn, *lease_args(lease, heartbeat, concurrency=16))
    fleet.start(workers)
    kill_times: dict[str, datetime] = {}
    rounds = 0
    with psycopg.connect(dsn, autocommit=True) as db:
        # Enqueued in slices while the storm goes on, so enqueues also meet dying workers.
        slices = [[{"ms": job_ms, "n": i} for i in range(start, min(jobs, start + 5000))]
                  for start in range(0, jobs, 5000)]
        ids = enqueue_many(db, "chaos.work", slices[0])
        started = time.monotonic()
        next_kill = started + period
        deadline = started + max(120.0, jobs / 100)
        while not all_finished(db, ids) or len(slices) > 1:
            if time.monotonic() > deadline:
                raise AssertionError(f"the storm did not finish in time: {counts(db)}")
            if len(slices) > 1 and counts(db).get("queued", 0) < 2000:
                slices.pop(0)
                ids += enqueue_many(db, "chaos.work", slices[0])
            if time.monotonic() >= next_kill:
                victims = random.sample(fleet.alive, len(fleet.alive) // 2)
                at = db_now(db)
                for proc in victims:
                    fleet.kill(proc)
                for wid in worker_ids(db, [p.pid for p in victims]).values():
                    kill_times[wid] = at
                fleet.start(len(victims))
                rounds += 1
                next_kill = time.monotonic() + period
            time.sleep(0.05)
        elapsed = time.monotonic() - started
        states = finished_states(db, ids)
        left = scalar(db, "SELECT count(*) FROM pgqueue.jobs WHERE id = ANY(%s)", (ids,))
        errors = errors_of(db, ids)
        final_attempt = dict(db.execute("SELECT id, attempt FROM pgqueue.finished_jobs WHERE id = ANY(%s)",
                                        (ids,)).fetchall())
    fleet.stop_all()
    runlog = fleet.runlog()

    run.figure("jobs submitted", len(ids))
    run.figure("kill rounds (half the workers each)", rounds)
    run.figure("workers killed", len(fleet.killed))
    run.figure("run time", round(elapsed, 1), "s")
    run.check("jobs completed", states["succeeded"], "==", len(ids))
    run.check("jobs lost (not completed)", len(ids) - states["succeeded"], "==", 0)
    run.check("jobs still live at the end", left, "==", 0)
    run.check("jobs dead", states["dead"], "==", 0)
    orphaned = [e for e in errors if e[2] == "lease_expired"]
    unexplained = [e for e in errors if e[2] != "lease_expired" or e[4] not in kill_times]
    run.figure("attempts orphaned by a kill (reclaimed)", len(orphaned))
    run.check("failed attempts not explained by a kill", len(unexplained), "==", 0)
    explained = {(e[0], e[1]) for e in orphaned if e[4] in kill_times}
    reruns = mid_handler = after_handler = needless = 0
    for job_id, executions in runlog.executions.items():
        for ex in executions:
            if ex.attempt == final_attempt.get(job_id):
                continue
            reruns += 1
            if (job_id, ex.attempt) not in explained:
                needless += 1
            elif ex.ended:
                after_handler += 1
            else:
                mid_handler += 1
    run.figure("jobs run twice or more", sum(1 for ex in runlog.executions.values() if len(ex) > 1))
    run.figure("re-runs: worker killed mid-handler", mid_handler)
    run.figure("re-runs: worker killed after the handler, before the ack", after_handler)
    run.check("re-runs not caused by a worker's death", needless, "==", 0)
    missing = [j for j in ids if runlog.count(j) == 0]
    run.check("completed jobs with no recorded run", len(missing), "==", 0)
    delays = [(e[5] - kill_times[e[4]]).total_seconds() for e in orphaned if e[4] in kill_times]
    run.check("slowest reclaim after a kill (time to recover)", round(max(delays, default=0.0), 3), "<=",
              reclaim_bound, "s")
    run.figure("median reclaim after a kill", round(sorted(delays)[len(delays) // 2], 3) if delays else 0.0, "s")
    run.figure("throughput through the storm", round(len(ids) / elapsed), "jobs/s")
    run.check("worker processes that crashed by themselves", len(fleet.crashed()), "==", 0)


def holding(db: psycopg.Connection[Any], worker_pid: int) -> int:
    return int(scalar(db, "SELECT count(*) FROM pgqueue.jobs j JOIN pgqueue.workers w ON w.id = j.worker_id "
                          "WHERE j.state = 'running' AND w.pid = %s", (worker_pid,)))


# -- 2 ------------------------------------------------------------------------------------------------------------

@scenario(2, "paused worker loses its lease",
          quick={"jobs": 8, "lease": 1.5, "heartbeat": 0.5},
          full={"jobs": 40, "lease": 2.0, "heartbeat": 0.5})
def paused_worker(run: Run, jobs: int, lease: float, heartbeat: float) -> None:
    """SIGSTOP a worker holding jobs until another has reclaimed and finished them all, then SIGCONT it."""
    dsn = run.database()
    fleet = run.fleet(dsn, *lease_args(lease, heartbeat, concurrency=jobs))
    with psycopg.connect(dsn, autocommit=True) as db:
        (paused,) = fleet.start()
        ids = enqueue_many(db, "chaos.work", [{"ms": lease * 1000, "n": i} for i in range(jobs)])
        wait_until(lambda: holding(db, paused.pid) == jobs, 30, what="the first worker to hold every job")
        paused_id = worker_ids(db, [paused.pid])[paused.pid]
        fleet.pause(paused)
        stopped_at = db_now(db)
        (rescuer,) = fleet.start()
        wait_until(lambda: all_finished(db, ids), 60, what="the second worker to finish the reclaimed jobs")
        paused_for = (db_now(db) - stopped_at).total_seconds()
        query = ("SELECT id, state, attempt, worker_id::text, finished_at, result::text FROM pgqueue.finished_jobs "
                 "WHERE id = ANY(%s) ORDER BY id")
        before = db.execute(query, (ids,)).fetchall()
        fleet.resume(paused)
        # The paused worker's handlers return now; wait until each has ended and two heartbeats have passed.
        wait_until(lambda: sum(ex.ended for ex in _executions_of(fleet.runlog(), paused.pid)) == jobs, 30,
                   what="the paused worker's handlers to return")
        time.sleep(2 * heartbeat)
        after = db.execute(query, (ids,)).fetchall()
        # And the same late completion sent directly: it matches nothing.
        late = db.execute(q("job_complete_many"), {"ids": ids, "attempts": [1] * jobs, "results": ['"late"'] * jobs,
                                                   "worker_id": paused_id}).fetchall()
        errors = errors_of(db, ids)
        alive = paused.poll() is None
    fleet.stop_all()
    runlog = fleet.runlog()
    output = fleet.output()
    rescuer_id = {row[3] for row in before}
    run.figure("jobs held by the paused worker", jobs)
    run.check("paused for (longer than the lease)", round(paused_for, 2), ">", lease, "s")
    run.figure("late completions the paused worker attempted (fenced)", output.count("outcome refused"))
    run.figure("attempts the paused worker abandoned on its next heartbeat", output.count("lease lost (another worker"))
    run.check("rows changed by the paused worker after it resumed", sum(a != b for a, b in zip(before, after,
                                                                                                 strict=True)),
              "==", 0)
    run.check("rows a direct late completion matched", len(late), "==", 0)
    run.check("jobs completed exactly once", sum(1 for r in after if r[1] == "succeeded"), "==", jobs)
    run.check("jobs completed by a worker other than the rescuer", len(rescuer_id - {
        worker_ids_of_pid(fleet, rescuer.pid)}), "==", 0)
    run.check("lease_expired errors (one per job, from the paused worker)",
              sum(1 for e in errors if e[2] == "lease_expired" and e[4] == paused_id), "==", jobs)
    run.check("other failed attempts", sum(1 for e in errors if not (e[2] == "lease_expired" and e[4] == paused_id)),
              "==", 0)
    run.check("handler runs per job (paused one + rescue)", max(runlog.count(j) for j in ids), "==", 2)
    run.check("paused worker still alive after resuming", alive, "==", True)


def worker_ids_of_pid(fleet: Fleet, pid: int) -> str:
    """The worker id a process logged for its executions."""
    return next((ex.worker_id for exs in fleet.runlog().executions.values() for ex in exs if ex.pid == pid), "")


def _executions_of(runlog: Runlog, pid: int) -> list[Execution]:
    return [ex for exs in runlog.executions.values() for ex in exs if ex.pid == pid]


# -- 3 ------------------------------------------------------------------------------------------------------------

@scenario(3, "long jobs keep their lease",
          quick={"lease": 1.0, "heartbeat": 0.33, "multiple": 4, "per_kind": 4, "workers": 2},
          full={"lease": 1.0, "heartbeat": 0.33, "multiple": 10, "per_kind": 10, "workers": 3})
def long_jobs(run: Run, lease: float, heartbeat: float, multiple: int, per_kind: int, workers: int) -> None:
    """Jobs that run ``multiple`` leases (CPU-bound threads, sleeping threads, async) are never reclaimed."""
    seconds = lease * multiple
    dsn = run.database()
    fleet = run.fleet(dsn, *lease_args(lease, heartbeat, concurrency=3 * per_kind))
    fleet.start(workers)
    with psycopg.connect(dsn, autocommit=True) as db:
        ids = enqueue_many(db, "chaos.spin", [{"seconds": seconds}] * per_kind)
        ids += enqueue_many(db, "chaos.work", [{"ms": seconds * 1000}] * per_kind)
        ids += enqueue_many(db, "chaos.work_async", [{"ms": seconds * 1000}] * per_kind)
        headroom = float("inf")
        deadline = time.monotonic() + seconds * 4 + 30
        while not all_finished(db, ids):
            if time.monotonic() > deadline:
                raise AssertionError(f"long jobs did not finish: {counts(db)}")
            least = scalar(db, "SELECT extract(epoch FROM min(lease_expires_at) - now())::float8 FROM pgqueue.jobs "
                               "WHERE state = 'running'")
            if least is not None:
                headroom = min(headroom, least)
            time.sleep(0.05)
        errors = errors_of(db, ids)
        attempts = Counter(a for (a,) in db.execute("SELECT attempt FROM pgqueue.finished_jobs WHERE id = ANY(%s)",
                                                    (ids,)).fetchall())
    fleet.stop_all()
    runlog = fleet.runlog()
    run.figure("jobs (CPU-bound, sleeping, async)", len(ids))
    run.figure("job length", seconds, "s")
    run.figure("lease", lease, "s")
    run.check("jobs reclaimed while their worker lived", sum(1 for e in errors if e[2] == "lease_expired"), "==", 0)
    run.check("failed attempts", len(errors), "==", 0)
    run.check("jobs completed on their first attempt", attempts[1], "==", len(ids))
    run.check("handler runs per job", max(runlog.count(j) for j in ids), "==", 1)
    run.check("least lease left on a running job (sampled)", round(headroom, 3), ">", 0.0, "s")


# -- 6 ------------------------------------------------------------------------------------------------------------

@scenario(6, "handler hangs past its timeout", quick={"jobs": 4}, full={"jobs": 20})
def hung_handler(run: Run, jobs: int) -> None:
    """Sync and async handlers hang for 3 timeouts on their first attempt; the second attempt returns at once."""
    hang = HANG_TIMEOUT * 3
    dsn = run.database()
    fleet = run.fleet(dsn, *lease_args(10.0, 2.0, poll=1.0, concurrency=4 * jobs))
    fleet.start()
    with psycopg.connect(dsn, autocommit=True) as db:
        sync_ids = enqueue_many(db, "chaos.hang", [{"hang_seconds": hang}] * jobs, max_attempts=3)
        async_ids = enqueue_many(db, "chaos.hang_async", [{"hang_seconds": hang}] * jobs, max_attempts=3)
        ids = sync_ids + async_ids
        wait_until(lambda: all_finished(db, ids), 30, what="the hung jobs to be retried and finish")
        # The sync handlers' threads return after `hang` seconds; their late results must change nothing.
        wait_until(lambda: all(any(ex.ended and ex.attempt == 1 for ex in fleet.runlog().executions.get(j, []))
                               for j in sync_ids), hang + 10, what="the hung threads to return")
        time.sleep(0.5)
        rows = db.execute("SELECT id, state, attempt, result::text, scheduled_for, started_at "
                          "FROM pgqueue.finished_jobs WHERE id = ANY(%s)", (ids,)).fetchall()
        errors = errors_of(db, ids)
        starts = dict(db.execute("SELECT job_id, started_at FROM pgqueue.job_errors WHERE job_id = ANY(%s)",
                                 (ids,)).fetchall())
    fleet.stop_all()
    runlog = fleet.runlog()
    failed_at = {e[0]: e[5] for e in errors}
    late_timeout = [(failed_at[r[0]] - starts[r[0]]).total_seconds() - HANG_TIMEOUT for r in rows]
    delays = [(r[4] - failed_at[r[0]]).total_seconds() for r in rows]
    late_retry = [(r[5] - r[4]).total_seconds() for r in rows]
    low = HANG_RETRY[0] * 0.5
    run.figure("hung jobs (sync and async)", len(ids))
    run.figure("timeout", HANG_TIMEOUT, "s")
    run.check("timeouts recorded (one per job, attempt 1)",
              sum(1 for e in errors if e[2] == "timeout" and e[1] == 1), "==", len(ids))
    run.check("other failed attempts", sum(1 for e in errors if not (e[2] == "timeout" and e[1] == 1)), "==", 0)
    run.check("latest failure after the timeout", round(max(late_timeout), 3), "<=", 0.5, "s")
    run.check("earliest failure before the timeout", round(min(late_timeout), 3), ">=", 0.0, "s")
    run.check("retry delays within the backoff (min)", round(min(delays), 3), ">=", round(low, 3), "s")
    run.check("retry delays within the backoff (max)", round(max(delays), 3), "<=", HANG_RETRY[1] + 0.001, "s")
    run.check("latest retry start after its due time", round(max(late_retry), 3), "<=", 0.5, "s")
    run.check("jobs completed by attempt 2", sum(1 for r in rows if r[1:4] == ("succeeded", 2, '"attempt 2"')),
              "==", len(ids))
    run.check("sync hung attempts that returned late (discarded)",
              sum(1 for j in sync_ids for ex in runlog.executions.get(j, []) if ex.attempt == 1 and ex.ended),
              "==", jobs)
    run.check("async hung attempts that ran on (not cancelled)",
              sum(1 for j in async_ids for ex in runlog.executions.get(j, []) if ex.attempt == 1 and ex.ended),
              "==", 0)


# -- 7 ------------------------------------------------------------------------------------------------------------

def rollbacks(db: psycopg.Connection[Any]) -> int:
    return int(scalar(db, "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"))


def drain(db: psycopg.Connection[Any], fleet: Fleet, ids: list[int], keep: int, timeout: float,
          fraction: float = 1.0) -> float:
    """Seconds until ``fraction`` of the jobs in ``ids`` have finished; returns once all have, restarting workers
    that die meanwhile. Below 1, the steady rate: the tail of jobs waiting out a dead worker's lease is left out
    (scenario 1 bounds that wait)."""
    started = time.monotonic()
    reached: float | None = None
    while True:
        done = sum(finished_states(db, ids).values())
        if reached is None and done >= fraction * len(ids):
            reached = time.monotonic() - started
        if done == len(ids):
            assert reached is not None
            return reached
        fleet.keep(keep)
        if time.monotonic() - started > timeout:
            stuck = db.execute("SELECT id, task, state, attempt FROM pgqueue.jobs WHERE id = ANY(%s) LIMIT 5",
                               (ids,)).fetchall()
            raise AssertionError(f"jobs did not finish within {timeout:g} s, e.g. {stuck}")
        time.sleep(0.02)


@scenario(7, "poison jobs", quick={"healthy": 3000, "poison": 2}, full={"healthy": 20_000, "poison": 10})
def poison_jobs(run: Run, healthy: int, poison: int) -> None:
    """Jobs that raise, cannot be called, or kill their worker (os._exit), among healthy ones.

    Rounds of ``healthy`` jobs: alone, among the poison that fails in the handler, among the poison that kills
    its worker process (a supervisor starts a new one, as systemd or Kubernetes would), and alone again. The
    rounds among poison are compared with the mean of the two alone, so the shared machine's drift over the
    minute falls on both sides.
    """
    workers = 3
    dsn = run.database()
    fleet = run.fleet(dsn, *lease_args(1.0, 0.33, concurrency=8))
    fleet.start(workers)
    deep = "[" * 5000 + "]" * 5000  # valid JSON to PostgreSQL, too deep for Python's json module
    with psycopg.connect(dsn, autocommit=True) as db:
        wait_until(lambda: scalar(db, "SELECT count(*) FROM pgqueue.workers") == workers, 30, what="workers")
        rounds: dict[str, float] = {}
        healthy_ids: list[int] = []

        def healthy_round(name: str) -> None:
            ids = enqueue_many(db, "chaos.work", [{"ms": 10}] * healthy)
            healthy_ids.extend(ids)
            rounds[name] = 0.9 * healthy / drain(db, fleet, ids, workers, 120, fraction=0.9)

        healthy_round("alone")
        rolled_back = rollbacks(db)
        poison_ids = {
            "raises": enqueue_many(db, "chaos.raise", [{}] * poison, max_attempts=POISON_ATTEMPTS),
            "wrong arguments": [int(scalar(db, "SELECT pgqueue.enqueue('chaos.args', '{\"bogus\": 1}', "
                                               "max_attempts => %s)", (POISON_ATTEMPTS,))) for _ in range(poison)],
            "undecodable (nested too deep)": [int(scalar(db, "SELECT pgqueue.enqueue('chaos.args', %s::json, "
                                                             "max_attempts => %s)", (deep, POISON_ATTEMPTS)))
                                              for _ in range(poison)],
        }
        healthy_round("among failing poison")
        drain(db, fleet, [j for ids in poison_ids.values() for j in ids], workers, 60)
        poison_ids["exits (os._exit)"] = enqueue_many(db, "chaos.exit", [{}] * poison, max_attempts=POISON_ATTEMPTS)
        healthy_round("among crashing poison")
        every_poison = [j for ids in poison_ids.values() for j in ids]
        drain(db, fleet, every_poison, workers, 60)
        rolled_back = rollbacks(db) - rolled_back
        healthy_round("alone, after the poison")
        dead = dict(db.execute("SELECT id, attempt FROM pgqueue.finished_jobs WHERE state = 'dead' AND id = ANY(%s)",
                               (every_poison,)).fetchall())
        errors = errors_of(db, every_poison)
        # From a failed attempt to the start of the next one: the backoff (a reclaimed attempt is retried at once).
        gaps = [g for (g,) in db.execute(
            "SELECT extract(epoch FROM n.started_at - e.failed_at)::float8 FROM pgqueue.job_errors e "
            "JOIN pgqueue.job_errors n ON n.job_id = e.job_id AND n.attempt = e.attempt + 1 "
            "WHERE e.job_id = ANY(%s) AND e.kind = 'error'", (every_poison,)).fetchall()]
        healthy_states = finished_states(db, healthy_ids)
    fleet.stop_all()
    runlog = fleet.runlog()
    per_job = Counter(e[0] for e in errors)
    run.figure("healthy jobs per round", healthy)
    for kind, ids in poison_ids.items():
        run.check(f"poison '{kind}': dead after exactly {POISON_ATTEMPTS} attempts",
                  sum(1 for j in ids if dead.get(j) == POISON_ATTEMPTS and per_job[j] == POISON_ATTEMPTS),
                  "==", len(ids))
    uncallable = poison_ids["wrong arguments"] + poison_ids["undecodable (nested too deep)"]
    run.check("handler runs of jobs it cannot be called with", sum(runlog.count(j) for j in uncallable), "==", 0)
    run.figure("worker processes killed by poison (restarted)", len(fleet.crashed()))
    run.check("worker processes that died otherwise", len(fleet.crashed(expected=(3,))), "==", 0)
    run.check("healthy jobs completed", healthy_states["succeeded"], "==", len(healthy_ids))
    for name, rate in rounds.items():
        run.figure(f"healthy throughput {name}", round(rate), "jobs/s")
    alone = (rounds["alone"] + rounds["alone, after the poison"]) / 2
    failing = round(rounds["among failing poison"] / alone, 2)
    crashing = round(rounds["among crashing poison"] / alone, 2)
    if run.mode == "full":
        run.check("healthy throughput kept among failing poison", failing, ">=", 0.9, "x")
        run.check("healthy throughput kept among crashing poison", crashing, ">=", 0.7, "x")
    else:
        # Throughput ratios are for `make chaos` and bench/: inside `make test`, on a loaded machine, they would
        # fail at random. The quick slice reports them and checks everything else.
        run.figure("healthy throughput kept among failing poison (bound 0.9x in make chaos)", failing, "x")
        run.figure("healthy throughput kept among crashing poison (bound 0.7x in make chaos)", crashing, "x")
    run.check("quickest retry of a failed attempt (backoff floor)", round(min(gaps, default=1.0), 3), ">=",
              POISON_RETRY[0] * 0.5, "s")
    run.check("rolled-back transactions (failing claims or writes)", rolled_back, "<=", 3 * workers)


# -- 15 -----------------------------------------------------------------------------------------------------------

@scenario(15, "pool exhaustion", quick={"jobs": 12, "hold": 1.5}, full={"jobs": 60, "hold": 3.0})
def pool_exhaustion(run: Run, jobs: int, hold: float) -> None:
    """Handlers that each hold one of the app's pooled connections for ``hold`` seconds, 12 at once on a pool of
    2: most wait (at full size, some past the pool's 10 s timeout). Heartbeats have a connection of their own."""
    lease, heartbeat, pool = 1.5, 0.5, 2
    dsn = run.database()
    fleet = run.fleet(dsn, *lease_args(lease, heartbeat, concurrency=12), env={"CHAOS_POOL_SIZE": str(pool)})
    (proc,) = fleet.start()
    with psycopg.connect(dsn, autocommit=True) as db:
        ids = enqueue_many(db, "chaos.pool", [{"seconds": hold}] * jobs)
        stalest, deadline = 0.0, time.monotonic() + jobs * hold / pool * 3 + 60
        while not all_finished(db, ids):
            if time.monotonic() > deadline:
                raise AssertionError(f"pool-bound jobs did not finish: {counts(db)}")
            age = scalar(db, "SELECT extract(epoch FROM now() - min(last_heartbeat_at))::float8 FROM pgqueue.workers")
            stalest = max(stalest, age or 0.0)
            time.sleep(0.05)
        errors = errors_of(db, ids)
        completed = finished_states(db, ids)["succeeded"]
        # Recovery: once the pool is free again, fresh jobs run at once.
        fresh = enqueue_many(db, "chaos.work", [{"ms": 0}] * 20)
        enqueued_at = time.monotonic()
        wait_until(lambda: all_finished(db, fresh), 30, what="fresh jobs after the exhaustion")
        recovery = time.monotonic() - enqueued_at
        alive = proc.poll() is None
    fleet.stop_all()
    run.figure("jobs holding a pooled connection", jobs)
    run.figure("pool size / concurrency", f"{pool} / 12")
    run.figure("attempts failed waiting for the pool (retried)",
               sum(1 for e in errors if e[2] == "error" and e[3] == "DatabaseUnavailable"))
    run.check("worker alive throughout", alive, "==", True)
    run.check("stalest worker heartbeat seen", round(stalest, 3), "<=", heartbeat + 1.0, "s")
    run.check("jobs reclaimed for a missed heartbeat", sum(1 for e in errors if e[2] == "lease_expired"), "==", 0)
    run.check("other failed attempts", sum(1 for e in errors if e[3] != "DatabaseUnavailable"), "==", 0)
    run.check("jobs completed", completed, "==", jobs)
    run.check("20 fresh jobs done after the exhaustion within", round(recovery, 2), "<=", 2.0, "s")
