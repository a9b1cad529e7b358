"""The work pool against a real Prefect server: created, limit kept in line, failures."""

from __future__ import annotations

import httpx
import pytest

from prefect_raypool_operator.workpool import Owner, ensure_work_pool
from testbed.prefect_server import PrefectServer
from testbed.processes import free_port

pytestmark = pytest.mark.prefect
OWNER = Owner("team", "analytics", "uid-1")


def _read(server: PrefectServer, name: str) -> dict[str, object]:
    response = httpx.get(f"{server.api_url}/work_pools/{name}", timeout=10)
    response.raise_for_status()
    return dict(response.json())


def test_creates_then_keeps_the_concurrency_limit(prefect_server: PrefectServer) -> None:
    check = ensure_work_pool(prefect_server.api_url, "wp-limit", 5, OWNER)
    assert (check.ok, check.reason) == (True, "WorkPoolCreated")
    pool = _read(prefect_server, "wp-limit")
    assert pool["type"] == "process" and pool["concurrency_limit"] == 5
    # Someone changes it in the UI: the next reconcile puts it back.
    httpx.patch(
        f"{prefect_server.api_url}/work_pools/wp-limit", json={"concurrency_limit": 99}, timeout=10
    ).raise_for_status()
    check = ensure_work_pool(prefect_server.api_url, "wp-limit", 5, OWNER)
    assert (check.ok, check.reason) == (True, "WorkPoolUpdated")
    assert _read(prefect_server, "wp-limit")["concurrency_limit"] == 5
    assert ensure_work_pool(prefect_server.api_url, "wp-limit", 5, OWNER).reason == "WorkPoolInSync"


def test_a_pool_of_another_type_is_refused(prefect_server: PrefectServer) -> None:
    httpx.post(
        f"{prefect_server.api_url}/work_pools/",
        json={"name": "wp-k8s", "type": "kubernetes"},
        timeout=10,
    ).raise_for_status()
    check = ensure_work_pool(prefect_server.api_url, "wp-k8s", None, OWNER)
    assert (check.ok, check.reason) == (False, "WorkPoolTypeMismatch")
    assert "spec.prefect.workPool.name" in check.message


def test_unreachable_api_is_a_false_check_with_the_reason() -> None:
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    check = ensure_work_pool(url, "wp", 1, OWNER, api_key="secret-key-value", timeout=2)
    assert (check.ok, check.reason) == (False, "PrefectAPIUnreachable")
    assert url in check.message and "secret-key-value" not in check.message
