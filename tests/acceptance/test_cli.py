"""The command line: every command works, and every user mistake is one line, a non-zero exit, no traceback,
and nothing written."""

from __future__ import annotations

import json
from collections.abc import Callable
from subprocess import CompletedProcess
from typing import Any

import psycopg
import pytest

from pgqueue import App, JobState
from tests.acceptance.conftest import run_cli

Cli = Callable[..., CompletedProcess[str]]


def assert_one_line_error(result: CompletedProcess[str], *needles: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0, result
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


def count_jobs(db: psycopg.Connection[Any]) -> int:
    row = db.execute("SELECT (SELECT count(*) FROM pgqueue.jobs) + (SELECT count(*) FROM pgqueue.finished_jobs)"
                     ).fetchone()
    return int(row[0]) if row else 0


def test_help_lists_every_command(cli: Cli) -> None:
    out = cli("--help").stdout
    for command in ("migrate", "work", "enqueue", "jobs", "dlq", "stats", "workers", "prune", "demo", "embedded",
                    "queue", "cron", "batch"):
        assert command in out


def test_module_entry_point_and_the_happy_path(cli: Cli, app: App) -> None:
    result = cli("enqueue", "t.record", "--args", '{"n": 5}', "--queue", "cli", "--priority", "3")
    assert result.returncode == 0, result.stderr
    job_id = int(result.stdout.split()[2])
    job = app.job(job_id)
    assert (job.task, job.kwargs, job.queue, job.priority) == ("t.record", {"n": 5}, "cli", 3)
    assert cli("enqueue", "t.record", "--args", "[1]", "--delay", "5m").returncode == 0
    listing = cli("jobs", "list", "--queue", "cli").stdout
    assert str(job_id) in listing and "queued" in listing
    shown = cli("jobs", "show", str(job_id)).stdout
    assert '{"n": 5}' in shown and "t.record" in shown
    assert "cli" in cli("stats").stdout
    assert cli("jobs", "cancel", str(job_id)).returncode == 0
    assert app.job(job_id).state is JobState.CANCELLED
    assert cli("jobs", "retry", str(job_id)).returncode == 0
    assert app.job(job_id).state is JobState.QUEUED
    status = cli("migrate", "--status").stdout
    assert "initial" in status and "pending" not in status
    assert "up to date" in cli("migrate").stdout


def test_dead_letter_commands(cli: Cli, app: App, db: psycopg.Connection[Any]) -> None:
    db.execute("""INSERT INTO pgqueue.finished_jobs (id, queue, task, args, kwargs, priority, state, attempt,
                  max_attempts, scheduled_for, created_at, error_type)
                  SELECT nextval('pgqueue.job_id_seq'), 'dlq', 'x.y', '[]', '{}', 0, 'dead', 1, 1, now(), now(),
                         'ValueError' FROM generate_series(1, 3)""")
    assert cli("dlq", "list").stdout.count("x.y") == 3
    assert "queued 3 dead jobs" in cli("dlq", "retry", "--queue", "dlq").stdout
    assert "queued 0 dead jobs" in cli("dlq", "retry", "--all").stdout
    assert_one_line_error(cli("dlq", "retry"), "say which jobs")


@pytest.mark.parametrize(("args", "needles"), [
    (["enqueue", "nope", "--app", "tests.acceptance.apps:app"], ["unknown task 'nope'"]),
    (["enqueue", "t.record", "--args", "{bad"], ["--args is not valid JSON"]),
    (["enqueue", "t.record", "--args", '"text"'], ["JSON object"]),
    (["enqueue", "t.record", "--priority", "-1"], ["priority"]),
    (["enqueue", "t.record", "--queue", "';--"], ["invalid queue name"]),
    (["enqueue", "drop table;--"], ["invalid task name"]),
    (["enqueue", "t.record", "--run-at", "tomorrow"], ["--run-at"]),
    (["enqueue", "t.record", "--delay", "soon"], ["invalid duration"]),
    (["enqueue", "t.record", "--args", "@tests/acceptance/no-such-file.json"], ["cannot read --args file"]),
    (["enqueue", "t.record", "--app", "tests.acceptance.apps:app", "--args", '{"wrong": 1}'], ["bad arguments"]),
    (["jobs", "list", "--state", "bogus"], ["invalid --state"]),
    (["jobs", "show", "987654321"], ["no job with id 987654321"]),
    (["jobs", "show", "abc"], ["job_id", "integer"]),
    (["--bogus"], ["No such option"]),
    (["work", "no_such_module:app"], ["cannot import module"]),
    (["work", "tests.acceptance.apps:missing"], ["is not a pgqueue App"]),
    (["work", "tests.acceptance.apps"], ["module:attribute"]),
    (["work", "tests.acceptance.apps:app", "--concurrency", "0"], ["concurrency"]),
    (["work", "tests.acceptance.apps:app", "--lease", "1", "--heartbeat", "5"], ["heartbeat"]),
    (["work", "tests.acceptance.apps:app", "--vacuum-after", "-1"], ["vacuum-after"]),
    (["work", "tests.acceptance.apps:app", "--claim-batch", "0"], ["claim-batch"]),
    (["prune", "--older-than", "soon"], ["invalid duration"]),
    (["prune", "--state", "running"], ["finished states"]),
])
def test_user_mistakes_are_one_line_and_write_nothing(cli: Cli, db: psycopg.Connection[Any], args: list[str],
                                                      needles: list[str]) -> None:
    assert_one_line_error(cli(*args), *needles)
    assert count_jobs(db) == 0


def test_huge_payload_from_a_file_is_refused(cli: Cli, db: psycopg.Connection[Any], tmp_path: Any) -> None:
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"blob": "x" * 1_100_000}))
    assert_one_line_error(cli("enqueue", "t.record", "--args", f"@{big}"), "over the limit of 1048576 bytes")
    small = tmp_path / "small.json"
    small.write_text(json.dumps({"n": 7}))
    assert cli("enqueue", "t.record", "--args", f"@{small}").returncode == 0
    assert count_jobs(db) == 1


