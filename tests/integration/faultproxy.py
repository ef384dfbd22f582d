"""A real TCP proxy that injects network faults between a client and a real server.

Placed in front of a real backend (the embedded SeaweedFS S3 in the fault tests), it forwards
bytes unchanged until told otherwise. Modes, switchable at any time from the test thread:

* ``pass_through()``: forward both ways (optionally ``slow(...)``: added latency per chunk and
  a bandwidth cap per direction);
* ``refuse()``: close the listening socket and cut every open connection, so new connections
  get ECONNREFUSED (the backend is "down"); the port is bound again on the next mode change;
* ``blackhole()``: accept connections, read and discard what the client sends, never answer
  (a backend that hangs: only the client's timeouts end the wait); open connections stop
  forwarding too.

Nothing about the protocol is known here: it is bytes in, bytes out (or not).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable
from typing import Literal, Self

__all__ = ["FaultProxy"]

Mode = Literal["pass", "refuse", "blackhole"]
_CHUNK = 64 * 1024


class FaultProxy:
    """Listens on ``127.0.0.1:port`` and forwards to ``target`` according to its mode."""

    def __init__(self, target_host: str, target_port: int, *, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.mode: Mode = "pass"
        self.latency_s = 0.0
        self.bytes_per_s: float | None = None
        self.accepted = 0  # connections accepted since start (all modes)
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._closed = False
        self.port = port
        self._listen()

    # ------------------------------------------------------------------ public
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (the proxy's address as an HTTP endpoint)."""
        return f"http://127.0.0.1:{self.port}"

    def pass_through(self) -> None:
        """Forward everything, without added latency or bandwidth cap."""
        self.slow(0.0, None)

    def slow(self, latency_s: float, bytes_per_s: float | None = None) -> None:
        """Forward, but wait ``latency_s`` before each chunk and cap each direction's rate."""
        with self._lock:
            self.latency_s, self.bytes_per_s = latency_s, bytes_per_s
            self.mode = "pass"
        self._listen()

    def refuse(self) -> None:
        """New connections are refused (nothing listens); open ones are cut."""
        with self._lock:
            self.mode = "refuse"
            listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)
        if self._accept_thread is not None:
            self._accept_thread.join(timeout=5)
            self._accept_thread = None
        self.cut()

    def blackhole(self) -> None:
        """Accept and swallow: nothing reaches the server, no byte comes back."""
        with self._lock:
            self.mode = "blackhole"
        self._listen()

    def cut(self) -> int:
        """Reset every open connection (RST); returns how many were open."""
        with self._lock:
            conns, self._conns = self._conns, set()
        for sock in conns:
            with contextlib.suppress(OSError):  # linger 0: close sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            _close(sock)
        return len(conns)

    def close(self) -> None:
        """Stop listening and cut everything (idempotent)."""
        self._closed = True
        self.refuse()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ machinery
    def _listen(self) -> None:
        with self._lock:
            if self._listener is not None or self._closed:
                return
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self.port))
            sock.listen(128)
            self.port = int(sock.getsockname()[1])
            self._listener = sock
            self._accept_thread = threading.Thread(
                target=self._accept_loop, args=(sock,), name="faultproxy-accept", daemon=True
            )
        self._accept_thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # the listener was closed (refuse/close)
                return
            self.accepted += 1
            self._track(client)
            if self.mode == "blackhole":
                self._spawn(self._swallow, client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._drop(client)
                continue
            self._track(upstream)
            self._spawn(self._pump, client, upstream)
            self._spawn(self._pump, upstream, client)

    def _spawn(self, target: Callable[..., None], *args: socket.socket) -> None:
        threading.Thread(target=target, args=args, name="faultproxy-pump", daemon=True).start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._conns.add(sock)

    def _drop(self, *socks: socket.socket) -> None:
        with self._lock:
            for s in socks:
                self._conns.discard(s)
        for s in socks:
            _close(s)

    def _swallow(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while client.recv(_CHUNK):
                pass
        self._drop(client)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy ``src`` → ``dst`` chunk by chunk, applying the mode at every chunk."""
        try:
            while True:
                rate = self.bytes_per_s
                data = src.recv(min(_CHUNK, max(1024, int(rate / 20))) if rate else _CHUNK)
                if not data:  # HTTP clients never half-close: one side done ends the connection
                    break
                if self.mode == "blackhole":
                    continue  # swallowed: the other side waits for an answer that never comes
                if self.latency_s:
                    time.sleep(self.latency_s)
                if rate:
                    time.sleep(len(data) / rate)
                dst.sendall(data)
        except OSError:
            pass
        self._drop(src, dst)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
