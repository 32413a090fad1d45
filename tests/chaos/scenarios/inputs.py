"""Scenario 8: malformed input to the Python API, the SQL API and the CLI, generated with hypothesis."""

from __future__ import annotations

import contextlib
import io
import json
from datetime import datetime, timezone
from typing import Any

import psycopg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pgqueue import App, DatabaseUnavailable, ValidationError
from pgqueue.cli import main as cli_main
from pgqueue.job import to_json
from pgqueue.queries import q
from tests.chaos.harness import Run, scenario
from tests.chaos.probes import scalar

HOSTILE = ["", "';--", "a'b", 'a"b', "%s", "%(x)s", "$1", "a\x00b", "a b", "a\ud800b", "é", "x" * 101, "x" * 201,
           "default; DROP TABLE pgqueue.jobs", "-- ", "\\", "{}", "a\nb"]
names = st.one_of(st.sampled_from(HOSTILE), st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:-]{0,30}", fullmatch=True),
                  st.text(st.characters(codec=None), max_size=250))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
              st.text(st.characters(codec=None), max_size=30), st.just("\x00"), st.just("\ud800")),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)
BIG = "x" * (1024 * 1024)
payloads = st.one_of(st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), json_values, max_size=4),
                     st.just({"blob": BIG}), st.just({"blob": BIG[: 1024 * 1024 - 20]}))
priorities = st.one_of(st.none(), st.integers(-(2**63), 2**63), st.sampled_from([-1, 0, 32767, 32768]),
                       st.floats(), st.booleans())
moments = st.one_of(st.none(), st.datetimes(timezones=st.just(timezone.utc)), st.datetimes(),
                    st.sampled_from([datetime.min.replace(tzinfo=timezone.utc),
                                     datetime.max.replace(tzinfo=timezone.utc)]))
delays = st.one_of(st.none(), st.floats(), st.integers(-(2**40), 2**40))
SQL_TIMES = st.one_of(st.none(), st.sampled_from(["infinity", "-infinity", "4713-01-01 BC", "294276-12-31",
                                                  "now", "not a date", "2026-01-01 00:00:00+00"]))


class Tally:
    def __init__(self) -> None:
        self.accepted = self.refused = self.wrong = 0
        self.problems: list[str] = []

    def bad(self, text: str) -> None:
        self.wrong += 1
        if len(self.problems) < 5:
            self.problems.append(text[:300])


def live_rows(db: psycopg.Connection[Any]) -> int:
    return int(scalar(db, "SELECT count(*) FROM pgqueue.jobs"))


