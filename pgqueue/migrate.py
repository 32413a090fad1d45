"""Numbered schema migrations: ``sql/migrations/NNNN_name.sql``, each applied once, in number order.

Numbers are unique and increasing but need not be contiguous; any shipped migration a database lacks is
applied, so features developed side by side can each reserve a number.

Every run takes a session advisory lock first, so any number of hosts may run ``pgqueue migrate`` at the same
time: one applies, the others wait and then find nothing to do. Each migration runs in its own transaction
together with the row that records it, so a failed migration leaves nothing half-applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from pgqueue.connection import connect
from pgqueue.errors import DatabaseError, SchemaNotMigrated, first_line, from_psycopg
from pgqueue.queries import queries, sql_dir

_FILE = re.compile(r"(\d{4})_(\w+)\.sql")
# 'pgqu' + 'migr' as a number: the advisory lock every migrator takes.
MIGRATION_LOCK = 0x70677175_6D696772


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@dataclass(frozen=True)
class MigrationStatus:
    version: int
    name: str
    applied_at: datetime | None


def available() -> list[Migration]:
    """The migrations shipped with this version of pgqueue, in order."""
    found = []
    for entry in sql_dir().joinpath("migrations").iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise DatabaseError(f"two migrations share a number: {versions}")
    return found


def latest_version() -> int:
    return available()[-1].version


def _meta_sql() -> dict[str, str]:
    return queries()


def applied(conn: psycopg.Connection[Any]) -> dict[int, datetime]:
    meta = _meta_sql()
    if conn.execute(meta["migrations_table_exists"]).fetchone() == (False,):
        return {}
    rows = conn.execute(meta["migrations_applied"]).fetchall()
    return {int(version): applied_at for version, applied_at in rows}


def status(dsn: str) -> list[MigrationStatus]:
    """Every known migration with when it was applied (None: pending)."""
    with connect(dsn) as conn:
        done = _guard(lambda: applied(conn))
    return [MigrationStatus(m.version, m.name, done.get(m.version)) for m in available()]


def migrate(dsn: str) -> list[int]:
    """Apply what is pending; returns the versions applied (empty when up to date)."""
    meta = _meta_sql()
    with connect(dsn) as conn:
        def run() -> list[int]:
            conn.execute(meta["migrations_lock"], {"key": MIGRATION_LOCK})
            try:
                conn.execute(meta["migrations_prepare"])
                done = applied(conn)
                new = []
                for migration in available():
                    if migration.version in done:
                        continue
                    with conn.transaction():
                        conn.execute(migration.sql.encode())  # several statements: simple query protocol
                        conn.execute(meta["migrations_record"],
                                     {"version": migration.version, "name": migration.name})
                    new.append(migration.version)
                return new
            finally:
                if not conn.broken:
                    conn.execute(meta["migrations_unlock"], {"key": MIGRATION_LOCK})

        applied_now: list[int] = _guard(run)
        return applied_now


def check_current(conn: psycopg.Connection[Any]) -> None:
    """SchemaNotMigrated unless the database has every migration this code knows."""
    done = _guard(lambda: applied(conn))
    missing = [m.version for m in available() if m.version not in done]
    if missing:
        have = max(done) if done else 0
        raise SchemaNotMigrated(
            f"the database's pgqueue schema is at version {have} but this pgqueue needs {latest_version()}; "
            "run `pgqueue migrate`"
        )


def _guard(fn: Any) -> Any:
    try:
        return fn()
    except psycopg.Error as err:
        mapped = from_psycopg(err)
        if isinstance(mapped, SchemaNotMigrated):
            raise mapped from err
        raise DatabaseError(f"migration failed: {first_line(err)}") from err
