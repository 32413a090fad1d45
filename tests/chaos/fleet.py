"""Worker processes for the chaos suite, and the run log their handlers write.

Every worker is a real ``pgqueue work tests.chaos.apps:app`` process. Its handlers append a line per start
and per end of each execution to ``<folder>/<pid>.log``; an ``os.write`` to an ``O_APPEND`` file survives a
SIGKILL of the writer, so the log is the ground truth of what ran, however a process ended.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from tests.conftest import ROOT

APP = "tests.chaos.apps:app"


@dataclass
class Execution:
    """One run of a handler: which job and attempt, in which worker, and whether the handler returned."""

    job_id: int
    attempt: int
    worker_id: str
    pid: int
    ended: bool = False


@dataclass
class Runlog:
    executions: dict[int, list[Execution]] = field(default_factory=dict)

    @classmethod
    def read(cls, folder: Path) -> Runlog:
        runs: dict[tuple[int, int, str], Execution] = {}
        by_job: dict[int, list[Execution]] = defaultdict(list)
        for path in sorted(folder.glob("*.log")):
            pid = int(path.stem)
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) != 4:
                    continue  # a line cut by a kill mid-write
                kind, job, attempt, worker = parts
                key = (int(job), int(attempt), worker)
                if kind == "S" and key not in runs:
                    runs[key] = Execution(int(job), int(attempt), worker, pid)
                    by_job[int(job)].append(runs[key])
                elif kind == "E" and key in runs:
                    runs[key].ended = True
        return cls(dict(by_job))

    def count(self, job_id: int) -> int:
        return len(self.executions.get(job_id, ()))


class Fleet:
    """Worker processes sharing one set of options; ``start``, ``kill``, ``pause``, ``resume``, ``stop_all``."""

    def __init__(self, dsn: str, folder: Path, worker_args: list[str], env: dict[str, str]) -> None:
        self.dsn = dsn
        self.folder = folder
        self.worker_args = worker_args
        self.env = env
        self.procs: list[subprocess.Popen[bytes]] = []
        self.killed: list[int] = []
        self._paused: set[int] = set()

    def start(self, count: int = 1, *, env: dict[str, str] | None = None,
              args: list[str] | None = None) -> list[subprocess.Popen[bytes]]:
        started = []
        for _ in range(count):
            environment = {**os.environ, "PGQUEUE_DSN": self.dsn, "CHAOS_RUNLOG": str(self.folder),
                           **self.env, **(env or {})}
            command = [sys.executable, "-m", "pgqueue", "work", APP, "--log-level", "warning",
                       *self.worker_args, *(args or [])]
            output = self.folder / f"worker-{len(self.procs)}.out"
            with output.open("wb") as out:
                proc = subprocess.Popen(command, cwd=ROOT, env=environment, stdout=out, stderr=subprocess.STDOUT)
            self.procs.append(proc)
            started.append(proc)
        return started

    @property
    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.procs if p.poll() is None]

    def keep(self, count: int) -> int:
        """Start workers until ``count`` are alive, as a supervisor (systemd, Kubernetes) would; returns how many."""
        missing = max(0, count - len(self.alive))
        self.start(missing)
        return missing

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        self.killed.append(proc.pid)
        self._paused.discard(proc.pid)

    def pause(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGSTOP)
        self._paused.add(proc.pid)

    def resume(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGCONT)
        self._paused.discard(proc.pid)

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
        """SIGTERM (drain and leave); SIGKILL if it has not left within ``timeout``. Returns the exit code."""
        if proc.pid in self._paused:
            self.resume(proc)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def stop_all(self, timeout: float = 20.0) -> None:
        for proc in self.alive:
            if proc.pid in self._paused:
                self.resume(proc)
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def output(self) -> str:
        return "\n".join(f.read_text(errors="replace") for f in sorted(self.folder.glob("worker-*.out")))

    def runlog(self) -> Runlog:
        return Runlog.read(self.folder)

    def crashed(self, expected: tuple[int, ...] = ()) -> list[int]:
        """Exit codes of processes that ended by themselves (not by our kill or stop), except ``expected``."""
        return [p.returncode for p in self.procs if p.returncode is not None and p.pid not in self.killed
                and p.returncode not in (0, -15, *expected)]
