"""Least-privilege roles: ``pgqueue roles`` prints (or, with ``--apply``, runs) the SQL that creates them.

::

    pgqueue roles                    # print the SQL for pgqueue_enqueue, pgqueue_worker, pgqueue_admin
    pgqueue roles --apply            # run it (as the schema's owner or a superuser)
    pgqueue roles --prefix shop_     # shop_enqueue, shop_worker, shop_admin

The roles are NOLOGIN groups; grant them to the login roles your services use. The enqueue role may only
call ``pgqueue.enqueue(...)`` (the SQL API); the worker role runs workers; the admin role manages the dead
letters and history. Run it again after ``pgqueue migrate`` so new objects get their grants.
"""

from __future__ import annotations

import re
from typing import Annotated

import psycopg
import typer
from psycopg import sql

from pgqueue.connection import connect
from pgqueue.errors import ValidationError, from_psycopg
from pgqueue.queries import q

_PREFIX = re.compile(r"[a-z_][a-z0-9_]{0,40}")
KINDS = ("enqueue", "worker", "admin")


def role_names(prefix: str = "pgqueue_") -> dict[str, str]:
    """``{"enqueue": "pgqueue_enqueue", ...}``; the prefix is checked before any SQL is built."""
    if not _PREFIX.fullmatch(prefix):
        raise ValidationError(f"invalid role prefix {prefix!r}: use 1-41 lowercase letters, digits and _")
    return {kind: f"{prefix}{kind}" for kind in KINDS}


def roles_sql(prefix: str = "pgqueue_") -> list[sql.Composed]:
    """The statements that create the roles and grant their rights."""
    names = role_names(prefix)
    params: dict[str, sql.Composable] = {kind: sql.Identifier(name) for kind, name in names.items()}
    params.update({f"{kind}_name": sql.Literal(name) for kind, name in names.items()})
    return [sql.SQL(q(name)).format(**params) for name in ("roles_create", "roles_grant")]


def roles_command(
    prefix: Annotated[str, typer.Option(help="Role names: PREFIX + enqueue, worker, admin.")] = "pgqueue_",
    apply: Annotated[bool, typer.Option("--apply", help="Run the SQL instead of printing it.")] = False,
) -> None:
    """Print (or --apply) the SQL for least-privilege roles: enqueue-only, worker and admin."""
    from pgqueue.cli import _app

    statements = roles_sql(prefix)
    if not apply:
        for statement in statements:
            typer.echo(statement.as_string(None).strip() + ";\n")
        return
    with connect(_app().dsn) as conn:
        try:
            with conn.transaction():
                for statement in statements:
                    conn.execute(statement.as_string(conn).encode())  # several statements: simple protocol
        except psycopg.Error as err:
            raise from_psycopg(err) from err
    typer.echo(f"roles {', '.join(role_names(prefix).values())} are ready")
