"""Finding Ray: address resolution, owned vs pre-existing Ray, token auth, a zero-capacity node.

Each case runs its flow in a fresh interpreter, since Ray connects once per process.
"""

from __future__ import annotations

import sys
import time
import uuid
from pathlib import Path

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    LogFilter,
    LogFilterFlowRunId,
    LogFilterTextSearch,
)

from prefect_raypool.addressing import RayNotFoundError, resolve_address
from testbed.dataplane import RayCluster
from testbed.prefect_server import PrefectServer
from testbed.processes import pids_mentioning
from tests.runner.conftest import REPO, eventually, own_ray_env, run_python, task_runs_of

pytestmark = [pytest.mark.ray]


def test_auto_without_ray_says_what_it_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with pytest.raises(RayNotFoundError) as info:
        resolve_address("auto", tmp_path)
    message = str(info.value)
    assert "RAY_ADDRESS" in message
    assert str(tmp_path / "session_latest" / "sockets" / "raylet") in message
    assert "--num-cpus=0" in message  # how to fix the pod
    # With no address the same search falls back to starting a local Ray.
    assert resolve_address(None, tmp_path).mode == "start"
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert resolve_address("auto", tmp_path).address == "10.1.2.3:6379"
    assert resolve_address("ray://head:10001", tmp_path).mode == "client"


@pytest.mark.prefect
def test_auto_runner_fails_without_starting_ray(
    tmp_path: Path, prefect_server: PrefectServer
) -> None:
    out = run_python(
        """
        import ray
        from prefect import flow
        from prefect_raypool import RayTaskRunner
        from prefect_raypool.addressing import RayNotFoundError

        @flow(task_runner=RayTaskRunner(address="auto"))
        def f():
            return 1

        try:
            f()
        except RayNotFoundError as exc:
            print("ERROR:", exc)
        print("INITIALIZED:", ray.is_initialized())
        """,
        env={"RAY_TMPDIR": str(tmp_path), "RAY_AUTH_MODE": "disabled"},
    )
    assert "ERROR: " in out.stdout, out.stdout + out.stderr
    assert str(tmp_path / "session_latest" / "sockets" / "raylet") in out.stdout
    assert "INITIALIZED: False" in out.stdout


@pytest.mark.prefect
def test_count_to_example_starts_and_stops_its_own_ray(
    prefect_server: PrefectServer, client: SyncPrefectClient
) -> None:
    env = own_ray_env("x")
    temp_dir = env["RAY_TMPDIR"]
    started = time.monotonic()
    out = run_python(
        "import runpy; runpy.run_path('examples/count_to.py', run_name='__main__')",
        env=env,
        timeout=240,
    )
    elapsed = time.monotonic() - started
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    printed = out.stdout + out.stderr
    for number in range(10):
        assert f"#{number}" in printed
    assert "Finished in state Completed()" in printed
    # The runner started this Ray, so it shut it down: nothing is left running.
    deadline = time.monotonic() + 20
    while pids_mentioning(temp_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not pids_mentioning(temp_dir)
    assert elapsed < 120
    # Every task run is recorded, logs included, although Ray killed the workers
    # when the runner disconnected.
    (flow_run,) = client.read_flow_runs(
        flow_filter=FlowFilter(name=FlowFilterName(any_=["count-to"]))
    )
    runs = task_runs_of(client, flow_run.id)
    assert len(runs) == 10 and all(r.state and r.state.is_completed() for r in runs)
    logs = client.read_logs(
        log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run.id]))
    )
    finished = {
        log.task_run_id for log in logs if log.task_run_id and "Finished in state" in log.message
    }
    assert finished == {r.id for r in runs}


@pytest.mark.prefect
def test_log_flush_at_exit_visits_only_workers_that_ran_task_runs(
    prefect_server: PrefectServer, client: SyncPrefectClient
) -> None:
    # Four CPUs, one task run: a flush call per CPU would start three fresh
    # workers (each importing Prefect, seconds) only to flush nothing.
    marker = uuid.uuid4().hex
    out = run_python(
        f"""
        from prefect import flow, get_run_logger, task
        from prefect_raypool import RayTaskRunner

        @task
        def say():
            get_run_logger().info("flushed {marker}")

        @flow(task_runner=RayTaskRunner(init_kwargs={{"num_cpus": 4}}))
        def one_task():
            say.submit().result()

        one_task()
        """,
        env={**own_ray_env("f"), "PREFECT_LOGGING_LEVEL": "DEBUG"},
        timeout=240,
    )
    printed = out.stdout + out.stderr
    assert out.returncode == 0, printed[-3000:]
    assert "Flushed Prefect logs on 1 Ray worker(s) of 1 asked" in printed, printed[-3000:]
    # ...and the task run's log, buffered in the worker Ray killed, reached the API.
    text = LogFilter(text=LogFilterTextSearch(query=marker))
    eventually(
        lambda: any(marker in log.message for log in client.read_logs(log_filter=text)),
        what="the task run's log in the API",
    )


