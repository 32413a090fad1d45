"""The App: where tasks are registered and jobs are enqueued, read, retried and cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Concatenate, Protocol, TypeVar, overload

import psycopg
import psycopg_pool

from pgqueue.bulk import copy_jobs
from pgqueue.connection import connect, connect_options, describe, has_rows, resolve_dsn
from pgqueue.errors import (
    DatabaseUnavailable,
    JobNotFound,
    PgQueueError,
    UnknownTask,
    ValidationError,
    from_psycopg,
)
from pgqueue.job import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Job,
    JobError,
    JobState,
    check_key,
    check_max_attempts,
    check_priority,
    check_queue,
    check_task_name,
    encode_payload,
    from_json,
)
from pgqueue.once.api import Effects
from pgqueue.periodic import Schedule, ScheduleRow, check_cron, check_timezone
from pgqueue.queries import q
from pgqueue.retry import Backoff
from pgqueue.task import Call, Context, EnqueueOptions, P, R, Task
from pgqueue.workflow import Batch, create_batch

T = TypeVar("T")
FINISHED_PRUNABLE = ("succeeded", "cancelled")


class _TaskDecorator(Protocol):
    @overload
    def __call__(self, fn: Callable[Concatenate[Context, P], R], /) -> Task[P, R]: ...
    @overload
    def __call__(self, fn: Callable[P, R], /) -> Task[P, R]: ...


@dataclass(frozen=True)
class QueueStats:
    """One row of ``pgqueue.queue_stats``."""

    queue: str
    scheduled: int
    queued: int
    running: int
    dead: int
    oldest_queued_age: timedelta | None
    succeeded_last_minute: int
    failed_last_minute: int
    dead_last_minute: int
    waiting: int = 0
    paused: bool = False


@dataclass(frozen=True)
class QueueSettings:
    """A row of ``pgqueue.queues``: pause, limits and fairness of one queue. Rates are (starts, seconds)."""

    name: str
    paused: bool
    concurrency_limit: int | None
    rate_limit: int | None
    rate_period: float | None
    group_concurrency_limit: int | None
    group_rate_limit: int | None
    group_rate_period: float | None
    fair: bool
    priority_aging: float | None


@dataclass(frozen=True)
class BatchInfo:
    """A batch: how many of its jobs are in each state, and whether all have finished."""

    id: int
    name: str
    total: int
    counts: dict[str, int]
    callback_job_id: int | None
    created_at: datetime

    @property
    def finished(self) -> int:
        return sum(self.counts.get(s, 0) for s in ("succeeded", "dead", "cancelled"))

    @property
    def progress(self) -> float:
        return self.finished / self.total if self.total else 1.0

    @property
    def done(self) -> bool:
        return self.finished == self.total


@dataclass(frozen=True)
class WorkerInfo:
    """One row of ``pgqueue.worker_stats``."""

    id: Any
    host: str
    pid: int
    queues: list[str] | None
    concurrency: int
    state: str
    started_at: datetime
    last_heartbeat_at: datetime
    uptime: timedelta
    running: int
    jobs_done: int
    jobs_failed: int


class App(Effects):
    """A pgqueue application: its tasks and its database (and, from ``Effects``, its outbox and idempotency).

    ::

        from pgqueue import App
        app = App()                      # $PGQUEUE_DSN, else the embedded PostgreSQL
        app = App(dsn="postgresql://localhost/mydb")

        @app.task(queue="emails", max_attempts=5, timeout=30)
        def send_email(to: str, subject: str) -> dict[str, str]: ...

    Run its workers with ``pgqueue work mymodule:app``.
    """

    def __init__(self, dsn: str | None = None, *, max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
                 retention: timedelta | None = timedelta(days=7), dead_retention: timedelta | None = None,
                 pool_size: int = 4) -> None:
        if max_payload_bytes < 1:
            raise ValidationError(f"max_payload_bytes must be positive, got {max_payload_bytes}")
        self._dsn = dsn
        self.max_payload_bytes = max_payload_bytes
        self.retention = retention
        self.dead_retention = dead_retention
        self.pool_size = pool_size
        self.tasks: dict[str, Task[Any, Any]] = {}
        self.schedules: dict[str, Schedule] = {}
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] | None = None
        self._apool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] | None = None
        self._apool_loop: asyncio.AbstractEventLoop | None = None

    # -- configuration ---------------------------------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """The resolved DSN (resolving it may start the embedded server)."""
        if self._dsn is None:
            self._dsn = resolve_dsn(None)
        return self._dsn

    @overload
    def task(self, fn: Callable[Concatenate[Context, P], R], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...
    @overload
    def task(self, fn: None = None, /, *, name: str | None = None, queue: str = "default", priority: int = 0,
             max_attempts: int = 10, timeout: float | None = None, retry_base: float = 1.0,
             retry_cap: float = 3600.0, non_retryable: Sequence[type[BaseException]] = (),
             transactional: bool = False) -> _TaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None, queue: str = "default",
             priority: int = 0, max_attempts: int = 10, timeout: float | None = None, retry_base: float = 1.0,
             retry_cap: float = 3600.0, non_retryable: Sequence[type[BaseException]] = (),
             transactional: bool = False) -> Any:
        """Register a handler (``def`` or ``async def``) as a task; usable bare or with options.

        A handler whose first parameter is ``ctx: pgqueue.Context`` receives its job's context there.
        ``non_retryable`` exception types send the job to the dead letters at once, like ``pgqueue.Fatal``.
        ``transactional=True``: the handler runs in a transaction (``ctx.conn``) that commits together with the
        job's success, so its database writes happen exactly once (see ``pgqueue.once.transactional``).
        """

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = check_task_name(name or f"{f.__module__}.{f.__qualname__}".replace(".<locals>", ""))
            if task_name in self.tasks:
                raise ValidationError(f"task {task_name!r} is registered twice; give one of them name=...")
            task: Task[Any, Any] = Task(
                self, f, name=task_name, queue=check_queue(queue), priority=check_priority(priority),
                max_attempts=check_max_attempts(max_attempts), timeout=timeout,
                backoff=Backoff(base=retry_base, cap=retry_cap), non_retryable=tuple(non_retryable),
                transactional=transactional,
            )
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

    def periodic(self, cron: str, *, timezone: str = "UTC", name: str | None = None, args: Sequence[Any] = (),
                 kwargs: dict[str, Any] | None = None, missed: str = "once", max_catchup: int = 100
                 ) -> Callable[[Task[P, R]], Task[P, R]]:
        """Run a task on a cron schedule; goes above ``@app.task``::

            @app.periodic(cron="*/5 * * * *", timezone="Europe/Berlin")
            @app.task()
            def sweep() -> None: ...

        A bad expression or time zone raises ValidationError here, when the module is imported. ``missed``
        decides what happens to ticks missed while no worker ran: "skip", "once" (default) or "all".
        """
        check_cron(cron)
        check_timezone(timezone)

        def register(task: Task[P, R]) -> Task[P, R]:
            if not isinstance(task, Task):
                raise ValidationError("@app.periodic(...) goes above @app.task(...), on a task")
            task.check_arguments(list(args), kwargs or {})
            schedule = Schedule(name=name or task.name, cron=cron, task=task.name, timezone=timezone,
                                args=tuple(args), kwargs=kwargs, queue=task.queue, priority=task.priority,
                                max_attempts=task.max_attempts, missed=missed, max_catchup=max_catchup)
            if schedule.name in self.schedules:
                raise ValidationError(f"schedule {schedule.name!r} is declared twice; give one of them name=...")
            self.schedules[schedule.name] = schedule
            return task

        return register

    def sync_schedules(self) -> None:
        """Mirror this app's ``@app.periodic`` schedules into the database (workers do it when they start)."""
        for schedule in self.schedules.values():
            self._fetch("schedule_upsert", schedule.params("code"))

    def add_schedule(self, schedule: Schedule) -> None:
        """Add (or replace) a schedule kept in the database, as ``pgqueue cron add`` does."""
        if self.tasks and schedule.task not in self.tasks:
            self.get_task(schedule.task)
        self._fetch("schedule_upsert", schedule.params("cli"))

    def list_schedules(self) -> list[ScheduleRow]:
        return [ScheduleRow.from_row(row) for row in self._fetch("schedule_list", {})]

    def remove_schedule(self, name: str) -> None:
        if not self._fetch("schedule_delete", {"name": name}):
            raise JobNotFound(f"no schedule named {name!r}")

    def pause_schedule(self, name: str, paused: bool = True) -> None:
        if not self._fetch("schedule_set_paused", {"name": name, "paused": paused}):
            raise JobNotFound(f"no schedule named {name!r}")

    def get_task(self, name: str) -> Task[Any, Any]:
        try:
            return self.tasks[name]
        except KeyError:
            known = ", ".join(sorted(self.tasks)) or "none"
            raise UnknownTask(f"unknown task {name!r}; registered tasks: {known}") from None

    # -- connections -----------------------------------------------------------------------------------------

    def _sync_pool(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Any]]:
        if self._pool is None:
            dsn = self.dsn
            connect(dsn).close()  # fail fast with a clear message instead of a pool timeout
            pool: psycopg_pool.ConnectionPool[psycopg.Connection[Any]] = psycopg_pool.ConnectionPool(
                dsn, min_size=1, max_size=self.pool_size, timeout=10, open=False, name="pgqueue",
                kwargs={"autocommit": True, **connect_options(dsn)},
            )
            # Wait for the first connection. Without it the first request finds the pool empty and makes it
            # grow to two, and the pool hands out its connections in turn: every enqueue of a one-thread
            # producer then went to the other server process: 4-6% fewer one-job enqueues a second than
            # with one process kept busy (interleaved A/B runs, 7 Dec 2026).
            pool.open(wait=True, timeout=10)
            self._pool = pool
        return self._pool

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled autocommit connection to the app's database."""
        try:
            with self._sync_pool().connection() as conn:
                yield conn
        except psycopg_pool.PoolTimeout as err:
            raise DatabaseUnavailable(f"no connection to PostgreSQL at {describe(self.dsn)} within 10 s") from err

    async def _async_pool(self) -> psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]]:
        loop = asyncio.get_running_loop()
        if self._apool is None or self._apool_loop is not loop:
            dsn = self.dsn
            pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Any]] = psycopg_pool.AsyncConnectionPool(
                dsn, min_size=1, max_size=self.pool_size, timeout=10, open=False, name="pgqueue-async",
                kwargs={"autocommit": True, **connect_options(dsn)},
            )
            await pool.open(wait=True, timeout=10)  # as _sync_pool: the first request must not grow the pool
            self._apool, self._apool_loop = pool, loop
        return self._apool

    def _fetch(self, name: str, params: dict[str, Any], conn: psycopg.Connection[Any] | None = None
               ) -> list[tuple[Any, ...]]:
        """Run named query ``name`` on ``conn`` (the caller's transaction) or on a pooled connection."""
        if conn is not None:
            return _run(conn, name, params)
        with self.connection() as pooled:
            return _run(pooled, name, params)

    def close(self) -> None:
        """Close the app's connection pools."""
        self._close_effects()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        if self._apool is not None and self._apool_loop is not None and not self._apool_loop.is_closed():
            pool, self._apool = self._apool, None
            if self._apool_loop.is_running():
                self._apool_loop.create_task(pool.close())
            else:
                self._apool_loop.run_until_complete(pool.close())
        self._apool = None

    async def aclose(self) -> None:
        if self._apool is not None:
            pool, self._apool = self._apool, None
            await pool.close()
        self.close()

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- enqueue ---------------------------------------------------------------------------------------------

    def _insert_params(self, task: Task[Any, Any] | None, name: str, args: Sequence[Any], kwargs: dict[str, Any],
                       options: EnqueueOptions) -> dict[str, Any]:
        if task is not None:
            task.check_arguments(args, kwargs)
        args_text, kwargs_text = encode_payload(args, kwargs, self.max_payload_bytes)
        return {**self._option_params(task, name, options), "args": args_text, "kwargs": kwargs_text}

    def _option_params(self, task: Task[Any, Any] | None, name: str, options: EnqueueOptions) -> dict[str, Any]:
        """The insert parameters that come from the task and the options (all but the arguments), checked."""
        return {
            "task": name,
            "queue": check_queue(options.queue if options.queue is not None else (task.queue if task else "default")),
            "priority": check_priority(options.priority if options.priority is not None
                                       else (task.priority if task else 0)),
            "max_attempts": check_max_attempts(options.max_attempts if options.max_attempts is not None
                                               else (task.max_attempts if task else 10)),
            "run_at": options.run_at,
            "delay": options.delay,
            "group_key": check_key(options.group, "group", 200),
            "unique_key": check_key(options.unique_key, "unique_key", 500),
            "batch_id": options.batch_id,
            "depends_on": options.parent_ids,
            "on_parent_failure": options.on_parent_failure,
            "window": options.unique_for or 0.0,
        }

    @staticmethod
    def _inserted(params: dict[str, Any], args: Sequence[Any], kwargs: dict[str, Any],
                  row: tuple[Any, ...]) -> Job:
        id_, state, scheduled_for, created_at = row
        return Job.enqueued(id_, params["queue"], params["task"], list(args), kwargs, params["priority"], state,
                            params["max_attempts"], scheduled_for, created_at)

    def _enqueue(self, task: Task[Any, Any] | None, args: Sequence[Any], kwargs: dict[str, Any],
                 options: EnqueueOptions, conn: psycopg.Connection[Any] | None, name: str | None = None) -> Job:
        params = self._insert_params(task, name or task.name if task else name or "", args, kwargs, options)
        if options.idempotency_key is not None or options.callback_url is not None:
            return self._enqueue_once(params, args, kwargs, options, conn, _insert_one)
        if conn is not None:
            row = _insert_one(conn, params)
        else:
            with self.connection() as pooled:
                row = _insert_one(pooled, params)
        if params["unique_key"] is not None:
            return self.job(row[0], conn=conn)  # it may be the job that already held the key
        return self._inserted(params, args, kwargs, row)

    async def _enqueue_async(self, task: Task[Any, Any] | None, args: Sequence[Any], kwargs: dict[str, Any],
                             options: EnqueueOptions, conn: psycopg.AsyncConnection[Any] | None,
                             name: str | None = None) -> Job:
        params = self._insert_params(task, name or task.name if task else name or "", args, kwargs, options)
        if options.idempotency_key is not None or options.callback_url is not None:
            return await self._enqueue_once_async(params, args, kwargs, options, conn, _insert_one_async)
        if conn is not None:
            return await self._insert_async(conn, params, args, kwargs)
        try:
            async with (await self._async_pool()).connection() as pooled:
                return await self._insert_async(pooled, params, args, kwargs)
        except psycopg_pool.PoolTimeout as err:
            raise DatabaseUnavailable(f"no connection to PostgreSQL at {describe(self.dsn)} within 10 s") from err

    async def _insert_async(self, conn: psycopg.AsyncConnection[Any], params: dict[str, Any], args: Sequence[Any],
                            kwargs: dict[str, Any]) -> Job:
        row = await _insert_one_async(conn, params)
        if params["unique_key"] is not None:  # it may be the job that already held the key: read it back
            return Job.from_row((await _run_async(conn, "job_get", {"id": row[0]}))[0])
        return self._inserted(params, args, kwargs, row)

    def _enqueue_many(self, task: Task[Any, Any], calls: list[Call], conn: psycopg.Connection[Any] | None
                      ) -> list[Job]:
        if not calls:
            return []
        rows_params = self._many_params(task, calls)
        if all(p["run_at"] is None and not p["delay"] for p in rows_params):
            # Due now, the usual bulk load: COPY (see pgqueue.bulk). Later jobs go through INSERT, where the
            # database clock decides whether they are due.
            def made(i: int, id_: int, now: datetime) -> Job:
                return self._inserted(rows_params[i], calls[i].args, calls[i].kwargs, (id_, "queued", now, now))

            if conn is not None:
                return copy_jobs(conn, rows_params, made)
            with self.connection() as pooled:
                return copy_jobs(pooled, rows_params, made)
        columns = ("queue", "task", "args", "kwargs", "priority", "run_at", "delay", "max_attempts",
                   "group_key", "batch_id")
        params = {col: [p[col] for p in rows_params] for col in columns}
        rows = sorted(self._fetch("job_insert_many", params, conn))
        return [self._inserted(p, c.args, c.kwargs, row) for p, c, row in zip(rows_params, calls, rows, strict=True)]

    def _many_params(self, task: Task[Any, Any], calls: list[Call]) -> list[dict[str, Any]]:
        """Checked insert parameters of each call. Calls usually share one options object: its part of the
        parameters is worked out once."""
        by_options: dict[int, dict[str, Any]] = {}
        rows_params = []
        for call in calls:
            options = call.options
            shared = by_options.get(id(options))
            if shared is None:
                if options.unique_key is not None or options.depends_on is not None:
                    raise ValidationError("unique_key and depends_on need enqueue (one job each), not enqueue_many")
                if options.idempotency_key or options.callback_url:
                    raise ValidationError("enqueue_many takes no idempotency_key or callback_url; "
                                          "enqueue those one by one")
                shared = self._option_params(task, task.name, options)
                by_options[id(options)] = shared
            task.check_arguments(call.args, call.kwargs)
            args_text, kwargs_text = encode_payload(call.args, call.kwargs, self.max_payload_bytes)
            rows_params.append({**shared, "args": args_text, "kwargs": kwargs_text})
        return rows_params

    def enqueue(self, task: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
                queue: str | None = None, priority: int | None = None, run_at: datetime | None = None,
                delay: float | None = None, max_attempts: int | None = None, group: str | None = None,
                unique_key: str | None = None, unique_for: float | None = None,
                depends_on: Sequence[Any] | None = None, on_parent_failure: str = "cancel",
                idempotency_key: str | None = None, callback_url: str | None = None,
                conn: psycopg.Connection[Any] | None = None) -> Job:
        """Enqueue by task name, for producers that do not import the handler's code::

            app.enqueue("billing.charge", kwargs={"order": 42}, queue="billing")

        When this app has registered tasks, the name must be one of them and the arguments must fit it.
        """
        check_task_name(task)
        registered = self.get_task(task) if self.tasks else None
        options = EnqueueOptions(queue, priority, run_at, delay, max_attempts, group, unique_key, unique_for,
                                 depends_on, on_parent_failure, idempotency_key=idempotency_key,
                                 callback_url=callback_url)
        return self._enqueue(registered, list(args), dict(kwargs or {}), options, conn, name=task)

    async def enqueue_async(self, task: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
                            queue: str | None = None, priority: int | None = None, run_at: datetime | None = None,
                            delay: float | None = None, max_attempts: int | None = None, group: str | None = None,
                            unique_key: str | None = None, unique_for: float | None = None,
                            depends_on: Sequence[Any] | None = None, on_parent_failure: str = "cancel",
                            idempotency_key: str | None = None, callback_url: str | None = None,
                            conn: psycopg.AsyncConnection[Any] | None = None) -> Job:
        """``enqueue`` by task name for asyncio code; ``conn`` is then a psycopg AsyncConnection::

            job = await app.enqueue_async("billing.charge", kwargs={"order": 42}, idempotency_key="charge:42")
        """
        check_task_name(task)
        registered = self.get_task(task) if self.tasks else None
        options = EnqueueOptions(queue, priority, run_at, delay, max_attempts, group, unique_key, unique_for,
                                 depends_on, on_parent_failure, idempotency_key=idempotency_key,
                                 callback_url=callback_url)
        return await self._enqueue_async(registered, list(args), dict(kwargs or {}), options, conn, name=task)

    # -- reading and managing jobs ---------------------------------------------------------------------------

    def job(self, job_id: int, *, conn: psycopg.Connection[Any] | None = None) -> Job:
        """A job with its errors, wherever it is in its life, read from one snapshot. Raises JobNotFound."""
        if conn is not None:
            return _read_job(conn, job_id)
        with self.connection() as pooled, pooled.transaction():
            _run(pooled, "snapshot_consistent", {})
            return _read_job(pooled, job_id)

    def jobs(self, *, queue: str | None = None, state: JobState | str | None = None, task: str | None = None,
             limit: int = 50, conn: psycopg.Connection[Any] | None = None) -> list[Job]:
        """Jobs newest first, filtered by queue, state and task."""
        state_name = JobState(state).value if state is not None else None
        params = {"queue": queue, "state": state_name, "task": task, "limit": limit}
        return [Job.from_row(row) for row in self._fetch("job_list", params, conn)]

    def cancel(self, job_id: int, *, conn: psycopg.Connection[Any] | None = None) -> bool:
        """Cancel a job. One that has not started (waiting, scheduled, queued) never runs; a running one is asked
        to stop (its handler sees ``ctx.cancelled``, or an async one a CancelledError) and ends ``cancelled``.
        False if it had already finished."""
        if self._fetch("job_cancel", {"id": job_id}, conn) or self._fetch("job_cancel_running", {"id": job_id}, conn):
            return True
        self.job(job_id, conn=conn)  # JobNotFound if there is no such job
        return False

    def retry(self, *job_ids: int, task: str | None = None, queue: str | None = None, all: bool = False,
              conn: psycopg.Connection[Any] | None = None) -> int:
        """Queue dead jobs again (by id also cancelled ones), in one statement. Returns how many.

        ``app.retry(job.id)``, ``app.retry(task="billing.charge")``, ``app.retry(all=True)``.
        """
        if not (job_ids or task or queue or all):
            raise ValidationError("say which jobs to retry: ids, task=, queue= or all=True")
        states = ["dead", "cancelled"] if job_ids else ["dead"]
        params = {"ids": list(job_ids) or None, "task": task, "queue": queue, "states": states}
        return len(self._fetch("job_retry_finished", params, conn))

    def dead_letters(self, *, task: str | None = None, queue: str | None = None, ids: Sequence[int] | None = None,
                     limit: int = 100) -> list[dict[str, Any]]:
        """The dead-letter queue, newest first, with each job's last error message."""
        params = {"ids": list(ids) if ids else None, "task": task, "queue": queue, "limit": limit}
        keys = ("id", "queue", "task", "args", "kwargs", "attempt", "max_attempts", "created_at", "finished_at",
                "error_type", "error_message")
        out = []
        for row in self._fetch("job_dead_list", params):
            item = dict(zip(keys, row, strict=True))
            what = f"job {item['id']}'s arguments"
            item["args"], item["kwargs"] = from_json(item["args"], what), from_json(item["kwargs"], what)
            out.append(item)
        return out

    def delete_dead(self, *job_ids: int, task: str | None = None, queue: str | None = None,
                    all: bool = False) -> int:
        """Delete dead jobs (and their errors) for good. Returns how many."""
        if not (job_ids or task or queue or all):
            raise ValidationError("say which dead jobs to delete: ids, task=, queue= or all=True")
        params = {"ids": list(job_ids) or None, "task": task, "queue": queue}
        return int(self._fetch("job_delete_dead", params)[0][0])

    def stats(self) -> list[QueueStats]:
        """Per-queue counts and rates (the ``pgqueue.queue_stats`` view)."""
        return [QueueStats(*row) for row in self._fetch("queue_stats", {})]

    def workers(self) -> list[WorkerInfo]:
        """Registered workers (the ``pgqueue.worker_stats`` view)."""
        return [WorkerInfo(*row) for row in self._fetch("worker_list", {})]

    def prune(self, older_than: timedelta, *, states: Sequence[str] = FINISHED_PRUNABLE,
              batch: int = 10_000) -> int:
        """Delete finished jobs older than ``older_than`` in the given states, a slice at a time."""
        bad = set(states) - {"succeeded", "cancelled", "dead"}
        if bad:
            raise ValidationError(f"prune takes finished states (succeeded, cancelled, dead), got {sorted(bad)}")
        if older_than < timedelta(0):
            raise ValidationError("older_than must not be negative")
        total = 0
        while True:
            params = {"older_than": older_than.total_seconds(), "states": list(states), "limit": batch}
            deleted = int(self._fetch("job_prune", params)[0][0])
            total += deleted
            if deleted < batch:
                return total

    def parent_results(self, job_id: int) -> dict[int, Any]:
        """The results of the parents of ``job_id`` (its ``depends_on``), by parent id."""
        rows = self._fetch("job_parent_results", {"id": job_id})
        return {parent: None if result is None else from_json(result, f"job {parent}'s result")
                for parent, result in rows}

    # -- queues ------------------------------------------------------------------------------------------------

    def pause_queue(self, queue: str) -> None:
        """Stop claims from ``queue`` (running jobs finish). Takes effect at the next claim of every worker."""
        self._fetch("queue_set_paused", {"queue": check_queue(queue), "paused": True})

    def resume_queue(self, queue: str) -> None:
        self._fetch("queue_set_paused", {"queue": check_queue(queue), "paused": False})

    def configure_queue(self, queue: str, *, concurrency: int | None = None, rate: tuple[int, float] | None = None,
                        group_concurrency: int | None = None, group_rate: tuple[int, float] | None = None,
                        fair: bool = False, priority_aging: float | None = None) -> QueueSettings:
        """Set a queue's limits, replacing the previous ones (None: no limit)::

            app.configure_queue("api", concurrency=5, rate=(100, 60))     # 5 at once, 100 starts a minute
            app.configure_queue("reports", fair=True, group_concurrency=1)  # one at a time per group

        Limits are enforced at claim time in the database, across all workers and hosts.
        """
        def count(value: int | None, what: str) -> int | None:
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise ValidationError(f"{what} must be a whole number >= 0, got {value!r}")
            return value

        def per(value: tuple[int, float] | None, what: str) -> tuple[int | None, float | None]:
            if value is None:
                return None, None
            limit, period = value
            if not (isinstance(period, int | float) and period > 0):
                raise ValidationError(f"{what} period must be a positive number of seconds, got {period!r}")
            return count(limit, f"{what} limit"), float(period)

        rate_limit, rate_period = per(rate, "rate")
        group_rate_limit, group_rate_period = per(group_rate, "group_rate")
        if priority_aging is not None and not priority_aging > 0:
            raise ValidationError(f"priority_aging must be a positive number of seconds, got {priority_aging!r}")
        params = {"queue": check_queue(queue), "concurrency": count(concurrency, "concurrency"),
                  "rate_limit": rate_limit, "rate_period": rate_period,
                  "group_concurrency": count(group_concurrency, "group_concurrency"),
                  "group_rate_limit": group_rate_limit, "group_rate_period": group_rate_period, "fair": bool(fair),
                  "priority_aging": priority_aging}
        return QueueSettings(*self._fetch("queue_configure", params)[0])

    def queues(self) -> list[QueueSettings]:
        """Every queue with settings (paused, limits, fairness)."""
        return [QueueSettings(*row) for row in self._fetch("queue_settings_list", {})]

    def set_group_weight(self, queue: str, group: str, weight: float) -> None:
        """Give ``group`` a bigger (or smaller) share of a fair queue: weight 2 gets twice the claims of 1."""
        if not (isinstance(weight, int | float) and weight > 0):
            raise ValidationError(f"weight must be a positive number, got {weight!r}")
        self._fetch("group_set_weight", {"queue": check_queue(queue), "group_key": check_key(group, "group", 200),
                                         "weight": float(weight)})

    # -- batches -----------------------------------------------------------------------------------------------

    def create_batch(self, name: str, calls: Sequence[Call], *, on_complete: Call | None = None,
                     conn: psycopg.Connection[Any] | None = None) -> Batch:
        """Enqueue ``calls`` (``task.call(...)``) as one named batch; see ``pgqueue.workflow``."""
        return create_batch(self, name, calls, on_complete=on_complete, conn=conn)

    def batch(self, batch_id: int) -> BatchInfo:
        """A batch's counts per state and progress. Raises JobNotFound if there is no such batch."""
        rows = self._fetch("batch_get", {"id": batch_id})
        if not rows:
            raise JobNotFound(f"no batch with id {batch_id}")
        id_, name, total, callback_job_id, created_at, counts = rows[0]
        return BatchInfo(id_, name, total, dict(counts or {}), callback_job_id, created_at)

    def migrate(self) -> list[int]:
        """Apply pending schema migrations; returns the versions applied."""
        from pgqueue.migrate import migrate

        return migrate(self.dsn)


