"""Commands of the outbox: ``pgqueue relay`` and ``pgqueue outbox list|show|replay``."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from datetime import timedelta
from typing import Annotated

import typer

from pgqueue.errors import ValidationError
from pgqueue.once.relay import Relay, RelayConfig

outbox_cli = typer.Typer(no_args_is_help=True, help="The outbox: list, show and replay messages.")


def relay(
    app_path: Annotated[str, typer.Argument(metavar="MODULE:APP", help="The App whose sinks deliver, "
                                                                        "e.g. myproj.tasks:app")],
    concurrency: Annotated[int, typer.Option("--concurrency", "-c", min=1, help="Deliveries at once.")] = 16,
    lease: Annotated[float, typer.Option(help="Seconds a claimed message is this relay's.")] = 60.0,
    poll_interval: Annotated[float, typer.Option(help="Seconds between election tries and safety polls.")] = 5.0,
    max_attempts: Annotated[int, typer.Option(min=1, help="Attempts before a message is dead.")] = 15,
    retry_base: Annotated[float, typer.Option(help="First retry delay in seconds (doubles each time).")] = 1.0,
    retry_cap: Annotated[float, typer.Option(help="Longest retry delay in seconds.")] = 900.0,
    retention_days: Annotated[float, typer.Option(help="Days delivered messages are kept.")] = 7.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Deliver the outbox to its sinks until SIGTERM/SIGINT. Run several: one leads, the others stand by."""
    from pgqueue.cli import load_app

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise ValidationError(f"invalid --log-level {log_level!r}: use debug, info, warning or error")
    logging.getLogger().setLevel(level)
    app = load_app(app_path)
    runner = Relay(app, RelayConfig(concurrency=concurrency, lease=lease, poll_interval=poll_interval,
                                    max_attempts=max_attempts, retry_base=retry_base, retry_cap=retry_cap,
                                    retention=timedelta(days=retention_days)))

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, runner.stop)
        await runner.run()

    asyncio.run(main())


@outbox_cli.command("list")
def outbox_list(
    state: Annotated[str | None, typer.Option(help="pending, delivered or dead.")] = None,
    topic: Annotated[str | None, typer.Option(help="Only this topic.")] = None,
    limit: Annotated[int, typer.Option(min=1, help="At most this many, newest first.")] = 50,
) -> None:
    """List outbox messages, newest first, with their attempts and last error."""
    from pgqueue.cli import _app, _table

    rows = _app().outbox_messages(state=state, topic=topic, limit=limit)
    _table(["id", "topic", "key", "state", "attempt", "created_at", "finished_at", "last_error"],
           [(m.id, m.topic, m.key, m.state, m.attempt, m.created_at, m.finished_at, m.last_error) for m in rows])


@outbox_cli.command("show")
def outbox_show(message_id: Annotated[int, typer.Argument(help="Message id.")]) -> None:
    """Show one message: payload, destination, delivery id, attempts, last error."""
    from pgqueue.cli import _app, _cell

    message = _app().outbox_message(message_id)
    for key in ("id", "topic", "key", "url", "delivery_id", "state", "attempt", "created_at", "available_at",
                "finished_at", "last_error"):
        typer.echo(f"{key:>12}: {_cell(getattr(message, key))}")
    typer.echo(f"{'payload':>12}: {json.dumps(message.payload)}")


@outbox_cli.command("replay")
def outbox_replay(
    ids: Annotated[list[int] | None, typer.Argument(help="Message ids.")] = None,
    topic: Annotated[str | None, typer.Option(help="All dead messages of this topic.")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every dead message.")] = False,
) -> None:
    """Deliver dead messages again (same delivery ids, a fresh set of attempts)."""
    from pgqueue.cli import _app

    count = _app().replay(*(ids or []), topic=topic, all=all_)
    typer.echo(f"replaying {count} dead messages")
