"""A loopback TCP proxy that can cut one client off from its server: a socket-level network partition.

Why a proxy and not a paused process: a partition leaves both ends running and lets neither know at once. The
camera keeps classifying and selecting, its MQTT client sees writes that never get an answer, and the broker
sees a session that goes quiet. Put this proxy between one camera and the broker (the camera's broker URL names
the proxy's port); it forwards bytes, so TLS with client certificates passes through it unchanged.

* :meth:`PartitionProxy.cut`: from now on no byte crosses in either direction. Open connections are frozen
  (what either end sends is read and held, never delivered); new connections are accepted and held the same
  way, as a black hole would.
* :meth:`PartitionProxy.heal`: every connection that lived through the partition is reset at both ends (their
  state is lost, as a stateful firewall or NAT that dropped its table would), and new connections are forwarded
  again. The client reconnects and resends what it had not seen acknowledged.

It runs an asyncio loop on its own thread and listens on 127.0.0.1 only.
"""
from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

__all__ = ["PartitionProxy"]


class PartitionProxy:
    """``PartitionProxy(upstream_port)``; ``.port`` is where clients connect. ``start``/``cut``/``heal``/``stop``."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self.connections = 0      # connections accepted
        self.reset = 0            # connections reset when a partition healed
        self.partitions = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="partition-proxy", daemon=True)
        self._open: asyncio.Event | None = None
        self._generation = 0      # bumped at each cut: connections of an older generation die at the heal
        self._live: dict[int, tuple[int, list[asyncio.StreamWriter]]] = {}
        self._server: asyncio.AbstractServer | None = None

    # -- control (any thread) --------------------------------------------------------------------------------
    def start(self) -> "PartitionProxy":
        self._thread.start()
        self._call(self._start())
        return self

    def cut(self) -> None:
        """Stop forwarding, at once and in both directions."""
        self._call(self._cut())

    def heal(self) -> None:
        """Reset every connection the partition froze, then forward again."""
        self._call(self._heal())

    @property
    def is_cut(self) -> bool:
        return self._open is not None and not self._open.is_set()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._call(self._stop())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def __enter__(self) -> "PartitionProxy":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(30)

    # -- the loop ----------------------------------------------------------------------------------------------
    async def _start(self) -> None:
        self._open = asyncio.Event()
        self._open.set()
        self._server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _cut(self) -> None:
        assert self._open is not None
        if self._open.is_set():
            self._generation += 1
            self.partitions += 1
            self._open.clear()

    async def _heal(self) -> None:
        assert self._open is not None
        if self._open.is_set():
            return
        for key, (_, writers) in list(self._live.items()):  # all of them lived through the partition
            self.reset += 1
            for w in writers:
                _abort(w)
            self._live.pop(key, None)
        self._open.set()

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for _, writers in self._live.values():
            for w in writers:
                _abort(w)
        self._live.clear()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        assert self._open is not None
        self.connections += 1
        key = id(writer)
        gen = self._generation
        self._live[key] = (gen, [writer])
        await self._open.wait()  # a connection made during a partition is held, like the rest of it
        if self._live.get(key, (None,))[0] != gen:
            return  # reset at the heal
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(writer)
            self._live.pop(key, None)
            return
        self._live[key] = (gen, [writer, up_writer])
        await asyncio.gather(self._pipe(reader, up_writer, key), self._pipe(up_reader, writer, key))
        self._live.pop(key, None)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: int) -> None:
        assert self._open is not None
        try:
            while True:
                data = await reader.read(65536)
                if not self._open.is_set():
                    await self._open.wait()  # held, and dropped if the heal resets this connection
                    if key not in self._live:
                        return
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if key in self._live:  # one side ended: end the other (a reset connection is already aborted)
                for w in self._live[key][1]:
                    _abort(w)


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with a reset (SO_LINGER 0), as a connection whose state vanished would end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
    writer.transport.abort()