@scenario(8, "malformed input", quick={"examples": 150}, full={"examples": 1500})
def malformed_input(run: Run, examples: int) -> None:
    """Python API, SQL API and CLI enqueues with hostile names, payloads, priorities and dates: each is accepted
    and round-trips byte for byte, or refused with a typed error (CLI: exit 2) leaving no row."""
    dsn = run.database()
    app = App(dsn=dsn)
    dead = App(dsn="postgresql://chaos@127.0.0.1:1/nowhere?connect_timeout=1")  # any SQL fails: unreachable
    run.defer(app.close)
    py, sq, cli = Tally(), Tally(), Tally()
    quiet = settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                     suppress_health_check=list(HealthCheck))
    with psycopg.connect(dsn, autocommit=True) as db:

        @quiet
        @given(task=names, queue=st.one_of(st.none(), names), payload=payloads, priority=priorities,
               run_at=moments, delay=delays)
        def python_api(task: str, queue: str | None, payload: dict[str, Any], priority: Any, run_at: Any,
                       delay: Any) -> None:
            before = live_rows(db)
            call = {"kwargs": payload, "queue": queue, "priority": priority, "run_at": run_at,
                    "delay": None if run_at is not None else delay}
            try:
                job = app.enqueue(task, **call)
            except ValidationError:
                py.refused += 1
                if live_rows(db) != before:
                    py.bad(f"partial row after refusal: {task!r}")
                try:  # the same refusal without a database: decided before any SQL
                    dead.enqueue(task, **call)
                    py.bad(f"unreachable app accepted {task!r}")
                except ValidationError:
                    pass
                except DatabaseUnavailable:
                    py.bad(f"validated only after SQL: {task!r} {queue!r}")
                return
            except Exception as err:
                py.bad(f"untyped {type(err).__name__}: {err} for {task!r}")
                return
            py.accepted += 1
            stored = scalar(db, "SELECT kwargs::text FROM pgqueue.jobs WHERE id = %s", (job.id,))
            if stored != to_json(payload, "x") or json.loads(stored) != json.loads(to_json(payload, "x")):
                py.bad(f"payload changed for job {job.id}")
            db.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (job.id,))

        @quiet
        @given(task=names, queue=names, payload=payloads, priority=st.integers(-(2**40), 2**40),
               run_at=SQL_TIMES, attempts=st.integers(-(2**40), 2**40))
        def sql_api(task: str, queue: str, payload: dict[str, Any], priority: int, run_at: str | None,
                    attempts: int) -> None:
            before = live_rows(db)
            try:
                text = json.dumps(payload, allow_nan=False)
            except ValueError:
                text = json.dumps(payload)  # NaN: not JSON, PostgreSQL must refuse it
            try:
                row = db.execute("SELECT pgqueue.enqueue(%s, %s::json, queue => %s, priority => %s::integer, "
                                 "run_at => %s::timestamptz, max_attempts => %s::integer)",
                                 (task, text, queue, priority, run_at, attempts)).fetchone()
            except (psycopg.DataError, psycopg.errors.InvalidParameterValue) as err:
                sq.refused += 1  # class 22: data exception, or the driver refusing NUL / unencodable text
                if live_rows(db) != before:
                    sq.bad(f"partial row after {err}")
                return
            except UnicodeEncodeError:
                sq.refused += 1
                return
            except Exception as err:
                sq.bad(f"untyped {type(err).__name__}: {err}")
                return
            assert row is not None
            sq.accepted += 1
            stored = scalar(db, "SELECT kwargs::text FROM pgqueue.jobs WHERE id = %s", (row[0],))
            if stored != text:
                sq.bad(f"payload changed for job {row[0]}")
            db.execute("DELETE FROM pgqueue.jobs WHERE id = %s", (row[0],))

        @settings(max_examples=max(20, examples // 5), deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        @given(task=names, queue=names, payload=st.one_of(payloads.map(json.dumps), st.sampled_from(
            ["{", "[1,", "nul\x00", "'", "1", "null", '"s"', "[" * 3000 + "]" * 3000])),
            priority=st.one_of(st.integers(-(2**70), 2**70).map(str), st.sampled_from(["x", "1.5", ""])))
        def command_line(task: str, queue: str, payload: str, priority: str) -> None:
            before = live_rows(db)
            err = io.StringIO()
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                try:
                    code = cli_main(["--dsn", dsn, "enqueue", task, "--args", payload, "--queue", queue,
                                     "--priority", priority])
                except Exception as raised:  # main must never raise
                    cli.bad(f"raised {type(raised).__name__}: {raised}")
                    return
            if code == 0:
                cli.accepted += 1
                db.execute("DELETE FROM pgqueue.jobs")
            elif code == 2 and "Traceback" not in err.getvalue() and err.getvalue().startswith("error: "):
                cli.refused += 1
                if live_rows(db) != before:
                    cli.bad("partial row after exit 2")
            else:
                cli.bad(f"exit {code}: {err.getvalue()[:200]!r} for {task!r} {queue!r} {priority!r}")

        python_api()
        sql_api()
        command_line()
        # An infinite run_at must not break maintenance (the promoter asks when the next job is due).
        db.execute("SELECT pgqueue.enqueue('t.far', run_at => 'infinity')")
        next_due = db.execute(q("job_next_scheduled_in")).fetchone()
    for label, tally in (("Python API", py), ("SQL API", sq), ("CLI", cli)):
        run.figure(f"{label}: accepted / refused", f"{tally.accepted} / {tally.refused}")
        run.check(f"{label}: cases untyped, partial or changed", tally.wrong, "==", 0)
        for problem in tally.problems:
            run.note(f"{label}: {problem}")
    run.check("next-due query with an infinite run_at queued", next_due is not None, "==", True)
