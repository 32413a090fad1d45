"""``pgqueue serve`` and ``pgqueue token``: the web layer's commands, registered in ``pgqueue.cli``.

::

    pgqueue token create --scope admin --name ops     # the token alone on the last line of stdout
    pgqueue token list
    pgqueue token revoke 3
    pgqueue serve --host 127.0.0.1 --port 8080 [--local-read] [--public-metrics] [--app myproj.tasks:app] [--relay]
"""

from __future__ import annotations

import logging
import socket
from types import FrameType
from typing import Annotated

import typer

from pgqueue.connection import connect, resolve_dsn
from pgqueue.errors import MissingDependency, ValidationError
from pgqueue.migrate import check_current
from pgqueue.web import auth

token_cli = typer.Typer(no_args_is_help=True, help="API tokens for pgqueue serve: create, list, revoke.")


def _dsn(ctx: typer.Context) -> str:
    return resolve_dsn(ctx.find_root().params.get("dsn") or None)


@token_cli.command("create")
def token_create(
    ctx: typer.Context,
    scope: Annotated[list[str], typer.Option("--scope", "-s", help="read, enqueue or admin (repeat).")],
    name: Annotated[str, typer.Option(help="A name to tell tokens apart.")] = "token",
) -> None:
    """Create an API token; it is printed once, alone on the last line."""
    dsn = _dsn(ctx)
    token = auth.create_token(dsn, name, scope)
    typer.echo(f"created token {name!r} with scopes {', '.join(auth.check_scopes(scope))}; "
               "it is shown only now:")
    typer.echo(token)


@token_cli.command("list")
def token_list(ctx: typer.Context) -> None:
    """List tokens (never the tokens themselves: only their prefixes)."""
    from pgqueue.cli import _table

    rows = auth.list_tokens(_dsn(ctx))
    _table(["id", "name", "prefix", "scopes", "created_at", "last_used_at", "revoked_at"],
           [(t.id, t.name, t.prefix + "...", t.scopes, t.created_at, t.last_used_at, t.revoked_at) for t in rows])


@token_cli.command("revoke")
def token_revoke(ctx: typer.Context, token_id: Annotated[int, typer.Argument(help="Token id (see list).")]) -> None:
    """Revoke a token: requests with it are refused from now on."""
    if not auth.revoke_token(_dsn(ctx), token_id):
        raise ValidationError(f"no live token with id {token_id}")
    typer.echo(f"revoked token {token_id}")


def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8080,
    local_read: Annotated[bool, typer.Option("--local-read", help="Requests from localhost may read without a "
                                                                  "token (the dashboard opens read-only).")] = False,
    public_metrics: Annotated[bool, typer.Option("--public-metrics", help="/metrics needs no token.")] = False,
    app_path: Annotated[str | None, typer.Option("--app", metavar="MODULE:APP",
                                                 help="Check enqueued tasks and arguments against this app.")
                        ] = None,
    relay: Annotated[bool, typer.Option("--relay", help="Also deliver the outbox (alert webhooks among it), as "
                                                        "`pgqueue relay` does; give --app if it routes topics "
                                                        "to sinks.")] = False,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Serve the REST API (/api/v1, /docs), the live dashboard (/) and Prometheus /metrics."""
    try:
        import uvicorn

        from pgqueue.once.relay import RelayConfig
        from pgqueue.web.access import Settings
        from pgqueue.web.server import create_app, shutting_down
    except ImportError as err:
        raise MissingDependency(f"pgqueue serve needs the web extra: pip install 'pgqueue[web]' "
                                f"(missing: {err.name})") from err
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise ValidationError(f"invalid --log-level {log_level!r}: use debug, info, warning or error")
    logging.getLogger("pgqueue").setLevel(level)
    app = None
    if app_path:
        from pgqueue.cli import load_app

        app = load_app(app_path)
    dsn = _dsn(ctx)
    with connect(dsn) as conn:
        check_current(conn)
    settings = Settings(dsn=dsn, local_read=local_read, public_metrics=public_metrics, app=app,
                        max_payload_bytes=app.max_payload_bytes if app else 1024 * 1024,
                        relay=RelayConfig() if relay else None)
    sock = _bind(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    typer.echo(f"pgqueue serve: dashboard http://{shown}:{bound_port}/  API /api/v1  docs /docs  "
               f"metrics /metrics", err=False)
    web_app = create_app(settings)
    config = uvicorn.Config(web_app, log_level=level, access_log=level <= logging.DEBUG,
                            timeout_graceful_shutdown=3, lifespan="on")

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            shutting_down(web_app)  # end the dashboards' event streams so shutdown does not wait on them
            super().handle_exit(sig, frame)
            # uvicorn re-raises the signal once it has stopped; a clean stop on SIGTERM exits 0, as workers do.
            getattr(self, "_captured_signals", []).clear()

    Server(config).run(sockets=[sock])


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise ValidationError(f"cannot listen on {host!r}: {err.strerror}") from err
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise ValidationError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port") from err
    # Listening now (not when uvicorn starts) means a client that reads the printed URL and connects at once
    # waits in the backlog instead of being refused.
    sock.listen(2048)
    return sock
