"""RayTaskRunner inside real flows: real Prefect server, real Ray (token auth)."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import Any

import pytest
import ray
from prefect import flow, get_run_logger, task
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.context import get_run_context
from prefect.exceptions import ObjectNotFound
from prefect.futures import as_completed, wait
from prefect.states import State
from prefect.utilities.annotations import allow_failure, unmapped

from prefect_raypool import PrefectRayFuture, RayTaskRunner, remote_options
from tests.runner.conftest import eventually, task_runs_of

pytestmark = [pytest.mark.ray, pytest.mark.prefect, pytest.mark.usefixtures("ray_session")]


def api_state(client: Any, task_run_id: uuid.UUID) -> State | None:
    """A task run's state in the API; None while the API has no record of it yet.

    Ray workers report task runs as events, which the server records a moment
    later; a worker that died may never report its run, and then the runner
    creates it. Either way the run can be missing at first, more so under load.
    """
    try:
        return client.read_task_run(task_run_id).state
    except ObjectNotFound:
        return None


@task
def inc(x: int) -> int:
    return x + 1


@task
def add(a: int, b: int) -> int:
    return a + b


@task
async def async_double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


@task
def fail(message: str) -> None:
    raise ValueError(message)


@task
def where() -> dict[str, Any]:
    return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}


def test_submit_map_and_chaining_are_recorded(client: Any) -> None:
    @flow(task_runner=RayTaskRunner())
    def pipeline(n: int) -> tuple[list[int], int, list[int], Any]:
        incs = inc.map(range(n))
        total = add.submit(incs[0], incs[1])  # upstream futures resolved on the cluster
        doubled = async_double.map(incs)
        places = where.submit()
        return [f.result() for f in incs], total.result(), doubled.result(), places.result()

    state = pipeline(5, return_state=True)
    incs, total, doubled, place = state.result()
    assert incs == [1, 2, 3, 4, 5]
    assert total == 3
    assert doubled == [2, 4, 6, 8, 10]
    assert place["pid"] != os.getpid()  # ran in a Ray worker, not in the driver

    flow_run_id = state.state_details.flow_run_id
    runs = eventually(
        lambda: (
            [r for r in task_runs_of(client, flow_run_id) if r.state_type]
            if len(task_runs_of(client, flow_run_id)) == 12
            and all(r.state and r.state.is_completed() for r in task_runs_of(client, flow_run_id))
            else None
        ),
        what="12 completed task runs in the API",
    )
    by_name: dict[str, list[Any]] = {}
    for r in runs:
        by_name.setdefault(r.task_key.split("-")[0], []).append(r)
    (add_run,) = [r for r in runs if r.name.startswith("add-")]
    upstream_ids = {i.id for inputs in add_run.task_inputs.values() for i in inputs}
    inc_ids = {r.id for r in runs if r.name.startswith("inc-")}
    assert len(upstream_ids & inc_ids) == 2, add_run.task_inputs


def test_failures_wait_for_and_allow_failure(client: Any) -> None:
    @flow(task_runner=RayTaskRunner())
    def failing() -> dict[str, State]:
        bad = fail.submit("boom")
        blocked = add.submit(bad, 1)
        tolerant = add.submit(1, 2, wait_for=[allow_failure(bad)])
        after = inc.submit(41, wait_for=[tolerant])
        return {
            "bad": bad.state if bad.wait() is None else None,
            "blocked": blocked.wait() or blocked.state,
            "tolerant": tolerant.wait() or tolerant.state,
            "after_result": after.result(),
        }

    state = failing(return_state=True)
    out = state.result(raise_on_failure=False)
    assert out["bad"].is_failed()
    with pytest.raises(ValueError, match="boom"):
        out["bad"].result()
    assert out["blocked"].is_pending() and out["blocked"].name == "NotReady"
    assert out["tolerant"].is_completed() and out["tolerant"].result() == 3
    assert out["after_result"] == 42
    bad_id = out["bad"].state_details.task_run_id
    eventually(
        lambda: (s := api_state(client, bad_id)) and s.is_failed(),
        what="the failed task run recorded as Failed",
    )


@task
def crash() -> None:
    os._exit(1)


def test_crashed_worker_is_crashed_state(client: Any) -> None:
    @flow(task_runner=RayTaskRunner())
    def crashing() -> dict[str, Any]:
        fut = crash.submit()
        fut.wait()
        return {"state": fut.state, "id": fut.task_run_id, "after": inc.submit(1).result()}

    out = crashing()
    task_state, run_id = out["state"], out["id"]
    assert task_state.is_crashed(), task_state
    assert "WorkerCrashedError" in (task_state.message or "")
    assert out["after"] == 2  # the flow and the cluster carry on
    eventually(
        lambda: (s := api_state(client, run_id)) and s.is_crashed(),
        timeout=60,
        what="the crashed task run recorded as Crashed in the API",
    )


@task
def lost_once(marker: str, x: int) -> int:
    """Its Ray worker process dies the first time (as on a node deleted mid-run)."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return x * 10


