"""A TCP forwarder on loopback that a test can turn into a black hole: connections
stay open and requests hang, as in a network partition (no refusal, no reset)."""

from __future__ import annotations

import contextlib
import socket
import threading


class BlackholeProxy:
    """Forwards 127.0.0.1:<port> to `target` until `blackhole()`; from then on, bytes
    in either direction are dropped and new connections are accepted but never served."""

    def __init__(self, target: tuple[str, int]):
        self.target = target
        self.dropping = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self) -> None:
        self.dropping.set()

    def close(self) -> None:
        for s in [self.listener, *self._sockets]:
            with contextlib.suppress(OSError):
                s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            if self.dropping.is_set():
                continue  # held open, never answered
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self._sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                if not self.dropping.is_set():
                    dst.sendall(data)
