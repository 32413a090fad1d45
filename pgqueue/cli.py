"""The ``pgqueue`` command line (also ``python -m pgqueue``).

User mistakes (bad DSN, database down, schema not migrated, unknown task, bad JSON, bad option) print one line
``error: ...`` on stderr and exit non-zero: 2 for bad usage or input, 1 for an environment problem (database
unreachable, schema missing). Tracebacks are for bugs only.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import re
import signal
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, Any

import typer

from pgqueue import embedded
from pgqueue.app import App
from pgqueue.errors import ConfigurationError, DatabaseError, PgQueueError, ValidationError
from pgqueue.job import JobState, from_json
from pgqueue.once import cli as once_cli
from pgqueue.roles import roles_command
from pgqueue.web import cli as web_cli
from pgqueue.worker import Worker, WorkerConfig, prepare_worker_process

cli = typer.Typer(
    name="pgqueue", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    help="pgqueue: background jobs for Python with PostgreSQL as the only moving part.",
)
jobs_cli = typer.Typer(no_args_is_help=True, help="List, show, cancel and retry jobs.")
dlq_cli = typer.Typer(no_args_is_help=True, help="The dead-letter queue: list, show, retry, delete.")
embedded_cli = typer.Typer(no_args_is_help=True, help="The embedded PostgreSQL used when no DSN is given.")
cli.add_typer(jobs_cli, name="jobs")
cli.add_typer(dlq_cli, name="dlq")
queue_cli = typer.Typer(no_args_is_help=True, help="Queues: list, pause, resume, set limits.")
cron_cli = typer.Typer(no_args_is_help=True, help="Cron schedules: list, add, remove, pause, resume.")
batch_cli = typer.Typer(no_args_is_help=True, help="Batches of jobs: progress and counts.")
cli.add_typer(embedded_cli, name="embedded")
cli.add_typer(queue_cli, name="queue")
cli.add_typer(cron_cli, name="cron")
cli.add_typer(batch_cli, name="batch")
cli.command("roles")(roles_command)
cli.add_typer(once_cli.outbox_cli, name="outbox")
cli.command("relay")(once_cli.relay)
cli.add_typer(web_cli.token_cli, name="token")
cli.command()(web_cli.serve)

_state: dict[str, Any] = {"dsn": None}

DsnOption = Annotated[str | None, typer.Option("--dsn", envvar="PGQUEUE_DSN", show_envvar=True,
                                                help="PostgreSQL DSN; unset: the embedded server.")]


@cli.callback()
def root(dsn: DsnOption = None,
         verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug output.")] = False) -> None:
    _state["dsn"] = dsn or None
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _app() -> App:
    app = App(dsn=_state["dsn"])
    _opened.append(app)
    return app


# Apps made by commands, closed when main() returns: a caller running many commands in one process (tests,
# scripts) would otherwise leave their pools to the garbage collector, which may run a pool's finaliser on
# that pool's own thread.
_opened: list[App] = []


def load_app(path: str) -> App:
    """Import ``module:attribute`` (an App) the way ``pgqueue work`` is given it."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ConfigurationError(f"app must be given as module:attribute (e.g. myproject.tasks:app), got {path!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ConfigurationError(f"cannot import module {module_name!r}: {err}") from err
    app = getattr(module, attr, None)
    if not isinstance(app, App):
        raise ConfigurationError(f"{module_name}.{attr} is not a pgqueue App (found {type(app).__name__})")
    if _state["dsn"]:
        app._dsn = _state["dsn"]
    return app


_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(w|d|h|m|s)?")
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, None: 1}


def parse_duration(text: str) -> timedelta:
    """'7d', '12h', '30m', '45s', '1w' or a number of seconds."""
    match = _DURATION.fullmatch(text.strip())
    if not match:
        raise ValidationError(f"invalid duration {text!r}: use a number with a unit, like 7d, 12h, 30m or 45s")
    return timedelta(seconds=float(match[1]) * _UNITS[match[2]])


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    typer.echo("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip())
    for row in cells:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, timedelta):
        return f"{value.total_seconds():.1f}s"
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, JobState):
        return value.value
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- schema -----------------------------------------------------------------------------------------------------