def test_a_task_run_lost_with_its_ray_worker_is_re_run_by_ray(client: Any, tmp_path: Any) -> None:
    """A Ray task lost with its process or node never reached Prefect's retries: Ray
    re-runs it (max_retries), under the same task run id, and the run ends Completed
    with its result, in the driver and in the API."""

    @flow(task_runner=RayTaskRunner())
    def survives() -> dict[str, Any]:
        fut = lost_once.submit(str(tmp_path / "lost"), 4)
        return {"result": fut.result(), "id": fut.task_run_id, "state": fut.state}

    out = survives()
    assert out["result"] == 40 and out["state"].is_completed()
    assert (tmp_path / "lost").exists()  # the first attempt did die
    eventually(
        lambda: (s := api_state(client, out["id"])) and s.is_completed(),
        what="the re-run task run recorded as Completed",
    )


@task(timeout_seconds=1)
def slow(seconds: float) -> str:
    time.sleep(seconds)
    return "finished"


@task
def logs_and_prints(marker: str) -> str:
    get_run_logger().info("logger says %s", marker)
    print(f"print says {marker}")
    return os.environ.get("PREFECT_API_URL", "")


def test_timeout_and_logs_reach_the_api(client: Any) -> None:
    marker = uuid.uuid4().hex

    @flow(task_runner=RayTaskRunner(), log_prints=True)
    def logging_flow() -> tuple[State, str]:
        timed = slow.submit(30)
        api_url = logs_and_prints.submit(marker).result()
        return timed.wait() or timed.state, api_url

    started = time.monotonic()
    state = logging_flow(return_state=True)
    timed_state, _ = state.result(raise_on_failure=False)
    assert timed_state.is_failed() and timed_state.name == "TimedOut", timed_state
    assert time.monotonic() - started < 25

    flow_run_id = state.state_details.flow_run_id

    def messages() -> list[str]:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
        return [log.message for log in logs]

    eventually(
        lambda: {f"logger says {marker}", f"print says {marker}"} <= set(messages()),
        what="task logs from the Ray worker in the API",
    )


@task
def read_env(name: str) -> str | None:
    return os.environ.get(name)


@task
def resources_seen() -> dict[str, float]:
    return dict(ray.get_runtime_context().get_assigned_resources())


@task
def nested_resources_seen() -> dict[str, float]:
    # Submitted from inside a Ray worker, whose environment has no PREFECT_RAYPOOL_TASK_*.
    return resources_seen.submit().result()


def test_task_resource_variables_are_the_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    # As on a pool's Prefect worker pod (spec.ray.taskResources); read when a flow starts.
    monkeypatch.setenv("PREFECT_RAYPOOL_TASK_NUM_CPUS", "2")
    monkeypatch.setenv("PREFECT_RAYPOOL_TASK_NUM_GPUS", "0")

    @flow(task_runner=RayTaskRunner())
    def defaults_flow() -> dict[str, Any]:
        seen = {"env": resources_seen.submit(), "nested": nested_resources_seen.submit()}
        with remote_options(num_cpus=0.5):
            seen["block"] = resources_seen.submit()
        return {k: f.result() for k, f in seen.items()}

    seen = defaults_flow()
    assert seen["env"].get("CPU") == 2.0
    assert seen["nested"].get("CPU") == 2.0  # handed down with the flow-run context
    assert seen["block"].get("CPU") == 0.5  # remote_options(...) wins

    @flow(task_runner=RayTaskRunner(default_remote_options={"num_cpus": 1.5}))
    def explicit_flow() -> dict[str, Any]:
        return {"runner": resources_seen.submit().result()}

    assert explicit_flow()["runner"].get("CPU") == 1.5  # the runner's option wins

    monkeypatch.setenv("PREFECT_RAYPOOL_TASK_NUM_CPUS", "lots")
    with pytest.raises(ValueError, match="PREFECT_RAYPOOL_TASK_NUM_CPUS='lots'"):
        defaults_flow()