def _read_job(conn: psycopg.Connection[Any], job_id: int) -> Job:
    rows = _run(conn, "job_get", {"id": job_id})
    if not rows:
        raise JobNotFound(f"no job with id {job_id}")
    errors = tuple(JobError(*row) for row in _run(conn, "job_errors_get", {"id": job_id}))
    return Job.from_row(rows[0], errors)


def _run(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    try:
        cur = conn.execute(q(name), params)
        return cur.fetchall() if has_rows(cur) else []
    except PgQueueError:
        raise
    except psycopg.Error as err:
        raise from_psycopg(err) from err


async def _run_async(conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any]
                     ) -> list[tuple[Any, ...]]:
    try:
        cur = await conn.execute(q(name), params)
        return await cur.fetchall() if has_rows(cur) else []
    except psycopg.Error as err:
        raise from_psycopg(err) from err


# How many times an enqueue with a unique key retries when the key's holder finishes under its feet.
_UNIQUE_ATTEMPTS = 5


def _insert_one(conn: psycopg.Connection[Any], params: dict[str, Any]) -> tuple[Any, ...]:
    """Insert one job by the path its options need; returns (id, state, scheduled_for, created_at)."""
    if params["depends_on"] is not None:
        return _run(conn, "job_insert_dependent", params)[0]
    if params["unique_key"] is None:
        return _run(conn, "job_insert", params)[0]
    for _ in range(_UNIQUE_ATTEMPTS):
        # A job that finished within the window holds the key as much as a live one. Otherwise the insert waits
        # for a concurrent holder to commit or roll back, and the next statement (a fresh snapshot) sees it.
        rows = (params["window"] and _run(conn, "job_unique_holder", params)) \
            or _run(conn, "job_insert_unique", params) or _run(conn, "job_unique_holder", params)
        if rows:
            return rows[0]
    raise ValidationError(f"unique key {params['unique_key']!r} kept changing hands; try again")


async def _insert_one_async(conn: psycopg.AsyncConnection[Any], params: dict[str, Any]) -> tuple[Any, ...]:
    if params["depends_on"] is not None:
        return (await _run_async(conn, "job_insert_dependent", params))[0]
    if params["unique_key"] is None:
        return (await _run_async(conn, "job_insert", params))[0]
    for _ in range(_UNIQUE_ATTEMPTS):
        rows = ((params["window"] and await _run_async(conn, "job_unique_holder", params))
                or await _run_async(conn, "job_insert_unique", params)
                or await _run_async(conn, "job_unique_holder", params))
        if rows:
            return rows[0]
    raise ValidationError(f"unique key {params['unique_key']!r} kept changing hands; try again")
