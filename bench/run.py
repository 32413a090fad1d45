"""pgqueue's benchmark: pgqueue side by side with its peers and a raw-SQL ceiling, on one PostgreSQL, in one run.

``make bench`` (full, every figure the median of 3 runs) or ``make bench-quick`` (about a minute, 1 run, small
sizes). Each system gets its own database on the server (created here, dropped at the end); each figure is a
fresh subprocess of the system's driver in ``bench/drivers/``, in its own environment: pgqueue and raw SQL in
pgqueue's venv, PgQueuer and Procrastinate in ``bench/.venv-peers``, graphile-worker under node. Runs are
interleaved (run 1 of every system, then run 2, ...) so a burst of load from elsewhere hits all of them.

Writes ``bench/results/latest.json`` ({figure: {system: value}}), ``latest-meta.json`` (machine, load, sizes,
why a cell is empty) and ``latest.md`` (the table, as in the README).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
PEERS_PYTHON = BENCH / ".venv-peers" / "bin" / "python"
NODE_DIR = BENCH / "node"
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

SYSTEMS = ["pgqueue", "pgqueuer", "procrastinate", "graphile_worker", "raw_sql"]
LABELS = {"pgqueue": "pgqueue", "pgqueuer": "PgQueuer", "procrastinate": "Procrastinate",
          "graphile_worker": "graphile-worker", "raw_sql": "raw SQL"}
FIGURES = ["enqueue_single", "enqueue_bulk", "process_1proc", "process_2proc", "latency_p50_ms", "latency_p99_ms",
           "backlog_claim_ratio"]
EXTRA_FIGURES = ["process_1proc_default", "round_trips_per_job", "worker_cpu_s_per_10k", "pg_cpu_s_per_10k",
                 "io_bound_50ms", "worker_peak_rss_mb", "worker_rss_growth_mb", "feature_cost_pct"]
LOWER_IS_BETTER = {"latency_p50_ms", "latency_p99_ms", "round_trips_per_job", "worker_cpu_s_per_10k",
                   "pg_cpu_s_per_10k", "worker_peak_rss_mb", "worker_rss_growth_mb", "feature_cost_pct"}


@dataclass
class Sizes:
    runs: int
    enqueue_single: int
    enqueue_bulk: int
    process: int
    process_seconds: float
    latency_samples: int
    round_trip_jobs: int
    backlog_queued: int
    backlog_finished: int
    backlog_jobs: int
    io_jobs: int
    memory_jobs: int
    feature_jobs: int
    timeout: float


FULL = Sizes(runs=3, enqueue_single=3000, enqueue_bulk=200_000, process=100_000, process_seconds=10.0,
             latency_samples=200, round_trip_jobs=20_000, backlog_queued=1_000_000, backlog_finished=5_000_000,
             backlog_jobs=30_000, io_jobs=20_000, memory_jobs=1_000_000, feature_jobs=20_000, timeout=900)
QUICK = Sizes(runs=1, enqueue_single=500, enqueue_bulk=30_000, process=15_000, process_seconds=2.5,
              latency_samples=30, round_trip_jobs=3_000, backlog_queued=50_000, backlog_finished=100_000,
              backlog_jobs=5_000, io_jobs=3_000, memory_jobs=0, feature_jobs=4_000, timeout=300)


@dataclass
class System:
    name: str
    command: list[str]
    figures: set[str]
    missing: str | None = None  # why it cannot run here
    dsn: str = ""


@dataclass
class Results:
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: dict[str, dict[str, str]] = field(default_factory=dict)
    raw: list[dict[str, Any]] = field(default_factory=list)

    def add(self, figure: str, system: str, value: float) -> None:
        self.values.setdefault(figure, {}).setdefault(system, []).append(float(value))

    def fail(self, figure: str, system: str, reason: str) -> None:
        self.errors.setdefault(figure, {})[system] = reason

    def medians(self) -> dict[str, dict[str, float | None]]:
        out: dict[str, dict[str, float | None]] = {}
        for figure in FIGURES + EXTRA_FIGURES:
            row = self.values.get(figure, {})
            out[figure] = {s: (statistics.median(row[s]) if row.get(s) else None) for s in SYSTEMS}
        return out


def say(message: str) -> None:
    print(message, flush=True)


# -- systems -----------------------------------------------------------------------------------------------------

ALL_RUNS = {"enqueue_single", "enqueue_bulk", "process_1proc", "process_2proc", "latency"}


def discover() -> list[System]:
    """Every system, with the reason it cannot run when it cannot (the table then says so)."""
    drivers = BENCH / "drivers"
    here = sys.executable
    systems = [
        System("pgqueue", [here, str(drivers / "pgqueue_driver.py")],
               ALL_RUNS | {"backlog", "io_bound_50ms", "memory", "feature_cost_pct", "process_1proc_default"}),
        System("raw_sql", [here, str(drivers / "raw_sql.py")], ALL_RUNS | {"backlog"}),
    ]
    peers = [("pgqueuer", "pgqueuer_driver.py"), ("procrastinate", "procrastinate_driver.py")]
    for name, script in peers:
        system = System(name, [str(PEERS_PYTHON), str(drivers / script)], set(ALL_RUNS))
        if not PEERS_PYTHON.exists():
            system.missing = "peers' venv missing (make bench creates bench/.venv-peers)"
        else:
            probe = subprocess.run([str(PEERS_PYTHON), "-c", f"import {name}"], capture_output=True, text=True)
            if probe.returncode != 0:
                system.missing = f"cannot import {name}: {probe.stderr.strip().splitlines()[-1:]}"
        systems.append(system)
    node = shutil.which("node")
    graphile = System("graphile_worker", [node or "node", str(drivers / "graphile_worker.cjs")], set(ALL_RUNS))
    if node is None:
        graphile.missing = "node is not installed"
    elif not (NODE_DIR / "node_modules" / "graphile-worker").is_dir():
        graphile.missing = "graphile-worker not installed (npm install in bench/node failed or was skipped)"
    systems.append(graphile)
    return sorted(systems, key=lambda s: SYSTEMS.index(s.name))


# -- databases ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def databases(server_dsn: str, systems: list[System]) -> Iterator[None]:
    """One database per system for the length of the run, always dropped afterwards."""
    tag = uuid.uuid4().hex[:8]
    made: list[str] = []
    try:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            for system in systems:
                name = f"pgqueue_bench_{system.name}_{tag}"
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                made.append(name)
                system.dsn = url(server_dsn, dbname=name)
        yield
    finally:
        with psycopg.connect(server_dsn, autocommit=True) as conn:
            for name in made:
                conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def url(dsn: str, **changes: str) -> str:
    """A DSN as a postgresql:// URL (every client here reads those; asyncpg and node's pg read only those)."""
    parts = {**conninfo_to_dict(dsn), **changes}
    user = quote(str(parts.pop("user", "postgres")), safe="")
    password = parts.pop("password", None)
    host = str(parts.pop("host", "127.0.0.1"))
    port = parts.pop("port", "5432")
    dbname = quote(str(parts.pop("dbname", "postgres")), safe="")
    auth = f"{user}:{quote(str(password), safe='')}" if password else user
    if host.startswith("/"):
        parts["host"] = host
        host = ""
    query = f"?{urlencode(parts)}" if parts else ""
    return f"postgresql://{auth}@{host}:{port}/{dbname}{query}"


