"""The App: where tasks are registered and jobs are enqueued, read, retried and cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Concatenate, Protocol, TypeVar, overload

import psycopg
import psycopg_pool

from pgqueue.connection import connect, connect_options, describe, resolve_dsn
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
    check_max_attempts,
    check_priority,
    check_queue,
    check_task_name,
    encode_payload,
)
from pgqueue.queries import q
from pgqueue.retry import Backoff
from pgqueue.task import NO_OPTIONS, Call, Context, EnqueueOptions, P, R, Task

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


class App:
    """A pgqueue application: its tasks and its database.

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
             retry_cap: float = 3600.0, non_retryable: Sequence[type[BaseException]] = ()) -> _TaskDecorator: ...

    def task(self, fn: Callable[..., Any] | None = None, /, *, name: str | None = None, queue: str = "default",
             priority: int = 0, max_attempts: int = 10, timeout: float | None = None, retry_base: float = 1.0,
             retry_cap: float = 3600.0, non_retryable: Sequence[type[BaseException]] = ()) -> Any:
        """Register a handler (``def`` or ``async def``) as a task; usable bare or with options.

        A handler whose first parameter is ``ctx: pgqueue.Context`` receives its job's context there.
        ``non_retryable`` exception types send the job to the dead letters at once, like ``pgqueue.Fatal``.
        """

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = check_task_name(name or f"{f.__module__}.{f.__qualname__}".replace(".<locals>", ""))
            if task_name in self.tasks:
                raise ValidationError(f"task {task_name!r} is registered twice; give one of them name=...")
            task: Task[Any, Any] = Task(
                self, f, name=task_name, queue=check_queue(queue), priority=check_priority(priority),
                max_attempts=check_max_attempts(max_attempts), timeout=timeout,
                backoff=Backoff(base=retry_base, cap=retry_cap), non_retryable=tuple(non_retryable),
            )
            self.tasks[task_name] = task
            return task

        return register(fn) if fn is not None else register

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
            self._pool = psycopg_pool.ConnectionPool(
                dsn, min_size=1, max_size=self.pool_size, timeout=10, open=True, name="pgqueue",
                kwargs={"autocommit": True, **connect_options(dsn)},
            )
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
            await pool.open()
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
        params = self._option_params(task, name, options)
        params["args"], params["kwargs"] = encode_payload(args, kwargs, self.max_payload_bytes)
        return params

    @staticmethod
    def _option_params(task: Task[Any, Any] | None, name: str, options: EnqueueOptions) -> dict[str, Any]:
        """Where the job goes and how it runs: the options given, else the task's defaults, checked."""
        return {
            "task": name,
            "queue": check_queue(options.queue if options.queue is not None else (task.queue if task else "default")),
            "priority": check_priority(options.priority if options.priority is not None
                                       else (task.priority if task else 0)),
            "max_attempts": check_max_attempts(options.max_attempts if options.max_attempts is not None
                                               else (task.max_attempts if task else 10)),
            "run_at": options.run_at,
            "delay": options.delay,
        }

    @staticmethod
    def _inserted(params: dict[str, Any], args: Sequence[Any], kwargs: dict[str, Any],
                  row: tuple[Any, ...]) -> Job:
        id_, state, scheduled_for, created_at = row
        return Job(id=id_, queue=params["queue"], task=params["task"], args=list(args), kwargs=kwargs,
                   priority=params["priority"], state=JobState(state), attempt=0,
                   max_attempts=params["max_attempts"], scheduled_for=scheduled_for, created_at=created_at)

    def _enqueue(self, task: Task[Any, Any] | None, args: Sequence[Any], kwargs: dict[str, Any],
                 options: EnqueueOptions, conn: psycopg.Connection[Any] | None, name: str | None = None) -> Job:
        params = self._insert_params(task, name or task.name if task else name or "", args, kwargs, options)
        rows = self._fetch("job_insert", params, conn)
        return self._inserted(params, args, kwargs, rows[0])

    async def _enqueue_async(self, task: Task[Any, Any], args: Sequence[Any], kwargs: dict[str, Any],
                             options: EnqueueOptions, conn: psycopg.AsyncConnection[Any] | None) -> Job:
        params = self._insert_params(task, task.name, args, kwargs, options)
        if conn is not None:
            rows = await _run_async(conn, "job_insert", params)
        else:
            try:
                async with (await self._async_pool()).connection() as pooled:
                    rows = await _run_async(pooled, "job_insert", params)
            except psycopg_pool.PoolTimeout as err:
                raise DatabaseUnavailable(f"no connection to PostgreSQL at {describe(self.dsn)} "
                                          "within 10 s") from err
        return self._inserted(params, args, kwargs, rows[0])

    def _enqueue_many(self, task: Task[Any, Any], calls: list[Call], conn: psycopg.Connection[Any] | None
                      ) -> list[Job]:
        if not calls:
            return []
        rows_params = self._bulk_params(task, calls)
        for p in rows_params:
            if p["delay"] is not None:
                raise ValidationError("enqueue_many takes run_at, not delay, per job")
        if any(p["run_at"] is not None for p in rows_params):
            # Whether a run_at is due is the database clock's call: the INSERT ... SELECT decides it.
            columns = ("queue", "task", "args", "kwargs", "priority", "run_at", "max_attempts")
            params = {col: [p[col] for p in rows_params] for col in columns}
            rows = sorted(self._fetch("job_insert_many", params, conn))
            return [self._inserted(p, c.args, c.kwargs, row)
                    for p, c, row in zip(rows_params, calls, rows, strict=True)]
        if conn is not None:
            now, ids = self._copy_in(conn, rows_params)
        else:
            with self.connection() as pooled:
                now, ids = self._copy_in(pooled, rows_params)
        return _queued_jobs(rows_params, calls, ids, now)

    def _bulk_params(self, task: Task[Any, Any], calls: list[Call]) -> list[dict[str, Any]]:
        """Insert parameters of every call; the task's defaults are checked once, not once per job."""
        base = self._option_params(task, task.name, NO_OPTIONS)
        out = []
        for c in calls:
            if c.options is NO_OPTIONS:
                task.check_arguments(c.args, c.kwargs)
                p = base.copy()
                p["args"], p["kwargs"] = encode_payload(c.args, c.kwargs, self.max_payload_bytes)
            else:
                p = self._insert_params(task, task.name, c.args, c.kwargs, c.options)
            out.append(p)
        return out

    @staticmethod
    def _copy_in(conn: psycopg.Connection[Any], rows: list[dict[str, Any]]) -> tuple[datetime, list[int]]:
        """COPY due jobs in, in one transaction (the caller's when it has one open). Returns (now(), ids)."""
        own = conn.transaction() if conn.autocommit else contextlib.nullcontext()
        try:
            with own, conn.cursor(binary=True) as cur:
                cur.execute(q("job_ids_take"), {"n": len(rows)})
                taken = cur.fetchone()
                assert taken is not None
                now, ids = taken
                with cur.copy(q("job_copy_in")) as copy:
                    for id_, p in zip(ids, rows, strict=True):
                        copy.write_row((id_, p["queue"], p["task"], p["args"], p["kwargs"], p["priority"],
                                        p["max_attempts"]))
        except PgQueueError:
            raise
        except psycopg.Error as err:
            raise from_psycopg(err) from err
        return now, ids

    def enqueue(self, task: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None, *,
                queue: str | None = None, priority: int | None = None, run_at: datetime | None = None,
                delay: float | None = None, max_attempts: int | None = None,
                conn: psycopg.Connection[Any] | None = None) -> Job:
        """Enqueue by task name, for producers that do not import the handler's code::

            app.enqueue("billing.charge", kwargs={"order": 42}, queue="billing")

        When this app has registered tasks, the name must be one of them and the arguments must fit it.
        """
        check_task_name(task)
        registered = self.get_task(task) if self.tasks else None
        options = EnqueueOptions(queue, priority, run_at, delay, max_attempts)
        return self._enqueue(registered, list(args), dict(kwargs or {}), options, conn, name=task)

    # -- reading and managing jobs ---------------------------------------------------------------------------

    def job(self, job_id: int, *, conn: psycopg.Connection[Any] | None = None) -> Job:
        """A job with its errors, wherever it is in its life. Raises JobNotFound."""
        rows = self._fetch("job_get", {"id": job_id}, conn)
        if not rows:
            raise JobNotFound(f"no job with id {job_id}")
        errors = tuple(JobError(*row) for row in self._fetch("job_errors_get", {"id": job_id}, conn))
        return Job.from_row(rows[0], errors)

    def jobs(self, *, queue: str | None = None, state: JobState | str | None = None, task: str | None = None,
             limit: int = 50, conn: psycopg.Connection[Any] | None = None) -> list[Job]:
        """Jobs newest first, filtered by queue, state and task."""
        state_name = JobState(state).value if state is not None else None
        params = {"queue": queue, "state": state_name, "task": task, "limit": limit}
        return [Job.from_row(row) for row in self._fetch("job_list", params, conn)]

    def cancel(self, job_id: int, *, conn: psycopg.Connection[Any] | None = None) -> bool:
        """Cancel a scheduled or queued job so it never runs. False if it had already started or finished."""
        if self._fetch("job_cancel", {"id": job_id}, conn):
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
            item["args"], item["kwargs"] = json.loads(item["args"]), json.loads(item["kwargs"])
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

    def migrate(self) -> list[int]:
        """Apply pending schema migrations; returns the versions applied."""
        from pgqueue.migrate import migrate

        return migrate(self.dsn)


