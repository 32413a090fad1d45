"""A TCP relay between workers and PostgreSQL that counts database round trips, whatever the client library.

A round trip is a turn of the conversation: the client sends, then waits for the server. Each time a client
sends after the server has spoken (or first), that is one more turn, so pipelined statements sent together
count once and a notification the server pushes is followed by a new turn. Used only for the round-trip pass,
never for the timed figures (the relay costs time).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass


@dataclass
class _Conversation:
    client_turn: bool = False  # the client spoke last


class RoundTripProxy:
    """``with RoundTripProxy("127.0.0.1", 5432) as proxy: ... proxy.port ... proxy.round_trips``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = 0
        self._target_port = port
        self.round_trips = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="bench-proxy", daemon=True)
        self._server: asyncio.AbstractServer | None = None

    def __enter__(self) -> RoundTripProxy:
        self._thread.start()
        self._started.wait(10)
        return self

    def __exit__(self, *exc: object) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def reset(self) -> None:
        self.round_trips = 0
        self.connections = 0

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._relay, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            server_r, server_w = await asyncio.open_connection(self.host, self._target_port)
        except OSError:
            client_w.close()
            return
        talk = _Conversation()

        async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, from_client: bool) -> None:
            try:
                while data := await reader.read(65536):
                    if from_client and not talk.client_turn:
                        self.round_trips += 1
                    talk.client_turn = from_client
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                writer.close()

        await asyncio.gather(pump(client_r, server_w, True), pump(server_r, client_w, False))