def via_proxy(dsn: str, port: int) -> str:
    return url(dsn, host="127.0.0.1", port=str(port), sslmode="disable")


# -- running drivers ---------------------------------------------------------------------------------------------


def drive(system: System, figure: str, args: list[str], timeout: float, extra_dsn: list[str] | None = None
          ) -> dict[str, Any]:
    """Run one figure of one system in a fresh process; its last stdout line is its JSON result."""
    command = [*system.command, figure, "--dsn", system.dsn, *(extra_dsn or []), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if system.name == "graphile_worker":
        env["NODE_PATH"] = str(NODE_DIR / "node_modules")
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=str(BENCH), env=env)
    except subprocess.TimeoutExpired as err:
        raise RuntimeError(f"timed out after {timeout:.0f}s") from err
    for line in done.stderr.splitlines():
        if line.startswith("bench: "):
            say(f"    {system.name}: {line[7:]}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"exit {done.returncode}: {tail[:200]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def record(results: Results, figure: str, system: System, outcome: dict[str, Any]) -> None:
    """Turn one driver result into table figures."""
    results.raw.append({"figure": figure, "system": system.name, **outcome})
    if figure == "latency":
        results.add("latency_p50_ms", system.name, outcome["latency_p50_ms"])
        results.add("latency_p99_ms", system.name, outcome["latency_p99_ms"])
        return
    if figure == "round_trips":
        return
    results.add(figure, system.name, outcome["value"])
    if figure == "process_1proc":
        jobs = outcome["jobs"]
        results.add("worker_cpu_s_per_10k", system.name, outcome["worker_cpu_s"] * 10_000 / jobs)
        results.add("pg_cpu_s_per_10k", system.name, outcome["pg_cpu_s"] * 10_000 / jobs)
    if figure == "memory":
        results.add("worker_peak_rss_mb", system.name, outcome["worker_peak_rss_mb"])
        results.add("worker_rss_growth_mb", system.name,
                    outcome["worker_peak_rss_mb"] - outcome["worker_early_rss_mb"])


def plan(sizes: Sizes) -> list[tuple[str, str, list[str]]]:
    """(figure, driver figure, driver arguments) in the order they run."""
    process = ["--n", str(sizes.process), "--seconds", str(sizes.process_seconds)]
    steps = [
        ("enqueue_single", "enqueue_single", ["--n", str(sizes.enqueue_single)]),
        ("enqueue_bulk", "enqueue_bulk", ["--n", str(sizes.enqueue_bulk)]),
        ("process_1proc", "process", [*process, "--procs", "1"]),
        ("process_2proc", "process", [*process, "--procs", "2"]),
        ("process_1proc_default", "process_default", [*process, "--procs", "1"]),
        ("latency", "latency", ["--samples", str(sizes.latency_samples)]),
        ("io_bound_50ms", "io_bound", ["--n", str(sizes.io_jobs), "--seconds", "60"]),
        ("feature_cost_pct", "feature_cost", ["--n", str(sizes.feature_jobs)]),
    ]
    return steps


def run_all(systems: list[System], sizes: Sizes, results: Results, only: set[str] | None) -> None:
    runnable = [s for s in systems if s.missing is None]
    for system in systems:
        if system.missing:
            for figure in FIGURES + EXTRA_FIGURES:
                results.fail(figure, system.name, system.missing)
    broken: set[str] = set()
    for system in runnable:
        try:
            drive(system, "setup", [], sizes.timeout)
        except RuntimeError as err:
            say(f"  {system.name}: setup failed: {err}")
            broken.add(system.name)
            for figure in FIGURES + EXTRA_FIGURES:
                results.fail(figure, system.name, f"setup failed: {err}")
    runnable = [s for s in runnable if s.name not in broken]

    for run in range(1, sizes.runs + 1):
        for figure, name, args in plan(sizes):
            if only and figure not in only:
                continue
            for system in runnable:
                if figure not in system.figures:
                    continue
                say(f"run {run}/{sizes.runs} {figure:<16} {system.name}")
                try:
                    record(results, figure, system, drive(system, name, args, sizes.timeout))
                except (RuntimeError, KeyError, ValueError) as err:
                    say(f"    {system.name}: {figure} failed: {err}")
                    results.fail("latency_p50_ms" if figure == "latency" else figure, system.name, str(err))
    if not only or "backlog_claim_ratio" in only:
        backlog(runnable, sizes, results)
    if not only or "round_trips_per_job" in only:
        round_trips(runnable, sizes, results)
    if (not only or "worker_peak_rss_mb" in only) and sizes.memory_jobs:
        for system in runnable:
            if "memory" in system.figures:
                say(f"memory           {system.name} ({sizes.memory_jobs} jobs)")
                try:
                    record(results, "memory", system,
                           drive(system, "memory", ["--n", str(sizes.memory_jobs), "--seconds", "600"],
                                 sizes.timeout))
                except RuntimeError as err:
                    results.fail("worker_peak_rss_mb", system.name, str(err))


def backlog(systems: list[System], sizes: Sizes, results: Results) -> None:
    """Claim speed with a deep backlog and a long history, as a ratio to the same claims on a small queue."""
    args = ["--n", str(sizes.backlog_jobs), "--queued", str(sizes.backlog_queued),
            "--finished", str(sizes.backlog_finished), "--runs", str(sizes.runs)]
    for system in systems:
        if "backlog" not in system.figures:
            continue
        say(f"backlog          {system.name} ({sizes.backlog_queued} queued, {sizes.backlog_finished} finished)")
        try:
            record(results, "backlog_claim_ratio", system, drive(system, "backlog", args, sizes.timeout * 2))
        except RuntimeError as err:
            say(f"    {system.name}: backlog failed: {err}")
            results.fail("backlog_claim_ratio", system.name, str(err))


def round_trips(systems: list[System], sizes: Sizes, results: Results) -> None:
    """One more 1-process run per system with its workers behind the counting relay (not timed)."""
    from proxy import RoundTripProxy

    parts = conninfo_to_dict(systems[0].dsn) if systems else {}
    host, port = str(parts.get("host") or "127.0.0.1"), int(parts.get("port") or 5432)
    if host.startswith("/"):
        for system in systems:
            results.fail("round_trips_per_job", system.name, "the server is reached through a Unix socket")
        return
    with RoundTripProxy(host, port) as proxy:
        for system in systems:
            say(f"round trips      {system.name}")
            proxy.reset()
            # Not timed, but the slow systems need not take all the jobs: the count is per job that ran.
            args = ["--n", str(sizes.round_trip_jobs), "--seconds", str(sizes.process_seconds * 2), "--procs", "1"]
            try:
                outcome = drive(system, "process", args, sizes.timeout,
                                ["--worker-dsn", via_proxy(system.dsn, proxy.port)])
            except RuntimeError as err:
                results.fail("round_trips_per_job", system.name, str(err))
                continue
            results.add("round_trips_per_job", system.name, proxy.round_trips / outcome["jobs"])


# -- reporting ---------------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo", encoding="utf-8") as f:
        mem_kb = int(f.readline().split()[1])
    node = shutil.which("node")
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip() if node else None
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem_kb / 2**20, 1),
            "os": platform.platform(), "python": platform.python_version(), "node": node_version}