@pytest.mark.parametrize(("dsn", "needles", "code"), [
    ("postgresql://postgres@127.0.0.1:1/x", ["cannot connect to PostgreSQL at 127.0.0.1:1/x"], 1),
    ("host=/nonexistent/socket dbname=x", ["cannot connect to PostgreSQL"], 1),
    ("postgresql://[bad", ["DSN is not valid"], 2),
])
def test_unreachable_or_malformed_dsn(dsn: str, needles: list[str], code: int) -> None:
    for command in (["stats"], ["enqueue", "t.x"], ["migrate"], ["work", "tests.acceptance.apps:app"]):
        result = run_cli(dsn, *command)
        assert_one_line_error(result, *needles)
        assert result.returncode == code


def test_dsn_may_follow_the_command(dsn: str, app: App) -> None:
    """--dsn after the command name works as before it, and wins over PGQUEUE_DSN."""
    elsewhere = {"PGQUEUE_DSN": "postgresql://postgres@127.0.0.1:1/x"}
    status = run_cli(None, "migrate", "--status", "--dsn", dsn, env=elsewhere)
    assert status.returncode == 0 and "initial" in status.stdout, status.stderr
    enqueued = run_cli(None, "enqueue", "t.record", f"--dsn={dsn}", "--args", "[1]", env=elsewhere)
    assert enqueued.returncode == 0, enqueued.stderr
    assert app.job(int(enqueued.stdout.split()[2])).args == [1]
    assert_one_line_error(run_cli(None, "stats", "--dsn", env=elsewhere), "--dsn needs a value")


def test_schema_not_migrated(fresh_database: Callable[[], str]) -> None:
    empty = fresh_database()
    for command in (["stats"], ["enqueue", "t.x"], ["jobs", "list"], ["work", "tests.acceptance.apps:app"]):
        assert_one_line_error(run_cli(empty, *command), "run `pgqueue migrate`")


def test_concurrent_migrations_from_many_processes(fresh_database: Callable[[], str]) -> None:
    import subprocess
    import sys

    from pgqueue.migrate import available
    from tests.conftest import ROOT

    target = fresh_database()
    procs = [subprocess.Popen([sys.executable, "-m", "pgqueue", "--dsn", target, "migrate"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, outputs
    assert sum("applied migrations" in out for out, _ in outputs) == 1
    with psycopg.connect(target) as conn:
        from pgqueue.migrate import available

        assert conn.execute("SELECT count(*) FROM pgqueue.schema_migrations").fetchone() == (len(available()),)
