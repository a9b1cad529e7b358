"""A tiny HTTP server on 127.0.0.1 standing in for a misbehaving Prefect API: it
answers what the test tells it to (echoed bodies, HTML, lists) and records every
request it got (path and headers), so a test can also prove nothing was sent."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]


# (method, path) -> (status, content type, body)
Answer = Callable[[str, str], tuple[int, str, bytes]]


@dataclass
class StubServer:
    url: str  # the base URL, ending in /api
    requests: list[Request] = field(default_factory=list)


@contextmanager
def stub_server(answer: Answer) -> Iterator[StubServer]:
    stub = StubServer("")

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            stub.requests.append(Request(self.command, self.path, dict(self.headers.items())))
            status, content_type, body = answer(self.command, self.path)
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PATCH = do_DELETE = _any

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}/api"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
