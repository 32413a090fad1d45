"""Every test run gets its own database on a real PostgreSQL, and drops it at the end.

The server: ``$PGQUEUE_DSN`` when set (CI points it at the local PostgreSQL 15), else an embedded
PostgreSQL 18 started in a temporary folder for this run. No mocks.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from pgqueue import App, embedded
from pgqueue.migrate import migrate

ROOT = Path(__file__).resolve().parent.parent


def _name_leaked_connections() -> None:
    """A connection dropped unclosed warns when the garbage collector finds it, often tests later, and the
    warning (an error here) says nothing of where it came from. Keep each connection's birthplace and print it
    beside the warning, so a leak names its owner in the failing test's captured stderr."""
    base = psycopg.BaseConnection
    born_init, born_del = base.__init__, base.__del__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        born_init(self, *args, **kwargs)
        self._pgqueue_test_born = traceback.extract_stack(limit=16)[:-1]

    def delete(self: Any, *args: Any) -> None:
        if hasattr(self, "pgconn") and not self.closed and not hasattr(self, "_pool"):
            where = "".join(traceback.format_list(getattr(self, "_pgqueue_test_born", [])))
            print(f"leaked connection {object.__repr__(self)} was opened at:\n{where}", file=sys.stderr)
        born_del(self, *args)

    base.__init__ = init  # type: ignore[method-assign]
    base.__del__ = delete  # type: ignore[method-assign]


_name_leaked_connections()


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    """A DSN for the server's maintenance database."""
    env = os.environ.get("PGQUEUE_DSN", "").strip()
    if env:
        yield env
        return
    home = Path(tempfile.mkdtemp(prefix="pgqueue-test-"))
    try:
        yield embedded.ensure_running(home)
    finally:
        embedded.stop(home)
        shutil.rmtree(home, ignore_errors=True)


def create_database(server_dsn: str, name: str) -> str:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server_dsn, dbname=name)


def drop_database(server_dsn: str, name: str) -> None:
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def fresh_database(server_dsn: str) -> Iterator[Callable[[], str]]:
    """Make more empty databases (dropped at the end of the run)."""
    made: list[str] = []

    def make() -> str:
        name = f"pgqueue_test_{uuid.uuid4().hex[:12]}"
        made.append(name)
        return create_database(server_dsn, name)

    yield make
    for name in made:
        drop_database(server_dsn, name)


@pytest.fixture(scope="session")
def dsn(fresh_database: Callable[[], str]) -> str:
    """The run's migrated test database."""
    database = fresh_database()
    migrate(database)
    return database


def _clean(dsn: str) -> None:
    """Empty every pgqueue table but the migration record."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        tables = [sql.Identifier("pgqueue", name) for (name,) in conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'pgqueue' AND tablename <> 'schema_migrations'")]
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tables)))


@pytest.fixture
def app(dsn: str) -> Iterator[App]:
    """An App on the test database, with empty queue tables."""
    _clean(dsn)
    application = App(dsn=dsn)
    yield application
    application.close()


# What testing.running_worker and each worker's lease renewer name their threads.
_WORKER_THREADS = {"pgqueue-test-worker", "pgqueue-heartbeat"}


@pytest.fixture(autouse=True)
def no_worker_outlives_its_test() -> Iterator[None]:
    """A worker thread or lease renewer still running after its test would heartbeat into the tests after it
    (and hold locks against their TRUNCATE): fail the test that left it, not a later one."""
    yield
    deadline = time.monotonic() + 2.0
    while (left := sorted(t.name for t in threading.enumerate() if t.name in _WORKER_THREADS)) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"threads left running by this test: {left}"


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection for looking at the database directly."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


def connect_when_free(dsn: str, autocommit: bool, timeout: float = 60) -> psycopg.Connection[Any]:
    """A connection, waiting for a free slot: the server may be shared, and tests that open 64 connections
    take most of its default 100."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return psycopg.connect(dsn, autocommit=autocommit)
        except psycopg.OperationalError as err:
            # A refused connection carries no SQLSTATE in psycopg, only libpq's text.
            if "too many clients" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def wait_for(condition: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02,
              message: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)
