"""A real Prefect server (SQLite) as a local process: for `make up`, tests, benches."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from testbed.processes import Supervisor, free_port, http_ok, kill_group, log, spawn_logged
from testbed.waiting import eventually

PREFECT = str(Path(sys.executable).with_name("prefect"))


@dataclass
class PrefectServer:
    api_url: str
    home: Path
    process: subprocess.Popen[bytes]
    log: Path

    def env(self) -> dict[str, str]:
        """What a client process needs to talk to this server."""
        return {"PREFECT_API_URL": self.api_url, "PREFECT_HOME": str(self.home)}

    def stop(self) -> None:
        kill_group(self.process)


def api_request(method: str, url: str, json: object = None, tries: int = 5) -> httpx.Response:
    """A test's own request to the test bed's Prefect server, retried while it answers
    503, as Prefect's own client does: its SQLite database is busy now and then under
    the suite's load."""
    for attempt in range(1, tries + 1):
        response = httpx.request(method, url, json=json, timeout=10)
        if response.status_code != 503 or attempt == tries:
            return response
        time.sleep(0.5 * attempt)
    raise AssertionError("unreachable")


def server_env(root: Path, for_tests: bool) -> dict[str, str]:
    """Environment for a server whose home and SQLite database live under root.

    For tests the UI and the scheduling services are off: less start-up work and
    no runs created behind a test's back.
    """
    env = {
        **os.environ,
        "PREFECT_HOME": str(root / "prefect-home"),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{root}/prefect.db",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }
    if for_tests:
        for setting in (
            "PREFECT_SERVER_UI_ENABLED", "PREFECT_UI_ENABLED",
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED",
            "PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED",
        ):  # fmt: skip
            env[setting] = "false"
    env.pop("PREFECT_API_URL", None)  # the server must not talk to another server
    return env


def start_prefect_server(
    root: Path,
    *,
    for_tests: bool = True,
    host: str = "127.0.0.1",
    supervisor: Supervisor | None = None,
    timeout: float = 120,
    port: int | None = None,
) -> PrefectServer:
    """Start a server under `root`; return it once healthy.

    `host` is where it listens and how clients reach it (a real node's pods reach
    the host at the node's address). With a `supervisor` the process is recorded
    for `make down`. A `port` and `root` used before start the same server again (its
    SQLite database is kept): a Prefect API that went down and came back.
    """
    home = root / "prefect-home"
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [PREFECT, "server", "start", "--host", host, "--port", str(port)]
    env = server_env(root, for_tests)
    if supervisor:
        proc = supervisor.spawn("prefect-server", argv, env)
        log_file = supervisor.log_path("prefect-server")
    else:
        log_file = root / "prefect-server.log"
        proc = spawn_logged(argv, log_file, env)
    server = PrefectServer(f"http://{host}:{port}/api", home, proc, log_file)

    def alive() -> None:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited early:\n{log_file.read_text()[-3000:]}")

    try:
        t0 = time.monotonic()
        eventually(
            lambda: http_ok(f"{server.api_url}/health"), timeout, "Prefect server", 0.2, alive
        )
        log(f"Prefect server ready ({time.monotonic() - t0:.1f}s)")
    except BaseException:
        server.stop()
        raise
    return server
