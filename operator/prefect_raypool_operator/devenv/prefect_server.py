"""A local Prefect server (SQLite) for the dev environment and the tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from prefect_raypool_operator.devenv.processes import Supervisor, free_port, http_ok

PREFECT = str(Path(sys.executable).with_name("prefect"))


def server_env(root: Path, for_tests: bool = False) -> dict[str, str]:
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


def server_argv(port: int) -> list[str]:
    return [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port)]


def start_prefect_server(sup: Supervisor, timeout: float = 120) -> str:
    """Start a Prefect server under `sup`; return its API URL once healthy."""
    root = sup.state_dir / "prefect"
    (root / "prefect-home").mkdir(parents=True, exist_ok=True)
    port = free_port()
    sup.spawn("prefect-server", server_argv(port), env=server_env(root))
    api_url = f"http://127.0.0.1:{port}/api"
    sup.wait("Prefect server", lambda: http_ok(f"{api_url}/health"), timeout)
    (sup.state_dir / "prefect-api-url").write_text(api_url + "\n")
    return api_url
