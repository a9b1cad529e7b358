"""A tiny HTTP server on 127.0.0.1 standing in for a misbehaving Prefect API: it
answers what the test tells it to (echoed bodies, HTML, lists) and records every
request it got (path and headers), so a test can also prove nothing was sent. One
stub may serve a whole session (an operator's allow-list names its URL): `answering`
gives it a test's answers and a fresh record."""

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


def not_found(method: str, path: str) -> tuple[int, str, bytes]:
    return 404, "application/json", b'{"detail": "Not Found"}'


@dataclass
class StubServer:
    url: str  # the base URL, ending in /api
    answer: Answer = not_found
    requests: list[Request] = field(default_factory=list)

    @contextmanager
    def answering(self, answer: Answer) -> Iterator[StubServer]:
        """This stub answering `answer`, its record cleared; 404s again afterwards."""
        self.answer, self.requests = answer, []
        try:
            yield self
        finally:
            self.answer = not_found


@contextmanager
def stub_server(answer: Answer = not_found) -> Iterator[StubServer]:
    stub = StubServer("", answer)

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            stub.requests.append(Request(self.command, self.path, dict(self.headers.items())))
            status, content_type, body = stub.answer(self.command, self.path)
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
