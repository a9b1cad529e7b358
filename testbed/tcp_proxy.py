"""A loopback TCP proxy that can freeze: connections stay open, bytes stop.

Stands between a client and the API server (TLS passes through untouched) to make
a watch stall the way a dead NAT entry or a hung load balancer does: no error, no
close, just silence. While frozen, new connections are accepted (and connected
upstream) but nothing is forwarded either way; `thaw()` lets everything flow again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml


class FreezableProxy:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def start(self) -> None:
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._listener.close()
        with self._lock:
            for sock in self._sockets:
                with contextlib.suppress(OSError):
                    sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                server = socket.create_connection(self.upstream)
            except OSError:
                if self._closed:
                    return
                continue
            with self._lock:
                self._sockets += [client, server]
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while chunk := src.recv(65536):
                self._flowing.wait()  # frozen: hold this chunk, and the kernel the rest
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.close()


def kubeconfig_through(kubeconfig: Path, port: int, out: Path) -> Path:
    """A copy of `kubeconfig` whose clusters are reached through 127.0.0.1:port (the
    API server's certificate names 127.0.0.1, so TLS still verifies)."""
    doc = yaml.safe_load(kubeconfig.read_text())
    for cluster in doc["clusters"]:
        cluster["cluster"]["server"] = f"https://127.0.0.1:{port}"
    out.write_text(yaml.safe_dump(doc))
    return out


def upstream_of(kubeconfig: Path) -> tuple[str, int]:
    server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    host, _, port = server.removeprefix("https://").rstrip("/").rpartition(":")
    return host, int(port)


@contextlib.contextmanager
def freezable(kubeconfig: Path, out: Path) -> Iterator[tuple[FreezableProxy, Path]]:
    """A running proxy to the API server of `kubeconfig`, and a kubeconfig through it."""
    proxy = FreezableProxy(upstream_of(kubeconfig))
    proxy.start()
    try:
        yield proxy, kubeconfig_through(kubeconfig, proxy.port, out)
    finally:
        proxy.close()
