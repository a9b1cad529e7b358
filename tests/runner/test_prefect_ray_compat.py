"""Drop-in compatibility with prefect-ray 0.6.0, on a real Ray and a real Prefect server.

prefect-ray applies `remote_options(...)` as `ray.remote(**options)`: every option
`@ray.remote` takes works, Ray's decoration-time defaults apply, and a bad option
raises Ray's ValueError at submit. Each expectation here is what prefect-ray 0.6.0
does with the same code (checked side by side; see docs/runner.md).
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
import ray
from prefect import flow, get_run_logger, task
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import quote, unmapped
from ray._common.ray_option_utils import task_options

from prefect_raypool import RayTaskRunner, remote_options, task_runners
from tests.runner.conftest import eventually, task_runs_of

pytestmark = [pytest.mark.ray, pytest.mark.prefect, pytest.mark.usefixtures("ray_session")]

#: A valid value for every Ray task option (what `@ray.remote` accepts for a task).
SAMPLE_OPTIONS: dict[str, Any] = {
    "label_selector": {},
    "fallback_strategy": None,
    "accelerator_type": None,
    "memory": 10_000_000,
    "name": "named-by-options",
    "num_cpus": 0.5,
    "num_gpus": 0,
    "object_store_memory": None,
    "placement_group": "default",
    "placement_group_bundle_index": -1,
    "placement_group_capture_child_tasks": None,
    "resources": {},
    "runtime_env": {"env_vars": {"RP_COMPAT": "1"}},
    "scheduling_strategy": "SPREAD",
    "enable_task_events": False,
    "_labels": {"team": "compat"},
    "max_calls": 0,  # refused by `.options()`, taken by `@ray.remote`
    "max_retries": 1,
    "num_returns": 1,
    "retry_exceptions": False,
    "_generator_backpressure_num_objects": None,
    "_num_objects_per_yield": 2,  # `.options()` refuses to change it
}


@task
def pid_and_log(marker: str) -> int:
    get_run_logger().info("compat %s", marker)
    return os.getpid()


@task
def worker_pid() -> int:
    return os.getpid()


@task
def echo(value: Any) -> Any:
    return value


@task
def pair(x: Any, y: Any) -> tuple[Any, Any]:
    return x, y


@task
def fail() -> None:
    raise ValueError("boom")


@task
def crash() -> None:
    os._exit(1)


def test_every_ray_task_option_is_taken() -> None:
    # A Ray that adds a task option fails this test, so the option gets looked at.
    assert set(SAMPLE_OPTIONS) == set(task_options)

    @flow(task_runner=RayTaskRunner())
    def every_option() -> dict[str, int]:
        futures = {}
        for name, value in SAMPLE_OPTIONS.items():
            with remote_options(**{name: value}):
                futures[name] = worker_pid.submit()
        return {name: f.result(timeout=120) for name, f in futures.items()}

    pids = every_option()
    assert set(pids) == set(SAMPLE_OPTIONS) and all(pid > 0 for pid in pids.values())


def test_max_calls_runs_each_task_run_in_a_fresh_process(
    client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = uuid.uuid4().hex
    # As on a 1-CPU cluster, where a map of 8 runs 2 task runs per Ray task unless
    # max_calls asks for a fresh process each (each one costs a Prefect import).
    monkeypatch.setattr(task_runners, "cluster_cpus", lambda: 1)
    n = 8

    @flow(task_runner=RayTaskRunner())
    def fresh_processes() -> dict[str, list[int]]:
        with remote_options(num_cpus=0.5):
            with remote_options(max_calls=1):  # nested: merged with num_cpus
                submitted = [pid_and_log.submit(f"{marker}-s{i}").result() for i in range(2)]
                mapped = pid_and_log.map([f"{marker}-m{i}" for i in range(n)]).result()
        reused = [worker_pid.submit().result() for _ in range(3)]
        return {"submitted": submitted, "mapped": mapped, "reused": reused}

    state = fresh_processes(return_state=True)
    pids = state.result()
    assert len(set(pids["submitted"])) == 2
    assert len(set(pids["mapped"])) == n, "one task run per process: not batched"
    assert len(set(pids["reused"])) < 3, "without max_calls processes are reused"

    # Each process sent its logs before Ray ended it.
    flow_run_id = state.state_details.flow_run_id
    expected = {f"compat {marker}-s{i}" for i in range(2)} | {
        f"compat {marker}-m{i}" for i in range(n)
    }

    def logged() -> bool:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        return expected <= {log.message for log in logs}

    eventually(logged, timeout=60, what="the logs of every max_calls=1 task run in the API")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"bogus": 1}, "Invalid option keyword bogus for remote functions"),
        ({"lifetime": "detached"}, "Invalid option keyword lifetime"),  # actors only
        ({"num_cpus": -1}, "num_cpus cannot be negative"),
        ({"resources": {"CPU": 1}}, "Use the 'num_cpus' and 'num_gpus' keyword"),
        ({"num_returns": 2}, r"remote_options\(num_returns=2\) is not supported"),
    ],
)
def test_bad_options_raise_at_submit_and_create_nothing(
    client: Any, options: dict[str, Any], message: str
) -> None:
    @flow(task_runner=RayTaskRunner())
    def bad_options() -> None:
        with remote_options(**options):
            echo.map(range(3))

    state = bad_options(return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match=message):
        state.result()
    assert task_runs_of(client, state.state_details.flow_run_id) == []


@task(retries=2, retry_delay_seconds=0)
def flaky(path: str) -> int:
    tries = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(tries + 1))
    if tries < 2:
        raise RuntimeError(f"try {tries}")
    return tries


def test_failure_paths_match_prefect_ray(tmp_path: Any) -> None:
    @flow(task_runner=RayTaskRunner())
    def failures() -> dict[str, Any]:
        out: dict[str, Any] = {}
        failed = fail.submit()
        with pytest.raises(ValueError, match="boom"):  # the task's own exception
            failed.result()
        out["failed_state"] = failed.state
        out["failed_value"] = failed.result(raise_on_failure=False)
        crashed = crash.submit()
        with pytest.raises(ray.exceptions.WorkerCrashedError):
            crashed.result()
        out["crashed_state"] = crashed.state
        out["retried"] = flaky.submit(str(tmp_path / "tries")).result()
        return out

    out = failures()
    assert out["failed_state"].is_failed() and out["failed_state"].name == "Failed"
    assert isinstance(out["failed_value"], ValueError)
    assert out["crashed_state"].is_crashed()
    assert out["retried"] == 2  # Prefect's retries re-ran it on the Ray worker


def test_unmapped_and_quote_arguments_arrive_as_with_prefect_ray() -> None:
    def annotated() -> list[Any]:
        upstream = echo.submit(1)
        return [
            pair.map([1, 2], unmapped(upstream)).result(),
            pair.map([1, 2], unmapped([upstream, b"x" * 100_000])).result(),
        ]

    ours = flow(task_runner=RayTaskRunner())(annotated)()
    assert ours == flow(task_runner=ThreadPoolTaskRunner())(annotated)()

    @flow(task_runner=RayTaskRunner())
    def quoted() -> Any:
        return echo.submit(quote([1, {"a": 2}])).result()

    # Pickling a Prefect annotation nests its value in a tuple (Prefect's quirk, not
    # the runner's): any runner that pickles arguments, prefect-ray included, gets this.
    assert quoted() == ([1, {"a": 2}],)
