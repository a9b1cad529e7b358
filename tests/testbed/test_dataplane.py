"""The data-plane fixtures are real and leave nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from testbed.dataplane import start_ray_head, stop_ray
from testbed.prefect_server import start_prefect_server
from testbed.processes import pids_mentioning

pytestmark = [pytest.mark.ray, pytest.mark.prefect]


def test_prefect_server_serves_the_api_and_stops_cleanly(tmp_path: Path) -> None:
    server = start_prefect_server(tmp_path)
    try:
        with urllib.request.urlopen(f"{server.api_url}/admin/version", timeout=5) as resp:
            assert json.load(resp).startswith("3.")
        assert (tmp_path / "prefect.db").exists()  # the throwaway SQLite database
    finally:
        server.stop()
    assert server.process.poll() is not None
    assert pids_mentioning(str(server.home)) == []


def test_ray_head_uses_token_auth_and_stops_cleanly() -> None:
    cluster = start_ray_head(num_cpus=1, auth_mode="token")
    code = "import ray; ray.init(); print(ray.get(ray.put(41)) + 1)"
    try:
        ok = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin", "HOME": str(cluster.temp_dir), **cluster.env()},
        )  # fmt: skip
        assert ok.stdout.strip().endswith("42"), ok.stderr[-2000:]
        # Without the token the same driver is refused: the head really checks it.
        env = {k: v for k, v in cluster.env().items() if k != "RAY_AUTH_TOKEN"}
        refused = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin", "HOME": str(cluster.temp_dir), **env},
        )  # fmt: skip
        assert refused.returncode != 0
    finally:
        stop_ray(cluster)
    assert pids_mentioning(str(cluster.temp_dir)) == []
