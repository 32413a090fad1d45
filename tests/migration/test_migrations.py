"""Migrations: applying every one gives exactly the canonical schema; the wheel ships and loads the SQL."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgqueue.migrate import available, migrate
from pgqueue.queries import sql_dir
from tests.conftest import ROOT

# The shape of every object in schema pgqueue: tables and columns with types, defaults and nullability;
# constraints; indexes; functions with their bodies; views with their definitions; triggers; storage options.
CATALOG = """
SELECT 'column', c.relname || '.' || a.attname,
       format_type(a.atttypid, a.atttypmod) || ' ' || a.attnotnull || ' '
       || coalesce(pg_get_expr(d.adbin, d.adrelid), '')
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = 'pgqueue' AND a.attnum > 0 AND NOT a.attisdropped AND c.relname NOT LIKE 'schema_migrations%%'
UNION ALL
SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
FROM pg_constraint
WHERE connamespace = 'pgqueue'::regnamespace AND conrelid::regclass::text <> 'pgqueue.schema_migrations'
UNION ALL
SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 'pgqueue' AND tablename <> 'schema_migrations'
UNION ALL
SELECT 'function', p.proname, pg_get_functiondef(p.oid) FROM pg_proc p WHERE p.pronamespace = 'pgqueue'::regnamespace
UNION ALL
SELECT 'view', viewname, definition FROM pg_views WHERE schemaname = 'pgqueue'
UNION ALL
SELECT 'trigger', tgname, pg_get_triggerdef(t.oid) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
WHERE c.relnamespace = 'pgqueue'::regnamespace AND NOT t.tgisinternal
UNION ALL
SELECT 'options', relname, coalesce(array_to_string(reloptions, ','), '') FROM pg_class
WHERE relnamespace = 'pgqueue'::regnamespace AND relname NOT LIKE 'schema_migrations%%'
UNION ALL
SELECT 'sequence', sequencename, data_type::text FROM pg_sequences WHERE schemaname = 'pgqueue'
ORDER BY 1, 2
"""


def catalog(dsn: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(CATALOG).fetchall()


def test_all_migrations_equal_the_canonical_schema(fresh_database: Callable[[], str]) -> None:
    migrated, canonical = fresh_database(), fresh_database()
    assert migrate(migrated) == [m.version for m in available()]
    with psycopg.connect(canonical, autocommit=True) as conn:
        conn.execute(sql_dir().joinpath("schema.sql").read_text().encode())
    left, right = catalog(migrated), catalog(canonical)
    assert len(left) > 50
    assert left == right


def test_migrate_is_idempotent_and_recorded(fresh_database: Callable[[], str]) -> None:
    target = fresh_database()
    shipped = available()
    assert migrate(target) == [m.version for m in shipped]
    assert migrate(target) == []
    with psycopg.connect(target) as conn:
        recorded = conn.execute("SELECT version, name FROM pgqueue.schema_migrations ORDER BY version").fetchall()
    assert recorded == [(m.version, m.name) for m in shipped] and recorded[0] == (1, "initial")


@pytest.mark.slow
def test_the_wheel_ships_the_sql_and_loads_it(tmp_path: Path, dsn: str) -> None:
    """Build the wheel, install it alone into a folder, and load schema, queries and migrations from it."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(tmp_path / "dist"),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("pgqueue-*.whl")
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target),
                    str(wheel)], check=True, capture_output=True, timeout=300)
    probe = (
        "import pgqueue, pgqueue.queries as q, pgqueue.migrate as m;"
        "print(pgqueue.__file__); print(q.sql_dir());"
        "print(len(q.queries()), [x.version for x in m.available()]);"
        "import pathlib; print(pathlib.Path(pgqueue.__file__).parent.joinpath('web/static/index.html').is_file())"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    module_file, folder, counts, dashboard = result.stdout.splitlines()
    assert module_file.startswith(str(target)) and folder.startswith(str(target))
    assert counts.split(" ", 1)[1] == str([m.version for m in available()]) and int(counts.split()[0]) > 20
    assert dashboard == "True"  # the dashboard's static pages ship in the wheel