def loadavg() -> list[float]:
    with open("/proc/loadavg", encoding="ascii") as f:
        return [float(x) for x in f.read().split()[:3]]


def fmt(figure: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if figure.endswith("_ms"):
        return f"{value:.2f} ms"
    if figure == "backlog_claim_ratio":
        return f"{value:.2f}"
    if figure in ("round_trips_per_job", "worker_cpu_s_per_10k", "pg_cpu_s_per_10k"):
        return f"{value:.3f}"
    if figure.endswith("_mb"):
        return f"{value:.0f} MiB"
    if figure == "feature_cost_pct":
        return f"{value:+.1f}%"
    if value >= 10_000:
        return f"{value / 1000:.1f}k/s"
    return f"{value:,.0f}/s"


TITLES = {
    "enqueue_single": "enqueue, one transaction per job",
    "enqueue_bulk": "bulk enqueue",
    "process_1proc": "no-op jobs processed, 1 worker process",
    "process_1proc_default": "no-op jobs, 1 process, pgqueue's default settings (no prefetch)",
    "process_2proc": "no-op jobs processed, 2 worker processes",
    "latency_p50_ms": "latency commit → handler start, p50",
    "latency_p99_ms": "latency commit → handler start, p99",
    "backlog_claim_ratio": "claim speed, deep backlog ÷ empty queue",
    "round_trips_per_job": "database round trips per job (1 process)",
    "worker_cpu_s_per_10k": "worker CPU s per 10k jobs (1 process)",
    "pg_cpu_s_per_10k": "PostgreSQL CPU s per 10k jobs (1 process)",
    "io_bound_50ms": "async jobs awaiting 50 ms, concurrency 200, prefetch 100 (ideal 4,000/s)",
    "worker_peak_rss_mb": "worker peak RSS over the memory run",
    "worker_rss_growth_mb": "worker RSS growth, 10% → end of the memory run",
    "feature_cost_pct": "cost of unused features on the claim path",
}


def table(medians: dict[str, dict[str, float | None]], errors: dict[str, dict[str, str]]) -> str:
    head = ["figure", *(LABELS[s] for s in SYSTEMS), "pgqueue ÷ raw", "pgqueue ÷ best peer"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes: dict[str, int] = {}
    for figure in FIGURES + EXTRA_FIGURES:
        row = medians.get(figure, {})
        if all(v is None for v in row.values()):
            continue
        cells = [TITLES[figure]]
        for system in SYSTEMS:
            value = row.get(system)
            reason = errors.get(figure, {}).get(system)
            if value is None and reason:
                mark = notes.setdefault(reason, len(notes) + 1)
                cells.append(f"n/a [{mark}]")
            else:
                cells.append(fmt(figure, value) if value is not None else "—")
        ours, raw = row.get("pgqueue"), row.get("raw_sql")
        peers = [row[s] for s in ("pgqueuer", "procrastinate", "graphile_worker") if row.get(s) is not None]
        ratio_figures = {"enqueue_single", "enqueue_bulk", "process_1proc", "process_2proc", "latency_p50_ms",
                         "latency_p99_ms", "round_trips_per_job", "worker_cpu_s_per_10k", "pg_cpu_s_per_10k"}
        if figure in ratio_figures:
            best = (min(peers) if figure in LOWER_IS_BETTER else max(peers)) if peers else None
            cells.append(f"{ours / raw:.2f}" if ours and raw else "—")
            cells.append(f"{ours / best:.2f}" if ours and best else "—")
        else:
            cells += ["—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    for reason, mark in notes.items():
        lines.append(f"\n[{mark}] {reason}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="about a minute: 1 run, small sizes")
    parser.add_argument("--runs", type=int, help="runs per figure (the median is reported)")
    parser.add_argument("--dsn", default=os.environ.get("PGQUEUE_DSN") or DEFAULT_DSN,
                        help="the server (its maintenance database); default $PGQUEUE_DSN or the local one")
    parser.add_argument("--systems", help="comma-separated subset of " + ",".join(SYSTEMS))
    parser.add_argument("--figures", help="comma-separated subset of figures")
    parser.add_argument("--out", default=str(RESULTS), help="folder for latest.json, latest-meta.json, latest.md")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    if args.runs:
        sizes.runs = args.runs
    systems = discover()
    if args.systems:
        wanted = set(args.systems.split(","))
        systems = [s for s in systems if s.name in wanted]
    only = set(args.figures.split(",")) if args.figures else None
    started, load_before = dt.datetime.now(dt.timezone.utc), loadavg()
    say(f"pgqueue bench ({'quick' if args.quick else 'full'}, {sizes.runs} run(s)); load {load_before}")
    for system in systems:
        if system.missing:
            say(f"  {system.name}: not run: {system.missing}")
    results = Results()
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('server_version'), current_setting('synchronous_commit'),"
                           " current_setting('shared_buffers'), current_setting('autovacuum')").fetchone()
        assert row is not None
    with databases(args.dsn, [s for s in systems if s.missing is None]):
        run_all(systems, sizes, results, only)
    elapsed = (dt.datetime.now(dt.timezone.utc) - started).total_seconds()
    medians = results.medians()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "latest.json").write_text(json.dumps(medians, indent=2) + "\n")
    meta = {"started": started.isoformat(timespec="seconds"), "seconds": round(elapsed),
            "mode": "quick" if args.quick else "full", "runs": sizes.runs, "sizes": sizes.__dict__,
            "machine": machine(), "postgresql": {"version": row[0], "synchronous_commit": row[1],
                                                 "shared_buffers": row[2], "autovacuum": row[3]},
            "load_before": load_before, "load_after": loadavg(), "errors": results.errors,
            "all_runs": results.values, "raw": results.raw}
    (out / "latest-meta.json").write_text(json.dumps(meta, indent=2, default=str) + "\n")
    text = table(medians, results.errors)
    (out / "latest.md").write_text(text + "\n")
    say("")
    say(text)
    say(f"\n{elapsed:.0f}s; load average before {load_before}, after {meta['load_after']}; "
        f"results in {out / 'latest.json'}")


if __name__ == "__main__":
    main()