@pytest.mark.prefect
def test_attaches_to_local_ray_through_raylet_socket(
    ray_session: RayCluster, prefect_server: PrefectServer
) -> None:
    import ray

    out = run_python(
        """
        import ray
        from prefect import flow, task
        from prefect_raypool import RayTaskRunner

        @task
        def gcs():
            return ray.get_runtime_context().gcs_address

        @flow(task_runner=RayTaskRunner())
        def f():
            return gcs.submit().result()

        print("GCS:", f())
        print("INITIALIZED:", ray.is_initialized())
        """,
        env={
            "RAY_TMPDIR": str(ray_session.temp_dir),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": ray_session.token or "",
        },
    )
    port = ray_session.address.rsplit(":", 1)[1]
    gcs_lines = [line for line in out.stdout.splitlines() if line.startswith("GCS: ")]
    assert gcs_lines and gcs_lines[0].endswith(f":{port}"), out.stdout + out.stderr[-3000:]
    assert "INITIALIZED: False" in out.stdout  # it disconnected its own driver...
    assert ray.cluster_resources().get("CPU") == 2.0  # ...and left the cluster running


@pytest.mark.prefect
def test_missing_token_says_where_to_put_it(
    ray_session: RayCluster, prefect_server: PrefectServer, tmp_path: Path
) -> None:
    out = run_python(
        f"""
        from prefect import flow
        from prefect_raypool import RayTaskRunner
        from prefect_raypool.addressing import RayAuthTokenMissingError

        @flow(task_runner=RayTaskRunner(address={ray_session.address!r}))
        def f():
            return 1

        try:
            f()
        except RayAuthTokenMissingError as exc:
            print("ERROR:", exc)
        """,
        env={"RAY_AUTH_MODE": "token", "HOME": str(tmp_path)},
    )
    assert "ERROR: " in out.stdout, out.stdout + out.stderr[-3000:]
    assert "RAY_AUTH_TOKEN" in out.stdout and "auth_token" in out.stdout


@pytest.mark.prefect
def test_zero_capacity_node_driver_reaches_workers_on_other_nodes(
    ray_multinode: RayCluster, prefect_server: PrefectServer
) -> None:
    node_dir = ray_multinode.node_dirs[0]
    out = run_python(
        """
        import os
        import ray
        from prefect import flow, task
        from prefect_raypool import RayTaskRunner

        @task
        def probe():
            return {
                "node": ray.get_runtime_context().get_node_id(),
                "api": os.environ.get("PREFECT_API_URL"),
                "user": os.environ.get("USER_VAR"),
            }

        runner = RayTaskRunner(
            address="auto", init_kwargs={"runtime_env": {"env_vars": {"USER_VAR": "kept"}}}
        )

        @flow(task_runner=runner)
        def f():
            here = ray.get_runtime_context().get_node_id()
            return here, probe.submit().result()

        here, seen = f()
        print("SAME_NODE:", here == seen["node"])
        print("API:", seen["api"])
        print("USER:", seen["user"])
        """,
        env={
            "RAY_TMPDIR": str(node_dir),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": ray_multinode.token or "",
        },
        timeout=240,
    )
    printed = out.stdout + out.stderr[-3000:]
    # The driver sits on the zero-capacity node; its task ran on the head.
    assert "SAME_NODE: False" in out.stdout, printed
    assert f"API: {prefect_server.api_url}" in out.stdout, printed
    assert "USER: kept" in out.stdout, printed


@pytest.mark.prefect
def test_ray_client_works_and_warns_what_the_head_must_import(
    ray_session: RayCluster, prefect_server: PrefectServer
) -> None:
    out = run_python(
        f"""
        import warnings
        warnings.simplefilter("always")
        from prefect import flow, task
        from prefect_raypool import RayTaskRunner

        @task
        def double(x):
            return 2 * x

        @flow(task_runner=RayTaskRunner(address="ray://127.0.0.1:{ray_session.client_port}"))
        def f():
            return double.map([1, 2, 3]).result()

        print("RESULT:", f())
        """,
        env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": ray_session.token or ""},
        timeout=240,
    )
    printed = out.stdout + out.stderr
    assert "RESULT: [2, 4, 6]" in out.stdout, printed[-4000:]
    assert "must be able to import: prefect, prefect_raypool" in printed, printed[-4000:]


def test_doctor_lists_what_the_head_must_import(tmp_path: Path) -> None:
    flow_file = tmp_path / "my_flow.py"
    flow_file.write_text(
        "import json\n"
        "import yaml\n"
        "from prefect import flow, task\n"
        "from prefect_raypool import RayTaskRunner\n\n"
        "@task\n"
        "def parse(text):\n"
        "    return yaml.safe_load(json.dumps(text))\n\n"
        "@flow(task_runner=RayTaskRunner(address='ray://head:10001'))\n"
        "def my_flow():\n"
        "    return parse.submit('x').result()\n"
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "prefect_raypool.cli", "doctor", f"{flow_file}:my_flow"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    listed = [line.strip() for line in out.stdout.splitlines() if line.startswith("  ")]
    assert {"prefect", "prefect_raypool", "yaml"} <= set(listed), out.stdout
    assert "json" not in listed  # the standard library is always there
    assert "ray://head:10001" in out.stdout
