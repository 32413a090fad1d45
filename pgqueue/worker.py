"""The worker: claims jobs, runs them, renews their leases, records their outcomes.

One asyncio loop per process. ``async def`` handlers run on the loop; plain ``def`` handlers run in a thread
pool; ``concurrency`` bounds both together. Connections, each with one job so none waits on another:

- claim: the producer's ``FOR UPDATE SKIP LOCKED`` claims, never more jobs than free slots;
- complete: the completer's batched acknowledgements and failure records;
- heartbeat: lease renewal and the worker's row, so heartbeats go out whatever else is busy;
- maintenance: promotion of due jobs, the lease reaper, pruning;
- listen: LISTEN for enqueues (see ``notifier``).

Shutdown (SIGTERM or SIGINT, or ``stop()``): stop claiming, let running jobs finish for up to
``drain_timeout`` seconds, then hand every unfinished job back to the queue at once (not after a lease
timeout) and leave. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgqueue.completer import Completer
from pgqueue.connection import DedicatedConnection, connect
from pgqueue.errors import DatabaseUnavailable, PgQueueError, ValidationError
from pgqueue.executor import ClaimedJob, Outcome, execute
from pgqueue.job import check_queue
from pgqueue.maintenance import Maintenance, MaintenanceConfig
from pgqueue.migrate import check_current
from pgqueue.notifier import Notifier
from pgqueue.queries import q

if TYPE_CHECKING:
    from pgqueue.app import App

log = logging.getLogger("pgqueue.worker")


@dataclass
class WorkerConfig:
    """How a worker runs. Times are in seconds.

    ``lease``: how long a claimed job is ours without a heartbeat; ``heartbeat``: how often leases are renewed
    (default lease/3); ``poll_interval``: the safety poll when no notification comes; ``reap_interval``: how
    often expired leases are looked for (default: the heartbeat).
    """

    queues: list[str] | None = None
    concurrency: int = 10
    lease: float = 30.0
    heartbeat: float | None = None
    poll_interval: float = 5.0
    drain_timeout: float = 30.0
    promote_interval: float = 1.0
    reap_interval: float | None = None
    claim_batch: int = 100

    def __post_init__(self) -> None:
        if self.queues is not None:
            self.queues = [check_queue(name) for name in self.queues] or None
        if self.concurrency < 1:
            raise ValidationError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.lease <= 0:
            raise ValidationError(f"lease must be positive, got {self.lease}")
        if self.heartbeat is None:
            self.heartbeat = self.lease / 3
        if not 0 < self.heartbeat < self.lease:
            raise ValidationError(f"heartbeat ({self.heartbeat} s) must be positive and shorter than the lease "
                                  f"({self.lease} s)")
        for name in ("poll_interval", "promote_interval"):
            if getattr(self, name) <= 0:
                raise ValidationError(f"{name} must be positive, got {getattr(self, name)}")
        if self.drain_timeout < 0:
            raise ValidationError(f"drain_timeout must not be negative, got {self.drain_timeout}")
        if self.reap_interval is None:
            self.reap_interval = self.heartbeat


class _HandlerThreads(ThreadPoolExecutor):
    """The pool for sync handlers, counting the calls still running (a thread cannot be stopped, only counted)."""

    def __init__(self, max_workers: int) -> None:
        super().__init__(max_workers=max_workers, thread_name_prefix="pgqueue-job")
        self._count_lock = threading.Lock()
        self.active = 0

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        with self._count_lock:
            self.active += 1
        future = super().submit(fn, *args, **kwargs)
        future.add_done_callback(self._finished)
        return future

    def _finished(self, _: object) -> None:
        with self._count_lock:
            self.active -= 1


@dataclass
class _Running:
    job: ClaimedJob
    task: asyncio.Task[None] | None = None
    acking: bool = False  # its outcome is with the completer: the database, not the handler, decides now
    lost: bool = False  # the heartbeat found its lease taken over
    released: bool = False  # shutdown handed it back


@dataclass
class WorkerStats:
    claimed: int = 0
    done: int = 0
    failed: int = 0
    fenced: int = 0
    wakeups: int = 0
    extra: dict[str, int] = field(default_factory=dict)


class Worker:
    """Runs jobs of ``app``. ``await Worker(app, WorkerConfig(...)).run()``; the CLI is ``pgqueue work``."""

    def __init__(self, app: App, config: WorkerConfig | None = None) -> None:
        self.app = app
        self.config = config or WorkerConfig()
        self.id = uuid.uuid4()
        self.stats = WorkerStats()
        self._running: dict[int, _Running] = {}
        self._acks_pending = 0
        self._more = True
        self._stop_requests = 0
        # Created in run(): asyncio primitives belong to the loop that runs the worker.
        self._wake: asyncio.Event
        self._stopping: asyncio.Event
        self._forced: asyncio.Event
        self._slot_free: asyncio.Event
        self.started: asyncio.Event | None = None
        # Set (from the worker's loop) once it claims; lets other threads wait for it, as tests do.
        self.ready = threading.Event()
        self.notifier: Notifier | None = None

    # -- control ---------------------------------------------------------------------------------------------

    def stop(self, force: bool = False) -> None:
        """Ask the worker to drain and leave; a second call (or ``force``) stops waiting for running jobs."""
        self._stop_requests += 2 if force else 1
        if not hasattr(self, "_stopping"):
            return
        self._stopping.set()
        self._wake.set()
        if self._stop_requests >= 2:
            self._forced.set()

    # -- main ------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run until stopped. Raises SchemaNotMigrated or DatabaseUnavailable if it cannot start."""
        cfg = self.config
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._forced = asyncio.Event()
        self._slot_free = asyncio.Event()
        self.started = self.started or asyncio.Event()
        if self._stop_requests:
            self._stopping.set()
            if self._stop_requests >= 2:
                self._forced.set()
        dsn = self.app.dsn
        await asyncio.to_thread(self._check_schema, dsn)

        self._claim_conn = DedicatedConnection(dsn, "claim")
        self._heartbeat_conn = DedicatedConnection(dsn, "heartbeat")
        maintenance_conn = DedicatedConnection(dsn, "maintenance")
        completer_conn = DedicatedConnection(dsn, "complete")
        self._completer = Completer(completer_conn, self.id)
        self.maintenance = Maintenance(maintenance_conn, MaintenanceConfig(
            promote_interval=cfg.promote_interval, reap_interval=float(cfg.reap_interval or cfg.lease),
            stale_worker_after=max(cfg.lease * 3, 60.0), retention=self.app.retention,
            dead_retention=self.app.dead_retention,
        ))
        self.notifier = Notifier(dsn, self._on_notify)
        self._threads = _HandlerThreads(cfg.concurrency)
        await self._register()
        background = [
            asyncio.create_task(self.notifier.run(), name="pgqueue-notifier"),
            asyncio.create_task(self._completer.run(), name="pgqueue-completer"),
            asyncio.create_task(self._heartbeat_loop(), name="pgqueue-heartbeat"),
            asyncio.create_task(self.maintenance.run(self._stopping), name="pgqueue-maintenance"),
        ]
        log.info("worker %s started: queues=%s concurrency=%d lease=%ss", self.id,
                 ",".join(cfg.queues) if cfg.queues else "*", cfg.concurrency, cfg.lease)
        self.started.set()
        self.ready.set()
        try:
            await self._produce()
            await self._drain()
        finally:
            await self._leave(background, [completer_conn, maintenance_conn])

    def _check_schema(self, dsn: str) -> None:
        with connect(dsn) as conn:
            check_current(conn)

    async def _register(self) -> None:
        cfg = self.config
        await self._heartbeat_conn.fetch(q("worker_register"), {
            "id": self.id, "host": socket.gethostname(), "pid": os.getpid(), "queues": cfg.queues,
            "concurrency": cfg.concurrency,
        })

    # -- claiming --------------------------------------------------------------------------------------------

    def _on_notify(self, queue: str | None) -> None:
        queues = self.config.queues
        if queue is None or queues is None or queue in queues:
            self.stats.wakeups += 1
            self._more = True
            self._wake.set()

    async def _produce(self) -> None:
        cfg = self.config
        delay = 0.05
        while not self._stopping.is_set():
            self._wake.clear()
            # Jobs whose handler finished but whose outcome is not yet recorded hold no slot, but at most
            # `concurrency` of them may wait before claiming stops, so a slow database is not outrun.
            free = cfg.concurrency - len(self._running) - max(0, self._acks_pending - cfg.concurrency)
            if free > 0 and self._more:
                asked = min(free, cfg.claim_batch)
                try:
                    jobs = await self._claim(asked)
                    delay = 0.05
                except PgQueueError as err:
                    log.warning("claim failed, retrying in %.2fs: %s", delay, err)
                    await self._sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                for job in jobs:
                    self._start(job)
                self._more = len(jobs) == asked
                if self._more and len(self._running) < cfg.concurrency:
                    continue
            await self._sleep(cfg.poll_interval, poll=True)

    async def _sleep(self, seconds: float, poll: bool = False) -> None:
        """Sleep until woken (notification, free slot, stop) or ``seconds`` pass; a timeout is the safety poll."""
        try:
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        except asyncio.TimeoutError:
            if poll:
                self._more = True

    async def _claim(self, limit: int) -> list[ClaimedJob]:
        cfg = self.config
        params: dict[str, Any] = {"limit": limit, "worker_id": self.id, "lease": cfg.lease}
        if cfg.queues:
            params["queues"] = cfg.queues
            rows = await self._claim_conn.fetch(q("job_claim_queues"), params)
        else:
            rows = await self._claim_conn.fetch(q("job_claim_any"), params)
        self.stats.claimed += len(rows)
        return [ClaimedJob._make(row) for row in rows]

    # -- running ---------------------------------------------------------------------------------------------

    def _start(self, job: ClaimedJob) -> None:
        record = _Running(job)
        self._running[job.id] = record
        record.task = asyncio.create_task(self._run_job(record), name=f"pgqueue-job-{job.id}")

    async def _run_job(self, record: _Running) -> None:
        job = record.job
        try:
            execution = await execute(self.app, job, self.id, self._threads)
            if record.lost or record.released:
                return  # the database has already moved on; what we would write would be fenced off anyway
            outcome = execution.outcome
            record.acking = True
            self._acks_pending += 1
            accepted = self._completer.submit(job, outcome)
            if execution.overrun is None:
                # The handler is done, so its slot is free now while the completer records the outcome in a
                # batch: claiming the next jobs overlaps with acknowledging these. The job stays leased to us
                # (and fenced) until the acknowledgement lands; _produce bounds how many may wait for one.
                accepted.add_done_callback(functools.partial(self._acknowledged, job, outcome))
                return
            self._acknowledged(job, outcome, accepted, await accepted)
            # The thread of a timed-out sync handler still runs: keep its slot until it returns.
            await asyncio.wait({execution.overrun})
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug of ours; the job stays leased and the reaper hands it on
            log.exception("internal error while running job %s", job.id)
        finally:
            self._running.pop(job.id, None)
            if self._more or self._stopping.is_set():
                self._wake.set()
            self._slot_free.set()

    def _acknowledged(self, job: ClaimedJob, outcome: Outcome, accepted: asyncio.Future[bool],
                      result: bool | None = None) -> None:
        """Count (and log) an outcome once the database has taken it or fenced it off."""
        self._acks_pending -= 1
        if self._more and self._acks_pending == self.config.concurrency:
            self._wake.set()  # the producer may have held back for acknowledgements to catch up
        if result is None:
            if accepted.cancelled():
                return
            result = accepted.result()
        if not result:
            self.stats.fenced += 1
            log.warning("job %s attempt %s: outcome refused, the job was taken over (lease lost)",
                        job.id, job.attempt)
        elif outcome.state == "succeeded":
            self.stats.done += 1
        else:
            self.stats.failed += 1
            log.info("job %s (%s) attempt %d/%d failed: %s: %s -> %s", job.id, job.task, job.attempt,
                     job.max_attempts, outcome.error_type, outcome.message,
                     f"retry in {outcome.delay:.2f}s" if outcome.state == "retry" else "dead")

    # -- heartbeat -------------------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        cfg = self.config
        assert cfg.heartbeat is not None
        while True:
            await asyncio.sleep(cfg.heartbeat)
            await self._heartbeat()

    async def _heartbeat(self) -> None:
        before = {job_id for job_id, r in self._running.items() if not r.acking}
        params = {"worker_id": self.id, "lease": self.config.lease, "jobs_done": self.stats.done,
                  "jobs_failed": self.stats.failed,
                  "state": "draining" if self._stopping.is_set() else "running"}
        try:
            rows = await self._heartbeat_conn.fetch(q("job_heartbeat"), params)
        except PgQueueError as err:
            log.warning("heartbeat failed: %s", err)
            return
        renewed, registered = set(rows[0][0]), rows[0][1]
        if not registered:
            await self._register()  # forgotten as stale (a long pause, a partition): say we are back
        for job_id in before - renewed:
            record = self._running.get(job_id)
            if record is None or record.acking or record.lost:
                continue
            record.lost = True
            log.warning("job %s: lease lost (another worker may run it now); abandoning this attempt", job_id)
            if record.task is not None and self.app.tasks.get(record.job.task, None) is not None \
                    and self.app.tasks[record.job.task].is_async:
                record.task.cancel()

    # -- shutdown --------------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Wait for running jobs up to the drain timeout (or a second signal), then hand back the rest."""
        if self._running and not self._forced.is_set():
            log.info("draining: waiting up to %ss for %d running jobs", self.config.drain_timeout,
                     len(self._running))
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.config.drain_timeout
            while self._running and not self._forced.is_set():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._slot_free.clear()
                forced = asyncio.ensure_future(self._forced.wait())
                freed = asyncio.ensure_future(self._slot_free.wait())
                await asyncio.wait({forced, freed}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
                forced.cancel()
                freed.cancel()
        unfinished = [r for r in self._running.values() if not r.acking]
        for record in unfinished:
            record.released = True
            if record.task is not None:
                record.task.cancel()
        try:
            await asyncio.wait_for(self._completer.drained(), timeout=10)
        except asyncio.TimeoutError:
            log.error("could not record every outcome before leaving; those jobs return after their lease")
        if unfinished:
            ids = [r.job.id for r in unfinished]
            try:
                rows = await self._heartbeat_conn.fetch(q("job_release"), {"worker_id": self.id, "ids": ids})
                handed_back = sum(int(r[1]) for r in rows)
                log.info("handed %d unfinished jobs back to the queue", handed_back)
            except PgQueueError as err:
                log.error("could not hand back jobs %s (%s); they return when their lease expires", ids, err)

    async def _leave(self, background: list[asyncio.Task[Any]], conns: list[DedicatedConnection]) -> None:
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        try:
            await self._heartbeat_conn.fetch(q("worker_deregister"), {"id": self.id})
        except (PgQueueError, DatabaseUnavailable) as err:
            log.warning("could not deregister: %s", err)
        for conn in [self._claim_conn, self._heartbeat_conn, *conns]:
            await conn.close()
        # Threads of sync handlers that ignored their timeout cannot be stopped; do not wait for them.
        self._threads.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped: %d done, %d failed", self.id, self.stats.done, self.stats.failed)

    @property
    def busy_threads(self) -> int:
        """Sync handlers still running in threads (after run() returns: those that could not be stopped)."""
        threads = getattr(self, "_threads", None)
        return threads.active if threads is not None else 0
