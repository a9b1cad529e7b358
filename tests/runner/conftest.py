"""Runner test wiring: one Ray connection per session, against the `ray_head` cluster.

Flows in these tests find Ray already initialized in the test process and use it
(as a pre-existing instance, which the runner must leave running). Behaviour that
needs a fresh process (address resolution, starting and stopping an owned local
Ray, token errors) runs flows in subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

#: Keep Ray's own traffic on loopback: without this Ray replaces 127.0.0.1 in a
#: driver's address by the host's outward IP. Read by Ray at import time.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
os.environ.update(LOOPBACK_ENV)

import pytest  # noqa: E402
import ray  # noqa: E402
from prefect.client.orchestration import SyncPrefectClient, get_client  # noqa: E402

from testbed import REPO  # noqa: E402
from testbed.dataplane import RayCluster, patched_environ  # noqa: E402
from testbed.prefect_server import PrefectServer  # noqa: E402
from testbed.waiting import eventually  # noqa: E402

__all__ = ["REPO", "eventually"]


@pytest.fixture(scope="session")
def ray_session(ray_head: RayCluster, prefect_server: PrefectServer) -> Iterator[RayCluster]:
    """This process connected to `ray_head` (token auth) for the whole session."""
    env = {**LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray_head.token or ""}
    with patched_environ(env):
        # Ray caches its auth mode and token at import; make it re-read them.
        from ray._private.ray_constants import ENABLE_RAY_CLUSTER
        from ray._raylet import AuthenticationTokenLoader, Config

        assert not ENABLE_RAY_CLUSTER, "ray was imported before tests/runner/conftest.py"
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
        ray.init(address=ray_head.address, namespace="prefect-raypool-tests", logging_level="ERROR")
        try:
            yield ray_head
        finally:
            ray.shutdown()


@pytest.fixture
def client(prefect_server: PrefectServer) -> Iterator[SyncPrefectClient]:
    with get_client(sync_client=True) as c:
        yield c


def run_python(
    code: str, env: dict[str, str], timeout: float = 180, cwd: Path = REPO
) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter with the given extra environment."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    full_env.update(LOOPBACK_ENV)
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=full_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def own_ray_env(tag: str) -> dict[str, str]:
    """Environment for a subprocess whose runner starts its own local Ray (no auth).

    Ray's temp dir is kept short (its Unix socket paths have a 107-character limit)
    and names this test process, so leftover Ray processes can be found by it.
    """
    temp_dir = Path("/tmp") / f"rp{tag}-{os.getpid()}"
    temp_dir.mkdir(exist_ok=True)
    return {"RAY_TMPDIR": str(temp_dir), "RAY_AUTH_MODE": "disabled"}


def task_runs_of(client: SyncPrefectClient, flow_run_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    return client.read_task_runs(
        flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    )