def _queued_jobs(rows: list[dict[str, Any]], calls: list[Call], ids: list[int], now: datetime) -> list[Job]:
    """The Jobs a bulk COPY made. Built from one template: a frozen dataclass's __init__ sets its 17 fields one
    by one through object.__setattr__, which would cost more than the COPY itself at 100,000 jobs."""
    template = Job(id=0, queue="", task="", args=[], kwargs={}, priority=0, state=JobState.QUEUED, attempt=0,
                   max_attempts=1, scheduled_for=now, created_at=now).__dict__
    jobs = []
    for p, c, id_ in zip(rows, calls, ids, strict=True):
        job = object.__new__(Job)
        fields = job.__dict__
        fields.update(template)
        fields.update(id=id_, queue=p["queue"], task=p["task"], args=list(c.args), kwargs=c.kwargs,
                      priority=p["priority"], max_attempts=p["max_attempts"])
        jobs.append(job)
    return jobs


def _run(conn: psycopg.Connection[Any], name: str, params: dict[str, Any]) -> list[tuple[Any, ...]]:
    try:
        cur = conn.execute(q(name), params)
        return cur.fetchall() if cur.description else []
    except PgQueueError:
        raise
    except psycopg.Error as err:
        raise from_psycopg(err) from err


async def _run_async(conn: psycopg.AsyncConnection[Any], name: str, params: dict[str, Any]
                     ) -> list[tuple[Any, ...]]:
    try:
        cur = await conn.execute(q(name), params)
        return await cur.fetchall() if cur.description else []
    except psycopg.Error as err:
        raise from_psycopg(err) from err
