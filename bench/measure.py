"""What every Python driver measures the same way: timing, CPU of the worker and of PostgreSQL, the result line.

Imported by the drivers of every Python system (pgqueue's own venv and the peers' venv), so it needs nothing
but the standard library and psycopg. A driver prints exactly one JSON line, its result, as its last line of
stdout; everything else it says goes to stderr.
"""

from __future__ import annotations

import json
import os
import re
import resource
import statistics
import sys
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

import psycopg

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SQL_DIR = Path(__file__).resolve().parent / "sql"
_HEADER = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


@cache
def named(file: str) -> dict[str, str]:
    """The ``-- name:`` statements of ``bench/sql/<file>.sql`` (pgqueue's convention, without importing it)."""
    parts = _HEADER.split((SQL_DIR / f"{file}.sql").read_text(encoding="utf-8"))
    out = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        out[name] = "\n".join(lines).strip().rstrip(";")
    return out


def backend_pids(dsn: str) -> list[int]:
    """Server processes serving the benchmark's database (client backends and autovacuum workers)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchall()
    return [int(r[0]) for r in rows]


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process on this machine (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class ServerCpu:
    """CPU seconds PostgreSQL spent on the benchmark's database between ``start()`` and ``stop()``.

    Backends that exist at start count from their reading then; backends that appear later count from zero.
    A backend that both starts and exits between the two readings is missed, so drivers read before closing
    their connections. Requires the server to run on this machine (it reads /proc).
    """

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.before: dict[int, float] = {}
        self.seconds = 0.0

    def start(self) -> None:
        self.before = {pid: process_cpu(pid) for pid in backend_pids(self.dsn)}

    def stop(self) -> float:
        self.seconds = sum(process_cpu(pid) - self.before.get(pid, 0.0) for pid in backend_pids(self.dsn))
        return self.seconds


def own_cpu() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def rss_mb(pid: int | None = None) -> float:
    """Resident memory now, in MiB."""
    with open(f"/proc/{pid or 'self'}/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE_SIZE / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MiB: VmHWM, not ru_maxrss, which a spawned child inherits
    from the parent it was forked from (so a driver that built a big backlog would show as the worker's peak)."""
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile (``fraction`` 0.5 is the median)."""
    ordered = sorted(values)
    index = max(0, min(len(ordered) - 1, round(fraction * len(ordered) + 0.5) - 1))
    return ordered[index]


def latency_result(samples_ms: Sequence[float]) -> dict[str, Any]:
    return {"latency_p50_ms": percentile(samples_ms, 0.50), "latency_p99_ms": percentile(samples_ms, 0.99),
            "samples": len(samples_ms), "mean_ms": statistics.fmean(samples_ms)}


def throughput_result(jobs: int, seconds: float, worker_cpu: float, server_cpu: float,
                      **extra: Any) -> dict[str, Any]:
    return {"value": jobs / seconds if seconds > 0 else 0.0, "jobs": jobs, "seconds": seconds,
            "worker_cpu_s": worker_cpu, "pg_cpu_s": server_cpu, **extra}


def emit(result: dict[str, Any]) -> None:
    """Print the driver's result line (the orchestrator reads the last line of stdout)."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def log(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def now() -> float:
    """A clock shared by every process on the machine (CLOCK_MONOTONIC), in seconds."""
    return time.monotonic()