@cli.command()
def migrate(status: Annotated[bool, typer.Option("--status", help="Show applied and pending migrations.")] = False
            ) -> None:
    """Install or upgrade the pgqueue schema (safe to run from many hosts at once)."""
    from pgqueue import migrate as migrations

    app = _app()
    if status:
        rows = migrations.status(app.dsn)
        _table(["version", "name", "applied_at"], [(m.version, m.name, m.applied_at or "pending") for m in rows])
        return
    applied = migrations.migrate(app.dsn)
    if applied:
        typer.echo(f"applied migrations {', '.join(map(str, applied))}; schema is at version {max(applied)}")
    else:
        typer.echo(f"schema is up to date (version {migrations.latest_version()})")


# -- workers ----------------------------------------------------------------------------------------------------

@cli.command()
def work(
    app_path: Annotated[str, typer.Argument(metavar="MODULE:APP", help="Where the App lives, e.g. myproj.tasks:app")],
    queue: Annotated[list[str] | None, typer.Option("--queue", "-q", help="Queue to serve (repeat); default all.")
                     ] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Jobs run at once.")] = 10,
    lease: Annotated[float, typer.Option(help="Seconds a claimed job is held without a heartbeat.")] = 30.0,
    heartbeat: Annotated[float | None, typer.Option(help="Seconds between lease renewals (default lease/3).")
                         ] = None,
    poll_interval: Annotated[float, typer.Option(help="Safety poll in seconds when no notification comes.")
                             ] = 5.0,
    drain_timeout: Annotated[float, typer.Option(help="Seconds to let running jobs finish on SIGTERM.")] = 30.0,
    promote_interval: Annotated[float, typer.Option(help="Max seconds between moves of due delayed jobs.")] = 1.0,
    prefetch: Annotated[int, typer.Option(min=0, help="Jobs claimed ahead of free slots (short jobs; default 0).")
                        ] = 0,
    claim_batch: Annotated[int | None, typer.Option(min=1, help="Most jobs one claim takes (default: half of "
                                                    "concurrency + prefetch, at most 100).")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    relay: Annotated[bool, typer.Option("--relay", help="Also deliver the outbox (see `pgqueue relay`).")] = False,
    vacuum_after: Annotated[int, typer.Option(min=0, help="Dead rows in pgqueue.jobs (plus 5% of the live ones) "
                                              "after which a worker vacuums it; 0 leaves it to autovacuum.")
                            ] = 20_000,
) -> None:
    """Run a worker process: claim jobs, run them, until SIGTERM/SIGINT (twice to force)."""
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise ValidationError(f"invalid --log-level {log_level!r}: use debug, info, warning or error")
    logging.getLogger().setLevel(level)
    app = load_app(app_path)
    config = WorkerConfig(queues=queue, concurrency=concurrency, lease=lease, heartbeat=heartbeat,
                          poll_interval=poll_interval, drain_timeout=drain_timeout,
                          promote_interval=promote_interval, prefetch=prefetch, claim_batch=claim_batch,
                          relay=relay, vacuum_after=vacuum_after)
    worker = Worker(app, config)
    prepare_worker_process()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        await worker.run()

    asyncio.run(main())
    if worker.busy_threads:
        # Sync handlers that overran their timeout still hold threads Python cannot stop; their jobs are
        # already accounted for in the database, so leave without waiting for them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


# -- enqueue and inspect ----------------------------------------------------------------------------------------

@cli.command()
def enqueue(
    task: Annotated[str, typer.Argument(help="Task name, e.g. myproj.tasks.send_email")],
    args: Annotated[str, typer.Option("--args", help="JSON object (keyword args) or array (positional); "
                                      "@FILE reads it from a file, - from stdin.")] = "{}",
    queue: Annotated[str | None, typer.Option(help="Queue (default: the task's, else 'default').")] = None,
    priority: Annotated[int | None, typer.Option(help="0-32767, higher runs first.")] = None,
    delay: Annotated[str | None, typer.Option(help="Run after this long, e.g. 30s, 5m.")] = None,
    run_at: Annotated[str | None, typer.Option(help="Run at this ISO-8601 time (with timezone).")] = None,
    max_attempts: Annotated[int | None, typer.Option(help="Attempts before the job goes dead.")] = None,
    app_path: Annotated[str | None, typer.Option("--app", metavar="MODULE:APP",
                                                 help="Check the task and its arguments against this app.")] = None,
) -> None:
    """Enqueue one job and print its id."""
    payload = _parse_args(args)
    when = None
    if run_at is not None:
        try:
            when = datetime.fromisoformat(run_at)
        except ValueError as err:
            raise ValidationError(f"--run-at is not an ISO-8601 time: {run_at!r}") from err
    app = load_app(app_path) if app_path else _app()
    job = app.enqueue(task, payload if isinstance(payload, list) else [],
                      payload if isinstance(payload, dict) else {}, queue=queue, priority=priority, run_at=when,
                      delay=parse_duration(delay).total_seconds() if delay else None, max_attempts=max_attempts)
    typer.echo(f"enqueued job {job.id} ({job.task} on queue {job.queue}, {job.state.value})")


def _parse_args(value: str) -> list[Any] | dict[str, Any]:
    """--args: a JSON object (keyword arguments) or array (positional), inline, @FILE or - for stdin."""
    try:
        payload = from_json(_read_args(value), "--args")
    except ValueError as err:
        raise ValidationError(f"--args is not valid JSON: {err}") from err
    if not isinstance(payload, dict | list):
        raise ValidationError("--args must be a JSON object (keyword arguments) or array (positional arguments)")
    return payload


def _read_args(value: str) -> str:
    if value == "-":
        return sys.stdin.read()
    if value.startswith("@"):
        try:
            with open(value[1:], encoding="utf-8") as source:
                return source.read()
        except OSError as err:
            raise ValidationError(f"cannot read --args file {value[1:]!r}: {err.strerror}") from err
    return value


def _job_rows(jobs: Sequence[Any]) -> list[tuple[Any, ...]]:
    return [(j.id, j.queue, j.task, j.state, f"{j.attempt}/{j.max_attempts}", j.priority, j.scheduled_for,
             j.finished_at) for j in jobs]


@jobs_cli.command("list")
def jobs_list(
    queue: Annotated[str | None, typer.Option(help="Only this queue.")] = None,
    state: Annotated[str | None, typer.Option(help="scheduled, queued, running, succeeded, dead or cancelled.")
                     ] = None,
    task: Annotated[str | None, typer.Option(help="Only this task.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
) -> None:
    """List jobs, newest first."""
    if state is not None and state not in {s.value for s in JobState}:
        raise ValidationError(f"invalid --state {state!r}: use one of {', '.join(s.value for s in JobState)}")
    jobs = _app().jobs(queue=queue, state=state, task=task, limit=limit)
    _table(["id", "queue", "task", "state", "attempt", "prio", "scheduled_for", "finished_at"], _job_rows(jobs))


@jobs_cli.command("show")
def jobs_show(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Show one job with its arguments, result and every failed attempt."""
    job = _app().job(job_id)
    for key in ("id", "task", "queue", "state", "priority", "attempt", "max_attempts", "created_at",
                "scheduled_for", "started_at", "finished_at", "lease_expires_at", "worker_id", "group_key",
                "unique_key", "batch_id", "progress", "progress_message"):
        value = getattr(job, key)
        typer.echo(f"{key:>16}: {value.value if isinstance(value, JobState) else _cell(value)}")
    typer.echo(f"{'args':>16}: {json.dumps(job.args)}")
    typer.echo(f"{'kwargs':>16}: {json.dumps(job.kwargs)}")
    typer.echo(f"{'result':>16}: {json.dumps(job.result)}")
    for err in job.errors:
        typer.echo(f"--- attempt {err.attempt} ({err.kind}) at {_cell(err.failed_at)}: {err.error_type}: "
                   f"{err.message}")
        if err.traceback:
            typer.echo(err.traceback.rstrip())


@jobs_cli.command("cancel")
def jobs_cancel(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Cancel a job: one that has not started never runs; a running one is asked to stop."""
    app = _app()
    if app.cancel(job_id):
        state = app.job(job_id).state.value
        typer.echo(f"cancelled job {job_id}" if state == "cancelled" else
                   f"asked the worker running job {job_id} to cancel it")
    else:
        raise ValidationError(f"job {job_id} has already finished; it was not cancelled")


@jobs_cli.command("retry")
def jobs_retry(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Queue a dead or cancelled job again."""
    if _app().retry(job_id):
        typer.echo(f"queued job {job_id} again")
    else:
        _app().job(job_id)
        raise ValidationError(f"job {job_id} is not dead or cancelled; nothing to retry")


# -- dead letters -----------------------------------------------------------------------------------------------

_Ids = Annotated[list[int] | None, typer.Argument(help="Job ids.")]
_Task = Annotated[str | None, typer.Option(help="All dead jobs of this task.")]
_Queue = Annotated[str | None, typer.Option(help="All dead jobs of this queue.")]
_All = Annotated[bool, typer.Option("--all", help="Every dead job.")]


@dlq_cli.command("list")
def dlq_list(task: _Task = None, queue: _Queue = None,
             limit: Annotated[int, typer.Option(min=1, help="At most this many.")] = 50) -> None:
    """List dead jobs, newest first, with their last error."""
    rows = _app().dead_letters(task=task, queue=queue, limit=limit)
    _table(["id", "queue", "task", "attempts", "finished_at", "error"],
           [(r["id"], r["queue"], r["task"], r["attempt"], r["finished_at"],
             f"{r['error_type']}: {r['error_message']}") for r in rows])


@dlq_cli.command("show")
def dlq_show(job_id: Annotated[int, typer.Argument(help="Job id.")]) -> None:
    """Show one dead job with every attempt's error."""
    jobs_show(job_id)


@dlq_cli.command("retry")
def dlq_retry(ids: _Ids = None, task: _Task = None, queue: _Queue = None, all_: _All = False) -> None:
    """Queue dead jobs again: by id, task, queue or --all. One statement, however many."""
    count = _app().retry(*(ids or []), task=task, queue=queue, all=all_)
    typer.echo(f"queued {count} dead jobs again")


@dlq_cli.command("delete")
def dlq_delete(ids: _Ids = None, task: _Task = None, queue: _Queue = None, all_: _All = False) -> None:
    """Delete dead jobs for good: by id, task, queue or --all."""
    count = _app().delete_dead(*(ids or []), task=task, queue=queue, all=all_)
    typer.echo(f"deleted {count} dead jobs")


# -- monitoring and housekeeping --------------------------------------------------------------------------------

@cli.command()
def stats() -> None:
    """Per-queue counts: scheduled, queued, running, dead, oldest queued age, last-minute rates."""
    rows = _app().stats()
    _table(["queue", "scheduled", "queued", "running", "dead", "oldest_queued", "ok/min", "failed/min",
            "dead/min"],
           [(s.queue, s.scheduled, s.queued, s.running, s.dead, s.oldest_queued_age, s.succeeded_last_minute,
             s.failed_last_minute, s.dead_last_minute) for s in rows])


@cli.command()
def workers() -> None:
    """Registered workers with their heartbeats and counts."""
    rows = _app().workers()
    _table(["id", "host", "pid", "queues", "conc", "state", "running", "done", "failed", "last_heartbeat"],
           [(str(w.id)[:8], w.host, w.pid, w.queues or "*", w.concurrency, w.state, w.running, w.jobs_done,
             w.jobs_failed, w.last_heartbeat_at) for w in rows])


@cli.command()
def prune(
    older_than: Annotated[str, typer.Option(help="Age, e.g. 7d, 12h.")] = "7d",
    state: Annotated[list[str] | None, typer.Option(help="succeeded, cancelled, dead (repeat); "
                                                    "default succeeded and cancelled.")] = None,
) -> None:
    """Delete finished jobs older than --older-than."""
    count = _app().prune(parse_duration(older_than), states=state or ["succeeded", "cancelled"])
    typer.echo(f"pruned {count} finished jobs")


@cli.command()
def demo(
    jobs: Annotated[int, typer.Option(min=10, max=100_000, help="How many sample jobs.")] = 300,
    workers: Annotated[int, typer.Option(min=1, max=16, help="Worker processes.")] = 2,
) -> None:
    """Run the demo: sample jobs of several kinds through worker processes, with live progress."""
    from pgqueue.demo import run_demo

    run_demo(_app().dsn, jobs=jobs, processes=workers)


# -- embedded server --------------------------------------------------------------------------------------------

@embedded_cli.command("start")
def embedded_start() -> None:
    """Start the embedded PostgreSQL (in $PGQUEUE_HOME, default ./.pgqueue) and print its DSN."""
    typer.echo(embedded.ensure_running())


@embedded_cli.command("stop")
def embedded_stop() -> None:
    """Stop the embedded PostgreSQL."""
    typer.echo("stopped" if embedded.stop() else "not running")


@embedded_cli.command("status")
def embedded_status() -> None:
    """Say whether the embedded PostgreSQL runs, and its DSN."""
    dsn = embedded.running_dsn()
    typer.echo(f"running: {dsn}" if dsn else f"not running (data folder {embedded.home()})")


# -- queues -----------------------------------------------------------------------------------------------------

def _rate(text: str | None, what: str) -> tuple[int, float] | None:
    """'100/60s' or '100/1m': at most 100 starts per 60 seconds."""
    if text is None:
        return None
    count, sep, period = text.partition("/")
    if not sep or not count.strip().isdigit():
        raise ValidationError(f"invalid {what} {text!r}: write starts/period, like 100/1m or 5/1s")
    return int(count), parse_duration(period).total_seconds()


@queue_cli.command("list")
def queue_list() -> None:
    """Queues with settings: paused, limits, fairness."""
    _table(["queue", "paused", "concurrency", "rate", "group_conc", "group_rate", "fair", "aging"],
           [(s.name, s.paused, s.concurrency_limit,
             f"{s.rate_limit}/{s.rate_period:g}s" if s.rate_limit is not None else None,
             s.group_concurrency_limit,
             f"{s.group_rate_limit}/{s.group_rate_period:g}s" if s.group_rate_limit is not None else None,
             s.fair, s.priority_aging) for s in _app().queues()])


@queue_cli.command("pause")
def queue_pause(name: Annotated[str, typer.Argument(help="Queue name.")]) -> None:
    """Stop claiming from a queue; running jobs finish."""
    _app().pause_queue(name)
    typer.echo(f"paused queue {name}")


@queue_cli.command("resume")
def queue_resume(name: Annotated[str, typer.Argument(help="Queue name.")]) -> None:
    """Claim from a paused queue again."""
    _app().resume_queue(name)
    typer.echo(f"resumed queue {name}")


@queue_cli.command("limit")
def queue_limit(
    name: Annotated[str, typer.Argument(help="Queue name.")],
    concurrency: Annotated[int | None, typer.Option(help="At most N running at once, across all workers.")] = None,
    rate: Annotated[str | None, typer.Option(help="At most N starts per period, e.g. 100/1m.")] = None,
    group_concurrency: Annotated[int | None, typer.Option(help="At most N running at once per group.")] = None,
    group_rate: Annotated[str | None, typer.Option(help="At most N starts per period per group.")] = None,
    fair: Annotated[bool, typer.Option(help="Share claims fairly between groups.")] = False,
    priority_aging: Annotated[str | None, typer.Option(help="Raise a queued job's priority by one per this "
                                                        "long waiting, e.g. 5m.")] = None,
) -> None:
    """Set a queue's limits (replacing its previous ones); no option: remove every limit."""
    aging = parse_duration(priority_aging).total_seconds() if priority_aging else None
    settings = _app().configure_queue(name, concurrency=concurrency, rate=_rate(rate, "--rate"),
                                      group_concurrency=group_concurrency,
                                      group_rate=_rate(group_rate, "--group-rate"), fair=fair,
                                      priority_aging=aging)
    typer.echo(f"queue {settings.name}: concurrency={settings.concurrency_limit} rate={rate} "
               f"group_concurrency={settings.group_concurrency_limit} group_rate={group_rate} fair={settings.fair}")


# -- cron -------------------------------------------------------------------------------------------------------

@cron_cli.command("list")
def cron_list() -> None:
    """Every schedule with its next tick."""
    from datetime import timezone as tz

    now = datetime.now(tz.utc)
    rows = _app().list_schedules()
    _table(["name", "cron", "timezone", "task", "queue", "missed", "paused", "source", "last_tick", "next_tick"],
           [(r.name, r.cron, r.timezone, r.task, r.queue, r.missed, r.paused, r.source, r.last_tick_at,
             None if r.paused else r.next_tick(now)) for r in rows])


@cron_cli.command("add")
def cron_add(
    name: Annotated[str, typer.Argument(help="Schedule name.")],
    cron: Annotated[str, typer.Option(help="Cron expression, e.g. '*/5 * * * *'.")],
    task: Annotated[str, typer.Option(help="Task to enqueue at each tick.")],
    args: Annotated[str, typer.Option("--args", help="JSON object (keyword args) or array (positional).")] = "{}",
    timezone: Annotated[str, typer.Option(help="IANA time zone of the expression.")] = "UTC",
    queue: Annotated[str, typer.Option(help="Queue of the jobs.")] = "default",
    priority: Annotated[int, typer.Option(help="Priority of the jobs.")] = 0,
    missed: Annotated[str, typer.Option(help="Ticks missed while down: skip, once or all.")] = "once",
) -> None:
    """Add (or replace) a schedule kept in the database."""
    from pgqueue.periodic import Schedule

    payload = _parse_args(args)
    schedule = Schedule(name=name, cron=cron, task=task, timezone=timezone, queue=queue, priority=priority,
                        missed=missed, args=tuple(payload) if isinstance(payload, list) else (),
                        kwargs=payload if isinstance(payload, dict) else None)
    _app().add_schedule(schedule)
    typer.echo(f"added schedule {name}: {schedule.cron} ({timezone}) -> {task}")


@cron_cli.command("remove")
def cron_remove(name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Delete a schedule."""
    _app().remove_schedule(name)
    typer.echo(f"removed schedule {name}")


@cron_cli.command("pause")
def cron_pause(name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Stop a schedule's ticks until resumed."""
    _app().pause_schedule(name, True)
    typer.echo(f"paused schedule {name}")


@cron_cli.command("resume")
def cron_resume(name: Annotated[str, typer.Argument(help="Schedule name.")]) -> None:
    """Resume a paused schedule (its missed policy decides about ticks missed meanwhile)."""
    _app().pause_schedule(name, False)
    typer.echo(f"resumed schedule {name}")


# -- batches ----------------------------------------------------------------------------------------------------

@batch_cli.command("show")
def batch_show(batch_id: Annotated[int, typer.Argument(help="Batch id.")]) -> None:
    """A batch's progress and counts per state."""
    info = _app().batch(batch_id)
    typer.echo(f"batch {info.id} {info.name!r}: {info.finished}/{info.total} finished ({info.progress:.0%})"
               + (f", callback job {info.callback_job_id}" if info.callback_job_id else ""))
    for state in ("waiting", "scheduled", "queued", "running", "succeeded", "dead", "cancelled"):
        if info.counts.get(state):
            typer.echo(f"  {state:<10} {info.counts[state]:>8}")


# -- entry point ------------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; every user mistake becomes one line on stderr and a non-zero exit code."""
    try:
        return _main(argv)
    finally:
        while _opened:
            with contextlib.suppress(Exception):  # leaving: a pool that cannot close cleanly changes nothing
                _opened.pop().close()


def _hoist_dsn(args: list[str]) -> list[str]:
    """``pgqueue migrate --dsn X`` means ``pgqueue --dsn X migrate``: --dsn is an option of the whole program,
    and people put it after the command as often as before. Nothing after a ``--`` is touched."""
    end = args.index("--") if "--" in args else len(args)
    head: list[str] = []
    moved: list[str] = []
    i = 0
    while i < end:
        arg = args[i]
        if arg == "--dsn":
            if i + 1 == end:
                raise typer.BadParameter("--dsn needs a value: a PostgreSQL DSN such as postgresql://user@host/db")
            moved += args[i:i + 2]
            i += 2
            continue
        (moved if arg.startswith("--dsn=") else head).append(arg)
        i += 1
    return moved + head + args[end:]


def _main(argv: Sequence[str] | None) -> int:
    command = typer.main.get_command(cli)
    try:
        args = _hoist_dsn(list(argv) if argv is not None else sys.argv[1:])
        result = command.main(args=args, prog_name="pgqueue", standalone_mode=False)
        return result if isinstance(result, int) else 0
    except typer.Exit as err:
        return int(getattr(err, "exit_code", 0) or 0)
    except typer.Abort:
        typer.echo("error: aborted", err=True)
        return 130
    except typer.TyperException as err:  # the usage errors of typer's (vendored) click
        ctx = getattr(err, "ctx", None)
        if type(err).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            return 0
        format_message = getattr(err, "format_message", None)
        message = format_message() if callable(format_message) else str(err)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"error: {message}{where}", err=True)
        return int(getattr(err, "exit_code", 2))
    except (ValidationError, ConfigurationError) as err:
        typer.echo(f"error: {err}", err=True)
        return 2
    except (DatabaseError, PgQueueError) as err:
        typer.echo(f"error: {err}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def run() -> None:
    sys.exit(main())
