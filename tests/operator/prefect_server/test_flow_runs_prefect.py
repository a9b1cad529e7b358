"""The orphan sweep's Prefect calls against a real Prefect server: a work pool's
active flow runs listed, one marked Crashed, a finished one left as it is."""

from __future__ import annotations

import uuid

import pytest
from prefect.client.orchestration import get_client
from prefect.states import Completed, Pending, Running

from prefect_raypool_operator.flow_runs import active_flow_runs, crash_flow_run
from prefect_raypool_operator.orphans import active_run
from testbed.prefect_server import PrefectServer, api_request

pytestmark = pytest.mark.prefect


def _runs(pool: str, count: int) -> list[str]:
    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("orphaned")
        deployment = client.create_deployment(
            flow_id=flow_id, name=f"d-{uuid.uuid4().hex[:6]}", work_pool_name=pool
        )
        ids = []
        for i in range(count):
            run = client.create_flow_run_from_deployment(deployment)
            client.set_flow_run_state(run.id, Pending())
            client.set_flow_run_state(run.id, Running())
            client.update_flow_run(run.id, infrastructure_pid=f"etl-prefect-worker-1-{i}:4{i}")
            ids.append(str(run.id))
        return ids


def test_active_runs_listed_and_a_running_one_crashed(prefect_server: PrefectServer) -> None:
    pool = f"orph-{uuid.uuid4().hex[:6]}"
    api_request(
        "POST", f"{prefect_server.api_url}/work_pools/", json={"name": pool, "type": "process"}
    ).raise_for_status()
    running, finished = _runs(pool, 2)
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(uuid.UUID(finished), Completed())

    raw = active_flow_runs(prefect_server.api_url, pool, None, 10)
    assert raw is not None
    [run] = [r for r in map(active_run, raw) if r is not None]
    assert (run.id, run.state_type) == (running, "RUNNING")
    assert run.infrastructure_pid == "etl-prefect-worker-1-0:40" and run.start_time is not None

    assert crash_flow_run(prefect_server.api_url, running, "pod gone", None, 10) is True
    # a run that finished meanwhile keeps its state (the proposal is not forced)
    assert crash_flow_run(prefect_server.api_url, finished, "pod gone", None, 10) is False
    with get_client(sync_client=True) as client:
        crashed = client.read_flow_run(uuid.UUID(running))
        assert (crashed.state_name, crashed.state.message) == ("Crashed", "pod gone")
        assert client.read_flow_run(uuid.UUID(finished)).state_name == "Completed"
    assert active_flow_runs(prefect_server.api_url, pool, None, 10) == []


def test_an_unreachable_api_is_none_and_false() -> None:
    url = "http://127.0.0.1:9/api"
    assert active_flow_runs(url, "p", None, 2) is None
    assert crash_flow_run(url, str(uuid.uuid4()), "m", None, 2) is False
