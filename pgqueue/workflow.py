"""Workflows built on dependencies: chains, groups (fan-out, fan-in) and batches.

A job enqueued with ``depends_on=[...]`` waits (state ``waiting``) until every parent has finished, and is
queued in the same transaction that finished its last parent. If a parent ends dead or cancelled, the child is
cancelled (``on_parent_failure="cancel"``, the default, which cascades) or runs anyway (``"run"``). Cycles are
impossible by construction: parents must exist before their children. ::

    from pgqueue import chain, group

    jobs = chain(fetch.call(url), parse.call(), store.call()).enqueue()   # each after the one before
    g = group(*[resize.call(i) for i in ids]).then(zip_all.call()).enqueue()   # fan out, then fan in
    batch = app.create_batch("import", [load.call(row) for row in rows], on_complete=report.call())

A child reads its parents' results with ``ctx.parent_results()``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg

from pgqueue.errors import ValidationError
from pgqueue.job import Job
from pgqueue.task import Call, EnqueueOptions

if TYPE_CHECKING:
    from pgqueue.app import App


def _app_of(calls: Sequence[Call]) -> App:
    if not calls:
        raise ValidationError("a workflow needs at least one task.call(...)")
    apps = {id(c.task.app) for c in calls if c.task is not None}
    if any(c.task is None for c in calls) or len(apps) != 1:
        raise ValidationError("workflow steps must be task.call(...) of tasks of one App")
    task = calls[0].task
    assert task is not None
    return task.app


@contextmanager
def _transaction(app: App, conn: psycopg.Connection[Any] | None) -> Iterator[psycopg.Connection[Any]]:
    """The caller's connection (their transaction decides), or a pooled one in a transaction of our own."""
    if conn is not None:
        yield conn
        return
    with app.connection() as pooled, pooled.transaction():
        yield pooled


def _enqueue(call: Call, conn: psycopg.Connection[Any], **options: Any) -> Job:
    task = call.task
    assert task is not None
    merged = dataclasses.replace(call.options, **options)
    return task.app._enqueue(task, call.args, dict(call.kwargs), merged, conn)


@dataclass
class Chain:
    """Steps that run one after another; a step runs only if the one before succeeded (else it is cancelled,
    and so are the steps after it)."""

    calls: list[Call]

    def then(self, *calls: Call) -> Chain:
        return Chain([*self.calls, *calls])

    def enqueue(self, *, conn: psycopg.Connection[Any] | None = None) -> list[Job]:
        """Enqueue every step, atomically; returns the jobs in order."""
        app = _app_of(self.calls)
        jobs: list[Job] = []
        with _transaction(app, conn) as tx:
            for call in self.calls:
                jobs.append(_enqueue(call, tx, depends_on=[jobs[-1].id]) if jobs else _enqueue(call, tx))
        return jobs


@dataclass
class Group:
    """Jobs that run independently (fan-out), optionally followed by one job that runs when all have finished
    (fan-in)."""

    calls: list[Call]
    callback: Call | None = None
    run_callback_on_failure: bool = False

    def then(self, call: Call, *, on_failure: str = "cancel") -> Group:
        """The fan-in job; ``on_failure="run"`` runs it even if some members end dead or cancelled."""
        if on_failure not in ("cancel", "run"):
            raise ValidationError(f"on_failure must be 'cancel' or 'run', got {on_failure!r}")
        return Group(self.calls, call, on_failure == "run")

    def enqueue(self, *, conn: psycopg.Connection[Any] | None = None) -> tuple[list[Job], Job | None]:
        """Enqueue the members and the fan-in job, atomically; returns (members, fan-in job or None)."""
        app = _app_of(self.calls + ([self.callback] if self.callback else []))
        with _transaction(app, conn) as tx:
            members = [_enqueue(call, tx) for call in self.calls]
            last = None
            if self.callback is not None:
                last = _enqueue(self.callback, tx, depends_on=[j.id for j in members],
                                on_parent_failure="run" if self.run_callback_on_failure else "cancel")
        return members, last


def chain(*calls: Call) -> Chain:
    """``chain(a.call(), b.call(), c.call())``: b after a succeeded, c after b."""
    return Chain(list(calls))


def group(*calls: Call) -> Group:
    """``group(a.call(1), a.call(2)).then(done.call())``: the members in parallel, then ``done``."""
    return Group(list(calls))


@dataclass(frozen=True)
class Batch:
    """A created batch: its id, its jobs, and its completion callback job (if any)."""

    id: int
    jobs: list[Job]
    callback: Job | None


def create_batch(app: App, name: str, calls: Sequence[Call], *, on_complete: Call | None = None,
                 conn: psycopg.Connection[Any] | None = None) -> Batch:
    """Enqueue ``calls`` as one named batch, atomically. ``on_complete`` runs once when every job of the batch
    has finished (succeeded, dead or cancelled), with ``batch_id=`` added to its keyword arguments; its
    handler reads the summary with ``app.batch(batch_id)``."""
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise ValidationError("a batch needs a name of 1-200 characters")
    if not calls:
        raise ValidationError("a batch needs at least one task.call(...)")
    _app_of(list(calls) + ([on_complete] if on_complete else []))
    with _transaction(app, conn) as tx:
        batch_id = int(app._fetch("batch_create", {"name": name, "total": len(calls)}, tx)[0][0])
        # One enqueue_many per task; the jobs come back in the order of ``calls`` whatever the grouping.
        placed: list[Job | None] = [None] * len(calls)
        by_task: dict[int, list[int]] = {}
        for i, call in enumerate(calls):
            by_task.setdefault(id(call.task), []).append(i)
        # Calls that shared an options object still share one once tagged: enqueue_many works out the parameters
        # of each distinct options object once, and a copy per call would make that once per job.
        tagged_options: dict[int, EnqueueOptions] = {}
        for call in calls:
            if id(call.options) not in tagged_options:
                tagged_options[id(call.options)] = dataclasses.replace(call.options, batch_id=batch_id)
        for positions in by_task.values():
            task = calls[positions[0]].task
            assert task is not None
            tagged = [dataclasses.replace(calls[i], options=tagged_options[id(calls[i].options)]) for i in positions]
            for i, job in zip(positions, task.enqueue_many(tagged, conn=tx), strict=True):
                placed[i] = job
        jobs = [job for job in placed if job is not None]
        callback = None
        if on_complete is not None:
            with_id = dataclasses.replace(on_complete, kwargs={**on_complete.kwargs, "batch_id": batch_id})
            callback = _enqueue(with_id, tx, depends_on=[j.id for j in jobs], on_parent_failure="run")
            app._fetch("batch_set_callback", {"id": batch_id, "callback_job_id": callback.id}, tx)
    return Batch(batch_id, jobs, callback)