def test_remote_options_reach_ray() -> None:
    @flow(task_runner=RayTaskRunner())
    def options_flow() -> tuple[Any, Any, Any]:
        with remote_options(num_cpus=2):
            with remote_options(runtime_env={"env_vars": {"RP_TEST_VAR": "inner"}}):
                env = read_env.submit("RP_TEST_VAR")
                cpus = resources_seen.submit()
        plain = resources_seen.submit()
        return env.result(), cpus.result(), plain.result()

    env, cpus, plain = options_flow()
    assert env == "inner"
    assert cpus.get("CPU") == 2.0
    assert plain.get("CPU") == 1.0


@task
def nested_parent(x: int) -> int:
    # A task that submits a task: it runs on the same Ray cluster.
    return inc.submit(x).result() + inc(x)


@flow
def child_flow(x: int) -> int:
    return inc.submit(x).result()


def test_nested_tasks_and_subflows() -> None:
    @flow(task_runner=RayTaskRunner())
    def parent_flow() -> tuple[int, int]:
        return nested_parent.submit(10).result(), child_flow(5)

    assert parent_flow() == (22, 6)


@task
def size_of(blob: bytes, i: int) -> int:
    return len(blob) + i


def test_unmapped_argument_is_stored_once() -> None:
    blob = os.urandom(8 * 1024 * 1024)
    n = 12

    @flow(task_runner=RayTaskRunner())
    def shared_flow() -> tuple[list[int], int]:
        # Imported here: the flow is pickled by value and must not capture it.
        from ray._private.worker import global_worker

        before = set(global_worker.core_worker.get_all_reference_counts())
        futures = size_of.map(unmapped(blob), range(n))
        after = set(global_worker.core_worker.get_all_reference_counts())
        return [f.result() for f in futures], len(after - before)

    results, new_objects = shared_flow()
    assert results == [len(blob) + i for i in range(n)]
    # The blob, the task and the flow-run context once each, plus one return value
    # per task run; copying the blob into every submission would add another n.
    assert new_objects <= n + 3, new_objects


@task
def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_backpressure_bounds_in_flight() -> None:
    runner = RayTaskRunner(max_in_flight=2)

    @flow(task_runner=runner)
    def many() -> tuple[float, int, list[float]]:
        started = time.monotonic()
        futures = nap.map([0.3] * 8)
        return time.monotonic() - started, len(futures), [f.result() for f in futures]

    submit_seconds, count, results = many()
    assert count == 8 and results == [0.3] * 8
    # With at most 2 in flight, submitting 8 waits for about 6 to finish.
    assert submit_seconds >= 0.8, submit_seconds


def test_futures_interface() -> None:
    callbacks: list[uuid.UUID] = []

    @flow(task_runner=RayTaskRunner())
    def futures_flow() -> None:
        fut = nap.submit(1.0)
        assert isinstance(fut, PrefectRayFuture)
        assert isinstance(fut.task_run_id, uuid.UUID)
        with pytest.raises(TimeoutError):
            fut.result(timeout=0.01)
        fut.add_done_callback(lambda f: callbacks.append(f.task_run_id))
        done, not_done = wait([fut], timeout=30)
        assert fut in done and not not_done
        assert fut.state.is_completed()
        assert fut.result() == 1.0
        quick = [inc.submit(i) for i in range(3)]
        assert sorted(f.result() for f in as_completed(quick)) == [1, 2, 3]
        late: list[uuid.UUID] = []
        fut.add_done_callback(lambda f: late.append(f.task_run_id))
        assert late == [fut.task_run_id]  # already done: called at once
        assert get_run_context().task_runner.name == "ray"

    futures_flow()
    assert len(callbacks) == 1


@task
def write_after(path: str, seconds: float) -> None:
    time.sleep(seconds)
    with open(path, "w") as f:
        f.write("done")


