"""Recording outcomes: successes acknowledged in batches, failures one statement each, all on one connection.

Batching is natural rather than timed: while one flush is in flight, outcomes that arrive wait and go together
in the next statement, so an idle worker acknowledges at once and a busy one acknowledges hundreds of jobs per
round trip. Each submission resolves to whether the database accepted it: False means the attempt was fenced
off (its lease was taken over, or the job was handed back), and the outcome changed nothing.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from pgqueue.connection import DedicatedConnection
from pgqueue.errors import DatabaseUnavailable, PgQueueError
from pgqueue.executor import ClaimedJob, Outcome
from pgqueue.queries import q

log = logging.getLogger("pgqueue.completer")

MAX_BATCH = 1000


@dataclass
class _Pending:
    job: ClaimedJob
    outcome: Outcome
    done: Callable[[bool], None]  # told once whether the database accepted the outcome
    answered: bool = False


class Completer:
    def __init__(self, conn: DedicatedConnection, worker_id: uuid.UUID) -> None:
        self._conn = conn
        self._worker_id = worker_id
        self._queue: list[_Pending] = []
        self._has_work = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def submit(self, job: ClaimedJob, outcome: Outcome, done: Callable[[bool], None]) -> None:
        """Queue ``outcome`` for writing; ``done(accepted)`` is called once it is written (or given up on).

        A callback rather than a future: a busy worker submits thousands of outcomes a second, and nothing
        needs to wait on one in particular.
        """
        self._queue.append(_Pending(job, outcome, done))
        self._idle.clear()
        self._has_work.set()

    async def drained(self) -> None:
        """Wait until every submitted outcome has been written (or given up on)."""
        await self._idle.wait()

    async def run(self) -> None:
        while True:
            await self._has_work.wait()
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            if not self._queue:
                self._has_work.clear()
            await self._write(batch)
            if not self._queue:
                self._idle.set()

    async def _write(self, batch: list[_Pending]) -> None:
        delay = 0.05
        while batch:
            try:
                batch = await self._write_once(batch)
            except DatabaseUnavailable as err:
                # Keep the outcomes and try again: the jobs stay leased to us while heartbeats get through,
                # and if the lease runs out first the database fences these writes off anyway.
                log.warning("could not record %d outcomes, retrying: %s", len(batch), err)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _write_once(self, batch: list[_Pending]) -> list[_Pending]:
        """Write what it can; return what is still to be written."""
        successes = [p for p in batch if p.outcome.state == "succeeded"]
        if successes:
            # Array literals joined here rather than lists: psycopg dumps a list element by element, which cost
            # more client time than the statement's round trip.
            params = {
                "ids": "{" + ",".join([str(p.job.id) for p in successes]) + "}",
                "attempts": "{" + ",".join([str(p.job.attempt) for p in successes]) + "}",
                "results": "{" + ",".join([_element(p.outcome.result) for p in successes]) + "}",
                "worker_id": self._worker_id,
            }
            rows = await self._fetch("job_complete_many", params, successes)
            if rows is None:
                return batch
            done = {row[0] for row in rows}
            for p in successes:
                _resolve(p, p.job.id in done)
        rest = [p for p in batch if p.outcome.state != "succeeded"]
        for i, p in enumerate(rest):
            name, params = p.outcome.statement(p.job, self._worker_id)
            rows = await self._fetch(name, params, [p])
            if rows is None:
                return rest[i:]
            _resolve(p, bool(rows))
        return []

    async def _fetch(self, name: str, params: dict[str, object], items: list[_Pending]
                     ) -> list[tuple[object, ...]] | None:
        try:
            return await self._conn.fetch(q(name), params)
        except DatabaseUnavailable:
            raise
        except PgQueueError as err:
            # Not an outage, so retrying the same statement cannot help. The jobs stay running in the
            # database and the lease reaper hands them on; say loudly that this happened.
            log.error("could not record outcome of jobs %s: %s", [p.job.id for p in items], err)
            for p in items:
                _resolve(p, False)
            return []


def _element(json_text: str | None) -> str:
    """One JSON text as an element of a PostgreSQL array literal."""
    if json_text is None:
        return "NULL"
    if json_text == "null":
        return '"null"'
    return '"' + json_text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _resolve(p: _Pending, accepted: bool) -> None:
    if p.answered:
        return
    p.answered = True
    try:
        p.done(accepted)
    except Exception:  # the worker's bookkeeping; one failing must not stop the others being told
        log.exception("could not handle the outcome of job %s", p.job.id)
