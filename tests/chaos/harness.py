"""The chaos harness: each scenario is one small function that measures figures and checks them against bounds.

::

    @scenario(13, "idempotency race", quick={"connections": 16}, full={"connections": 64})
    def idempotency_race(run: Run, connections: int) -> None:
        dsn = run.database()
        ...
        run.figure("jobs submitted", connections * 1000)
        run.check("jobs created", created, "==", 1)

A scenario gets a ``Run``: fresh migrated databases and worker processes that are cleaned up when it ends,
``figure`` for what it measured and ``check`` for a figure with its bound. It passes when it raised nothing and
every bound held; a missed bound does not stop it, so the report shows every figure. ``quick`` sizes run in
``make test`` (None: ``make chaos`` only), ``full`` sizes in ``make chaos``.
"""

from __future__ import annotations

import contextlib
import operator
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgqueue.migrate import migrate
from tests.chaos.fleet import Fleet
from tests.chaos.servers import PrivateServer

_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "==": operator.eq, "<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt,
}


@dataclass
class Figure:
    """One measured value, with the bound it must meet when it has one."""

    name: str
    value: Any
    unit: str = ""
    bound: str | None = None
    ok: bool | None = None

    def shown(self) -> str:
        """The value with its unit: ``1,234``, ``0.25 s``."""
        if isinstance(self.value, bool):
            value = str(self.value)
        elif isinstance(self.value, float):
            value = f"{self.value:,.3f}".rstrip("0").rstrip(".")
        elif isinstance(self.value, int):
            value = f"{self.value:,}"
        else:
            value = str(self.value)
        return f"{value} {self.unit}".rstrip()

    def line(self) -> str:
        text = f"{self.name:<50} {self.shown()}"
        if self.bound is not None:
            text = f"{text:<68} bound {self.bound:<14} {'ok' if self.ok else 'MISSED'}"
        return text


class Run:
    """What one scenario run owns: its figures, databases, processes and temporary files."""

    def __init__(self, server_dsn: str, mode: str, folder: Path) -> None:
        self.server_dsn = server_dsn
        self.mode = mode  # "quick" (make test) or "full" (make chaos)
        self.folder = folder
        self.figures: list[Figure] = []
        self.notes: list[str] = []
        self._cleanup = contextlib.ExitStack()

    # -- figures ---------------------------------------------------------------------------------------------

    def figure(self, name: str, value: Any, unit: str = "") -> None:
        self.figures.append(Figure(name, value, unit))

    def check(self, name: str, value: Any, op: str, bound: Any, unit: str = "") -> bool:
        """Record ``value`` and whether ``value op bound`` holds; a miss fails the scenario at its end."""
        ok = bool(_OPS[op](value, bound))
        shown = f"{bound:g}" if isinstance(bound, float) else str(bound)
        self.figures.append(Figure(name, value, unit, f"{op} {shown}", ok))
        return ok

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def missed(self) -> list[Figure]:
        return [f for f in self.figures if f.ok is False]

    # -- resources -------------------------------------------------------------------------------------------

    def defer(self, callback: Callable[[], Any]) -> None:
        """Run ``callback`` when the scenario ends (last registered, first run)."""
        self._cleanup.callback(callback)

    def database(self, server_dsn: str | None = None, *, migrated: bool = True) -> str:
        """A new database (dropped when the scenario ends), migrated to the latest schema unless told not to."""
        server = server_dsn or self.server_dsn
        name = f"pgqueue_chaos_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        self.defer(lambda: drop_database(server, name))
        dsn = make_conninfo(server, dbname=name)
        if migrated:
            migrate(dsn)
        return dsn

    def fleet(self, dsn: str, *worker_args: str, env: dict[str, str] | None = None) -> Fleet:
        """Worker processes of the chaos app on ``dsn``, all stopped when the scenario ends."""
        folder = Path(tempfile.mkdtemp(prefix="fleet-", dir=self.folder))
        fleet = Fleet(dsn, folder, list(worker_args), env or {})
        self.defer(fleet.stop_all)
        return fleet

    def private_server(self, **settings: str) -> PrivateServer:
        """A PostgreSQL of this scenario's own (stopped and deleted at its end), for restarts and settings."""
        # Not under pytest's tmp folder: pytest resets /tmp/pytest-of-<user> to mode 0700 whenever another session
        # starts, and the server's own user (embedded_postgres, when run as root) must traverse the path.
        server = PrivateServer(Path(tempfile.mkdtemp(prefix="pgqueue-chaos-server-")), **settings)
        self.defer(server.close)
        server.start()
        return server

    def close(self) -> None:
        self._cleanup.close()


def drop_database(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@dataclass(frozen=True)
class Scenario:
    number: int
    title: str
    fn: Callable[..., None]
    quick: dict[str, Any] | None
    full: dict[str, Any]

    def sizes(self, mode: str) -> dict[str, Any] | None:
        return self.quick if mode == "quick" else self.full


SCENARIOS: dict[int, Scenario] = {}

# Scenarios of the issue that wait for a feature not on this branch yet.
PENDING: dict[int, str] = {
}


def scenario(number: int, title: str, *, quick: dict[str, Any] | None,
             full: dict[str, Any]) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register a scenario function ``fn(run, **sizes)``."""

    def register(fn: Callable[..., None]) -> Callable[..., None]:
        if number in SCENARIOS:
            raise ValueError(f"scenario {number} is registered twice")
        SCENARIOS[number] = Scenario(number, title, fn, quick, full)
        return fn

    return register


@dataclass
class Result:
    scenario: Scenario
    mode: str
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.error is None and all(f.ok is not False for f in self.figures)

    def report(self) -> str:
        status = "PASS" if self.passed else "FAIL"
        lines = [f"[{self.scenario.number:>2}] {self.scenario.title} ({self.mode}): {status} in {self.seconds:.1f} s"]
        lines += [f"     {f.line()}" for f in self.figures]
        lines += [f"     note: {n}" for n in self.notes]
        if self.error:
            lines += [f"     error: {line}" for line in self.error.rstrip().splitlines()]
        return "\n".join(lines)

    def failure(self) -> str:
        missed = [f"{f.name} = {f.value} (bound {f.bound})" for f in self.figures if f.ok is False]
        return "; ".join(missed + ([self.error.strip().splitlines()[-1]] if self.error else []))


def run_scenario(sc: Scenario, server_dsn: str, mode: str, folder: Path) -> Result:
    """Run one scenario at the sizes of ``mode``; never raises (the failure is in the result)."""
    sizes = sc.sizes(mode)
    result = Result(sc, mode)
    if sizes is None:
        result.error = f"scenario {sc.number} has no {mode} sizes"
        return result
    run = Run(server_dsn, mode, folder)
    started = time.monotonic()
    try:
        sc.fn(run, **sizes)
    except Exception:
        result.error = traceback.format_exc(limit=6)
    finally:
        try:
            run.close()
        except Exception:
            result.error = (result.error or "") + "cleanup failed:\n" + traceback.format_exc(limit=4)
    result.seconds = time.monotonic() - started
    result.figures, result.notes = run.figures, run.notes
    return result


@contextlib.contextmanager
def scratch(prefix: str = "pgqueue-chaos-") -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix=prefix) as folder:
        yield Path(folder)


def load_scenarios() -> dict[int, Scenario]:
    """Import every scenario module (each registers its scenarios) and return them by number."""
    from tests.chaos import scenarios  # noqa: F401  (imported for its registrations)

    return dict(sorted(SCENARIOS.items()))