def test_failing_flow_cancels_its_outstanding_ray_tasks(tmp_path: Any, client: Any) -> None:
    marker = tmp_path / "written"
    seen: dict[str, Any] = {}

    @flow(task_runner=RayTaskRunner())
    def failing() -> None:
        # The flow is pickled by value for the workers: it must not use this module.
        future = seen["future"] = write_after.submit(str(marker), 10)
        for _ in range(200):
            if future.state.is_running():
                seen["running_at"] = time.monotonic()
                raise RuntimeError("the flow fails while a task runs")
            time.sleep(0.3)

    state = failing(return_state=True)
    assert state.is_failed() and "while a task runs" in (state.message or ""), state
    # The engine handles the exception before closing the runner, which sees the
    # flow run Failed and cancels the task instead of waiting for its 10 s.
    assert time.monotonic() - seen["running_at"] < 8
    eventually(
        lambda: (s := api_state(client, seen["future"].task_run_id)) and s.is_cancelled(),
        what="the task run recorded as Cancelled",
    )
    time.sleep(max(0.0, seen["running_at"] + 12 - time.monotonic()))
    assert not marker.exists()


def test_cancel_all_stops_outstanding_ray_tasks(tmp_path: Any, client: Any) -> None:
    marker = tmp_path / "finished"

    @task
    def long_running(path: str) -> None:
        time.sleep(15)  # blocking: only killing the worker stops it
        with open(path, "w") as f:
            f.write("done")

    with RayTaskRunner() as runner:
        running = runner.submit(long_running, {"path": str(marker)})
        eventually(
            lambda: running.state.is_running(), timeout=60, what="the task run to be Running"
        )
        queued = [runner.submit(nap, {"seconds": 5}) for _ in range(4)]
        started = time.monotonic()
        runner.cancel_all()
        for fut in [running, *queued]:
            fut.wait(timeout=30)
        assert time.monotonic() - started < 10
        states = [fut.state for fut in [running, *queued]]
    assert all(s.is_cancelled() for s in states), states
    eventually(
        lambda: (s := api_state(client, running.task_run_id)) and s.is_cancelled(),
        what="the cancelled task run recorded as Cancelled in the API",
    )
    time.sleep(1)
    assert not marker.exists()
    assert ray.is_initialized()  # a pre-existing Ray connection is left alone


def test_state_of_completed_future_is_final() -> None:
    @flow(task_runner=RayTaskRunner())
    def f() -> dict[str, State]:
        fut = inc.submit(1)
        fut.wait()
        return {"state": fut.state}

    state = f()["state"]
    assert state.is_completed() and state.result() == 2


@task
def ray_task_of(x: int, offset: int) -> tuple[int, str]:
    if x == 7:
        raise ValueError("seven")
    return x + offset, ray.get_runtime_context().get_task_id() or ""


def test_large_map_runs_in_batches_and_records_every_run(client: Any) -> None:
    n = 64

    @flow(task_runner=RayTaskRunner())
    def batched() -> tuple[list[bool], list[Any]]:
        upstream = inc.map(range(n))  # a map over another map's futures
        futures = ray_task_of.map(upstream, unmapped(100))
        futures.wait()
        return [f.state.is_failed() for f in futures], [
            f.result(raise_on_failure=False) for f in futures
        ]

    state = batched(return_state=True)
    failures, results = state.result()
    failed = [i for i, is_failed in enumerate(failures) if is_failed]
    assert failed == [6], failed  # inc(6) == 7 fails alone; its batch carries on
    assert isinstance(results[6], ValueError)
    values = [r for i, r in enumerate(results) if i != 6]
    assert [v for v, _ in values] == [i + 1 + 100 for i in range(n) if i != 6]
    ray_tasks = {task_id for _, task_id in values}
    assert len(ray_tasks) < n - 1, "a large map runs several task runs per Ray task"
    # ...except its first wave, one task run per Ray task and CPU: its first
    # results come back after one task run, not after a whole batch.
    cpus = int(ray.cluster_resources()["CPU"])
    first_wave = {task_id for _, task_id in values[:cpus]}
    assert len(first_wave) == cpus, values[:cpus]
    assert not first_wave & {task_id for _, task_id in values[cpus:]}

    flow_run_id = state.state_details.flow_run_id

    def all_recorded() -> list[Any] | None:
        runs = task_runs_of(client, flow_run_id)
        final = [r for r in runs if r.state and r.state.is_final()]
        return final if len(final) == 2 * n else None

    runs = eventually(all_recorded, what=f"{2 * n} task runs in a final state in the API")
    mapped = [r for r in runs if r.name.startswith("ray_task_of-")]
    assert sorted(r.state.type.value for r in mapped).count("FAILED") == 1
    assert all(r.task_inputs.get("x") for r in mapped), "upstream links recorded"
