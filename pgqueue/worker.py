"""The worker: claims jobs, runs them, renews their leases, records their outcomes.

One asyncio loop per process. ``async def`` handlers run on the loop; plain ``def`` handlers run in a thread
pool; ``concurrency`` bounds both together. Connections, each with one job so none waits on another:

- claim: the producer's ``FOR UPDATE SKIP LOCKED`` claims, never more jobs than free slots;
- complete: the completer's batched acknowledgements and failure records;
- lease renewal: a synchronous connection on a thread of its own (``pgqueue.heartbeat``), so leases are renewed
  even while CPU-bound handler threads hold the GIL or the loop is busy;
- heartbeat: the worker's row (registration, counters, requests from the web API) and handing jobs back;
- maintenance: promotion of due jobs, the lease reaper, pruning;
- listen: LISTEN for enqueues (see ``notifier``);
- handlers: a pool opened on first use, for transactional handlers and idempotent blocks (``pgqueue.once``);
- relay (``relay=True``): the outbox relay, leader-elected among relays (``pgqueue.once.relay``).

Shutdown (SIGTERM or SIGINT, or ``stop()``): stop claiming, let running jobs finish for up to
``drain_timeout`` seconds, then hand every unfinished job back to the queue at once (not after a lease
timeout) and leave. A second signal skips the wait.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import gc
import logging
import os
import socket
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pgqueue.claiming import ClaimPosition
from pgqueue.completer import Completer
from pgqueue.connection import DedicatedConnection, connect
from pgqueue.errors import DatabaseUnavailable, PgQueueError, ValidationError
from pgqueue.executor import ClaimedJob, Execution, Outcome, context_for, execute
from pgqueue.heartbeat import Beat, LeaseRenewer
from pgqueue.job import check_queue
from pgqueue.maintenance import Maintenance, MaintenanceConfig
from pgqueue.migrate import check_current
from pgqueue.notifier import CONTROL_CHANNEL, Notifier
from pgqueue.once.connections import HandlerConnections
from pgqueue.once.relay import Relay, RelayConfig
from pgqueue.queries import q
from pgqueue.task import Context

if TYPE_CHECKING:
    from pgqueue.app import App

log = logging.getLogger("pgqueue.worker")

PROGRESS_FLUSH = 0.5  # seconds: how stale reported progress may be in the database
# Seconds after a notification at which an idle worker claims once more (the notify slot of notify_inserted).
SETTLE_AFTER_NOTIFY = 0.1

# Container allocations between young-generation collections in a worker process (Python's default is 700).
GC_YOUNG_THRESHOLD = 20_000


def prepare_worker_process() -> None:
    """Set this process's garbage collector up for a long-running worker; ``pgqueue work`` calls it once the
    application is imported. Objects made at start-up (modules, the app, its tasks) are frozen out of every
    later collection, and young collections come every 20,000 allocations rather than every 700: each job makes
    a dozen short-lived containers, nearly all freed by reference counting, so the collector mostly walked
    live objects. Measured on a one-process no-op drain: worker CPU 12-14% lower. Only for a process the
    worker owns: an application that embeds a Worker keeps its own collector settings.
    """
    gc.collect()  # what is already garbage is freed, not frozen
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


@dataclass
class WorkerConfig:
    """How a worker runs. Times are in seconds.

    ``lease``: how long a claimed job is ours without a heartbeat; ``heartbeat``: how often leases are renewed
    (default lease/3); ``poll_interval``: the safety poll when no notification comes; ``reap_interval``: how
    often expired leases are looked for (default: the heartbeat); ``claim_batch``: the most jobs one claim
    takes (default: half of concurrency + prefetch, at most 100, so the next claim is under way while a batch
    runs);
    ``prefetch``: jobs claimed beyond the free slots and held, leased, until a slot frees (0: none). A handler
    that returns starts the next job at once instead of after a claim's round trip, which pays for short jobs
    and fast I/O; held jobs wait for this worker even when another is idle, so keep it at 0 for long jobs.
    ``vacuum_after``: once this many row versions of ``pgqueue.jobs`` (plus 5% of its live rows) have died
    since the last vacuum, one worker vacuums it, so claims stop reading the dead index entries that claimed
    jobs leave where every claim starts (0: leave it to autovacuum; needs the table owner's rights).
    """

    queues: list[str] | None = None
    concurrency: int = 10
    lease: float = 30.0
    heartbeat: float | None = None
    poll_interval: float = 5.0
    drain_timeout: float = 30.0
    promote_interval: float = 1.0
    reap_interval: float | None = None
    claim_batch: int | None = None
    prefetch: int = 0
    relay: bool | RelayConfig = False  # also run the outbox relay (one delivers at a time, whoever runs them)
    vacuum_after: int = 20_000

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
        if self.prefetch < 0:
            raise ValidationError(f"prefetch must not be negative, got {self.prefetch}")
        if self.claim_batch is not None and self.claim_batch < 1:
            raise ValidationError(f"claim_batch must be at least 1, got {self.claim_batch}")
        if self.vacuum_after < 0:
            raise ValidationError(f"vacuum_after must not be negative (0 turns it off), got {self.vacuum_after}")

    @property
    def holds(self) -> int:
        """Jobs the worker may hold claimed at once: its slots and its prefetch."""
        return self.concurrency + self.prefetch

    @property
    def batch(self) -> int:
        """Jobs per claim. Half the slots (and of the prefetch): when one half's handlers return, the other
        half's claim is already back, so the worker never waits on the database with every slot empty."""
        return self.claim_batch or max(1, min(100, self.holds // 2))


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

    def grow(self, max_workers: int) -> None:
        """Allow more threads (a raised concurrency). Never shrinks: the producer's free slots bound the jobs."""
        self._max_workers = max(self._max_workers, max_workers)


@dataclass
class _Running:
    job: ClaimedJob
    task: asyncio.Task[None] | None = None
    ctx: Context | None = None
    handler: asyncio.Future[Any] | None = None  # the handler's own future (cancelled on a cancel request)
    acking: bool = False  # its outcome is with the completer: the database, not the handler, decides now
    lost: bool = False  # the heartbeat found its lease taken over
    released: bool = False  # shutdown handed it back
    cancel_requested: bool = False
    progress_sent: tuple[float, str | None] | None = None
    holds_slot: bool = False  # its handler (or a timed-out handler's thread) runs; False while prefetched

    def started(self, handler: asyncio.Future[Any]) -> None:
        self.handler = handler


@dataclass
class WorkerStats:
    claimed: int = 0
    done: int = 0
    failed: int = 0
    dead: int = 0
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
        # Every job we hold a lease on, until its outcome is written. ``_busy`` counts those whose handler
        # still runs: a slot is free as soon as a handler returns, while its acknowledgement is batched.
        self._running: dict[int, _Running] = {}
        self._busy = 0
        self._prefetched: collections.deque[_Running] = collections.deque()  # claimed, waiting for a slot
        self._position = ClaimPosition()  # where the next claim starts (pgqueue.claiming)
        self._more = True
        self._controlled: list[str] = []  # controlled queues (limits, fairness) this worker serves
        self._controlled_read_at = -1e9
        self._settle = False
        self._stop_requests = 0
        # Created in run(): asyncio primitives belong to the loop that runs the worker.
        self._wake: asyncio.Event
        self._stopping: asyncio.Event
        self._forced: asyncio.Event
        self._leaving: asyncio.Event
        self._slot_free: asyncio.Event
        self.started: asyncio.Event | None = None
        # Set (from the worker's loop) once it claims; lets other threads wait for it, as tests do.
        self.ready = threading.Event()
        self.notifier: Notifier | None = None
        self.relay: Relay | None = None

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
        self._leaving = asyncio.Event()
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
            dead_retention=self.app.dead_retention, schedules=sorted(self.app.schedules),
            vacuum_after=cfg.vacuum_after,
        ))
        self.notifier = Notifier(dsn, self._on_notify)
        self._threads = _HandlerThreads(cfg.concurrency)
        # Up to two per slot: a transactional handler's own transaction plus one idempotent block inside it.
        self._handler_connections = HandlerConnections(dsn, max_size=2 * cfg.concurrency)
        self.relay = Relay(self.app, cfg.relay if isinstance(cfg.relay, RelayConfig) else None) if cfg.relay else None
        background: list[asyncio.Task[Any]] = []
        # From the first statement on, every way out (a failed start, a cancel, a stop) closes what was opened.
        try:
            await self._register()
            await asyncio.to_thread(self.app.sync_schedules)
            background += [
                asyncio.create_task(self.notifier.run(), name="pgqueue-notifier"),
                asyncio.create_task(self._completer.run(), name="pgqueue-completer"),
                asyncio.create_task(self._heartbeat_loop(), name="pgqueue-heartbeat"),
                asyncio.create_task(self.maintenance.run(self._stopping), name="pgqueue-maintenance"),
            ]
            if self.relay is not None:
                background.append(asyncio.create_task(self.relay.run(self._stopping), name="pgqueue-relay"))
            log.info("worker %s started: queues=%s concurrency=%d lease=%ss", self.id,
                     ",".join(cfg.queues) if cfg.queues else "*", cfg.concurrency, cfg.lease)
            self.started.set()
            self.ready.set()
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

    def _on_notify(self, channel: str, payload: str | None) -> None:
        if channel == CONTROL_CHANNEL and payload:
            kind, _, value = payload.partition(":")
            if kind == "cancel" and value.isdigit():
                self._request_cancel(int(value))
            elif kind == "queues":
                self._controlled_read_at = -1e9  # settings changed: read them before the next claim
                self._position.forget()  # a queue no longer paused or limited may hold jobs behind our position
                self._more = True
                self._wake.set()
            return
        queues = self.config.queues
        if payload is None or queues is None or payload in queues:
            self.stats.wakeups += 1
            self._position.forget()  # the job may sit ahead of where our claims go on from
            self._more = True
            self._settle = True
            self._wake.set()

    def _request_cancel(self, job_id: int) -> None:
        """Cancellation of a job we run was requested: tell the handler; the job will end cancelled."""
        record = self._running.get(job_id)
        if record is None or record.cancel_requested:
            return
        record.cancel_requested = True
        log.info("job %s: cancellation requested", job_id)
        if record.ctx is not None:
            record.ctx._cancel.set()
        task = self.app.tasks.get(record.job.task)
        if record.handler is not None and task is not None and task.is_async and not record.acking:
            record.handler.cancel()  # not once committing: a transactional handler's commit must not be cut

    async def _produce(self) -> None:
        cfg = self.config
        delay = 0.05
        while not self._stopping.is_set():
            self._wake.clear()
            free = cfg.concurrency - self._busy - len(self._prefetched)  # slots no job is meant for yet
            room = free + cfg.prefetch
            if len(self._running) - self._busy - len(self._prefetched) >= cfg.holds:
                # As many outcomes wait to be written as the worker may hold jobs: let the completer catch up.
                # Not at `concurrency` alone: with prefetch, a batch of fast jobs ran ahead of the completer and
                # claiming stopped while it caught up (A/B, 100,000 no-op jobs, concurrency 100, prefetch 400:
                # one process 17.6k -> 20.9k jobs/s, medians of 3). With no prefetch nothing changes.
                room = 0
            if room > 0 and self._more:
                asked = min(room, cfg.batch)
                try:
                    jobs = await self._claim(asked)
                    if len(jobs) < asked and free > len(jobs):
                        # Never prefetched: a held job would count against its queue's limits while it waits.
                        jobs += await self._claim_controlled(min(asked, free) - len(jobs))
                    delay = 0.05
                except PgQueueError as err:
                    log.warning("claim failed, retrying in %.2fs: %s", delay, err)
                    await self._sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
                for job in jobs:
                    self._admit(job)
                self._more = len(jobs) == asked
                if self._more and self._busy + len(self._prefetched) < cfg.holds:
                    continue
            if self._settle:
                # Under contention an enqueue may leave its wake-up to another's notification, which can arrive
                # just before the first one commits (see notify_inserted): look once more shortly after.
                self._settle = False
                await self._sleep(SETTLE_AFTER_NOTIFY, poll=True)
            else:
                # Limits free up with time, not with notifications: look again soon while controlled queues exist.
                await self._sleep(min(cfg.poll_interval, 0.25) if self._controlled else cfg.poll_interval, poll=True)

    async def _claim_controlled(self, limit: int) -> list[ClaimedJob]:
        """Claim from the controlled queues (paused, limited, fair) this worker serves, in the database's turn."""
        loop = asyncio.get_running_loop()
        if loop.time() - self._controlled_read_at > 2.0:
            rows = await self._claim_conn.fetch(q("queue_controlled_list"))
            served = self.config.queues
            self._controlled = [r[0] for r in rows if served is None or r[0] in served]
            self._controlled_read_at = loop.time()
        claimed: list[ClaimedJob] = []
        for queue in self._controlled:
            if limit - len(claimed) <= 0:
                break
            rows = await self._claim_conn.fetch(q("job_claim_controlled"), {
                "queue": queue, "worker_id": self.id, "lease": self.config.lease, "limit": limit - len(claimed)})
            claimed += [ClaimedJob(*row) for row in rows]
        self.stats.claimed += len(claimed)
        return claimed

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
            params.update(queues=cfg.queues, queue=cfg.queues[0])
            head_claim, after_claim = "job_claim_queues", "job_claim_queue_after" if len(cfg.queues) == 1 else None
        else:
            head_claim, after_claim = "job_claim_any", "job_claim_any_after"
        rows = []
        position, epoch = self._position, self._position.epoch
        # Draining a backlog: go on from the last job taken (pgqueue.claiming). Not for several queues: their
        # claims merge as many index orders, and no one position stands for all of them.
        if after_claim is not None and (after := position.after) is not None:
            rows = await self._claim_conn.fetch(q(after_claim), {**params, "after": after})
            position.claimed(rows, limit, from_head=False, epoch=epoch)
        if len(rows) < limit:
            head = await self._claim_conn.fetch(q(head_claim), {**params, "limit": limit - len(rows)})
            position.claimed(head, limit - len(rows), from_head=True, epoch=epoch)
            rows += head
        self.stats.claimed += len(rows)
        return [ClaimedJob(*row[:8]) for row in rows]

    # -- running ---------------------------------------------------------------------------------------------

    def _admit(self, job: ClaimedJob) -> None:
        """A claimed job: start it if a slot is free, else hold it until one is (prefetch)."""
        record = _Running(job)
        self._running[job.id] = record
        if self._busy < self.config.concurrency and not self._prefetched:
            self._start(record)
        else:
            self._prefetched.append(record)

    def _start(self, record: _Running) -> None:
        job = record.job
        if record.cancel_requested:
            # Cancelled while it waited for a slot: record that without running it (and without a slot).
            record.acking = True
            outcome = Outcome("cancelled")
            self._completer.submit(job, outcome, functools.partial(self._recorded, record, outcome))
            return
        record.holds_slot = True
        self._busy += 1
        task = self.app.tasks.get(job.task)
        if task is not None and task.takes_context:
            record.ctx = context_for(self.app, job, self.id)
        record.task = asyncio.create_task(self._run_job(record), name=f"pgqueue-job-{job.id}")

    def _start_prefetched(self) -> None:
        while self._prefetched and self._busy < self.config.concurrency and not self._stopping.is_set():
            record = self._prefetched.popleft()
            if record.lost:
                self._running.pop(record.job.id, None)  # its lease ran out while it waited: not ours to run
                continue
            self._start(record)

    async def _run_job(self, record: _Running) -> None:
        job = record.job
        overrun: asyncio.Future[Any] | None = None
        handed_over = False  # the completer has its outcome and will call _recorded
        try:
            try:
                execution = await execute(self.app, job, self.id, self._threads, ctx=record.ctx,
                                          started=record.started, connections=self._handler_connections,
                                          completing=lambda: setattr(record, "acking", True))
            except asyncio.CancelledError:
                if not record.cancel_requested or record.lost or record.released:
                    raise
                execution = Execution(Outcome("cancelled"))
            overrun = execution.overrun
            if overrun is None:
                self._free_slot(record)
            else:
                # The thread of a timed-out sync handler still runs: its slot stays taken until it returns.
                overrun.add_done_callback(lambda _: self._free_slot(record))
            if record.lost or record.released:
                return  # the database has already moved on; what we would write would be fenced off anyway
            outcome = execution.outcome
            if execution.recorded is not None:
                # A transactional handler committed (or not) with its outcome.
                self._recorded(record, outcome, execution.recorded)
                return
            if record.cancel_requested and outcome.state != "cancelled":
                outcome = Outcome("cancelled", result=outcome.result)
            record.acking = True
            # No await: the job keeps its lease (and its place in _running) until the batch with it is written.
            self._completer.submit(job, outcome, functools.partial(self._recorded, record, outcome))
            handed_over = True
        except asyncio.CancelledError:
            pass
        except Exception:  # a bug of ours; the job stays leased and the reaper hands it on
            log.exception("internal error while running job %s", job.id)
        finally:
            if not handed_over:
                self._forget(record, free_slot=overrun is None)

    def _recorded(self, record: _Running, outcome: Outcome, accepted: bool) -> None:
        """The database has answered for this attempt's outcome (the completer calls this, once)."""
        job = record.job
        if not accepted:
            self.stats.fenced += 1
            log.warning("job %s attempt %s: outcome refused, the job was taken over (lease lost)",
                        job.id, job.attempt)
        elif outcome.state in ("succeeded", "cancelled"):
            self.stats.done += 1
        else:
            self.stats.failed += 1
            self.stats.dead += outcome.state == "dead"
            log.info("job %s (%s) attempt %d/%d failed: %s: %s -> %s", job.id, job.task, job.attempt,
                     job.max_attempts, outcome.error_type, outcome.message,
                     f"retry in {outcome.delay:.2f}s" if outcome.state == "retry" else "dead")
        self._forget(record, free_slot=False)

    def _forget(self, record: _Running, free_slot: bool) -> None:
        """The attempt is over for this worker: stop renewing its lease."""
        self._running.pop(record.job.id, None)
        if free_slot:
            self._free_slot(record)
        if self._more or self._stopping.is_set():
            self._wake.set()
        self._slot_free.set()

    def _free_slot(self, record: _Running) -> None:
        """The handler has returned: its slot may take another job (its outcome may still be on its way)."""
        if record.holds_slot:
            record.holds_slot = False
            self._busy -= 1
            self._start_prefetched()
            if self._more:
                self._wake.set()

    # -- heartbeat -------------------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Renew leases from a thread of their own (see ``heartbeat``); act on each renewal here, on the loop."""
        cfg = self.config
        assert cfg.heartbeat is not None
        loop = asyncio.get_running_loop()
        beats: asyncio.Queue[Beat] = asyncio.Queue()
        renewer = LeaseRenewer(self.app.dsn, cfg.heartbeat, stall_limit=max(3 * cfg.lease, 5.0),
                               progress_every=PROGRESS_FLUSH, params=self._heartbeat_params,
                               progress=self._progress_update,
                               on_beat=lambda beat: loop.call_soon_threadsafe(beats.put_nowait, beat))
        renewer.start()
        try:
            # Ends on ``_leaving``, not on the cancel alone: before Python 3.12, a cancel that arrives as the
            # queue hands over a beat is swallowed by wait_for, and this loop (and its renewer) would outlive
            # the worker, heartbeating its row back in as "draining" for ever.
            while not self._leaving.is_set():
                renewer.alive()
                try:
                    beat = await asyncio.wait_for(beats.get(), timeout=PROGRESS_FLUSH)
                except asyncio.TimeoutError:
                    continue
                await self._heartbeat(beat)
        finally:
            # Stopped before the worker deregisters: a renewal after that would register it again.
            await asyncio.to_thread(renewer.stop)

    def _heartbeat_params(self) -> tuple[dict[str, Any], set[int]]:
        """The renewal's parameters, and the jobs whose renewal to check. Runs on the renewer's thread: it only
        reads, and copies ``_running`` in one C call (a Python-level loop over it could see it change)."""
        running = list(self._running.items())
        params = {"worker_id": self.id, "ids": [job_id for job_id, _ in running], "lease": self.config.lease,
                  "jobs_done": self.stats.done, "jobs_failed": self.stats.failed,
                  "state": "draining" if self._stopping.is_set() else "running", **self._progress_params(running)}
        return params, {job_id for job_id, r in running if not r.acking}

    def _progress_update(self) -> dict[str, Any] | None:
        """Progress changed since it was last sent, or None (on the renewer's thread)."""
        changed = self._progress_params(list(self._running.items()))
        return {"worker_id": self.id, **changed} if changed["progress_ids"] else None

    @staticmethod
    def _progress_params(running: list[tuple[int, _Running]]) -> dict[str, list[Any]]:
        """Progress changed since it was last sent (and mark it sent)."""
        ids: list[int] = []
        values: list[float] = []
        messages: list[str | None] = []
        for job_id, record in running:
            current = record.ctx._progress if record.ctx is not None else None
            if current is not None and current != record.progress_sent:
                ids.append(job_id)
                values.append(current[0])
                messages.append(current[1])
                record.progress_sent = current
        return {"progress_ids": ids, "progress": values, "progress_messages": messages}

    async def _heartbeat(self, beat: Beat) -> None:
        for job_id in beat.cancel_requested:
            self._request_cancel(job_id)  # the notification may have been missed (listener reconnecting)
        if not beat.registered:
            await self._register()  # forgotten as stale (a long pause, a partition): say we are back
        await self._sync()
        for job_id in beat.sent - beat.held:
            record = self._running.get(job_id)
            if record is None or record.acking or record.lost:
                continue
            record.lost = True
            log.warning("job %s: lease lost (another worker may run it now); abandoning this attempt", job_id)
            if record.task is not None and self.app.tasks.get(record.job.task, None) is not None \
                    and self.app.tasks[record.job.task].is_async:
                record.task.cancel()

    async def _sync(self) -> None:
        """Report counters for /metrics and take requests written by the web API: a concurrency, or drain."""
        params = {"worker_id": self.id, "claimed": self.stats.claimed, "dead": self.stats.dead,
                  "reclaimed": self.maintenance.reclaimed, "wakeups": self.stats.wakeups}
        try:
            rows = await self._heartbeat_conn.fetch(q("worker_sync"), params)
        except PgQueueError as err:
            log.warning("worker sync failed: %s", err)
            return
        if not rows:
            return
        concurrency, drain = rows[0]
        if concurrency != self.config.concurrency:
            log.info("concurrency changed from %d to %d on request", self.config.concurrency, concurrency)
            self.config.concurrency = concurrency
            self._threads.grow(concurrency)
            self._more = True
            self._wake.set()
        if drain and not self._stopping.is_set():
            log.info("drain requested: finishing running jobs, then leaving")
            self.stop()

    # -- shutdown --------------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Wait for running jobs up to the drain timeout (or a second signal), then hand back the rest."""
        held = list(self._prefetched)  # claimed but never started: back to the queue at once
        self._prefetched.clear()
        for record in held:
            record.released = True
            self._running.pop(record.job.id, None)
        if held:
            await self._hand_back([r.job.id for r in held])
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
            await self._hand_back([r.job.id for r in unfinished])

    async def _hand_back(self, ids: list[int]) -> None:
        try:
            rows = await self._heartbeat_conn.fetch(q("job_release"), {"worker_id": self.id, "ids": ids})
            handed_back = sum(int(r[1]) for r in rows)
            log.info("handed %d unfinished jobs back to the queue", handed_back)
        except PgQueueError as err:
            log.error("could not hand back jobs %s (%s); they return when their lease expires", ids, err)

    async def _leave(self, background: list[asyncio.Task[Any]], conns: list[DedicatedConnection]) -> None:
        self._leaving.set()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        try:
            await self._heartbeat_conn.fetch(q("worker_deregister"), {"id": self.id})
        except (PgQueueError, DatabaseUnavailable) as err:
            log.warning("could not deregister: %s", err)
        for conn in [self._claim_conn, self._heartbeat_conn, *conns]:
            await conn.close()
        await self._handler_connections.aclose()
        # Threads of sync handlers that ignored their timeout cannot be stopped; do not wait for them.
        self._threads.shutdown(wait=False, cancel_futures=True)
        log.info("worker %s stopped: %d done, %d failed", self.id, self.stats.done, self.stats.failed)

    @property
    def busy_threads(self) -> int:
        """Sync handlers still running in threads (after run() returns: those that could not be stopped)."""
        threads = getattr(self, "_threads", None)
        return threads.active if threads is not None else 0
