"""The chaos benchmark's partition proxy: bytes pass both ways; cut, nothing passes; healed, the frozen
connections are reset and new ones pass again. A plain echo server on loopback stands for the broker."""
from __future__ import annotations

import socket
import socketserver
import threading
from typing import Iterator

import pytest

from bench.netfault import PartitionProxy


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        while data := self.request.recv(65536):
            self.request.sendall(data)


@pytest.fixture
def proxy() -> Iterator[PartitionProxy]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Echo)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with PartitionProxy(server.server_address[1]) as p:
        yield p
    server.shutdown()
    server.server_close()


def _connect(p: PartitionProxy) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", p.port), timeout=5)
    s.settimeout(5)
    return s


def _echo(s: socket.socket, data: bytes) -> bytes:
    s.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = s.recv(65536)
        if not chunk:
            break
        got += chunk
    return got


def test_bytes_pass_both_ways(proxy: PartitionProxy) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB, several reads
    with _connect(proxy) as s:
        assert _echo(s, b"hello") == b"hello"
        assert _echo(s, big) == big
    assert proxy.connections == 1


def test_a_cut_passes_nothing_and_the_heal_resets_what_it_froze(proxy: PartitionProxy) -> None:
    before = _connect(proxy)
    assert _echo(before, b"x") == b"x"
    proxy.cut()
    assert proxy.is_cut
    before.sendall(b"lost in the partition")
    during = _connect(proxy)  # accepted, then held: a black hole, not a refusal
    during.sendall(b"also lost")
    for s in (before, during):
        s.settimeout(1.0)
        with pytest.raises(socket.timeout):
            s.recv(100)
    proxy.heal()
    assert not proxy.is_cut and proxy.reset == 2 and proxy.partitions == 1
    for s in (before, during):
        s.settimeout(5)
        with pytest.raises((ConnectionResetError, BrokenPipeError)):
            if s.recv(100) == b"":  # the reset may surface as an end of stream first
                s.sendall(b"y")
                s.recv(100)
        s.close()
    with _connect(proxy) as after:  # a new connection passes again
        assert _echo(after, b"again") == b"again"


def test_heal_without_a_cut_keeps_connections(proxy: PartitionProxy) -> None:
    with _connect(proxy) as s:
        assert _echo(s, b"a") == b"a"
        proxy.heal()
        assert _echo(s, b"b") == b"b" and proxy.reset == 0
