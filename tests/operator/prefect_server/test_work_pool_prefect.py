"""The work pool against a real Prefect server: created, limit kept in line, failures."""

from __future__ import annotations

import pytest

from prefect_raypool_operator.port import Owner
from prefect_raypool_operator.workpool import ensure_work_pool
from testbed.prefect_server import PrefectServer, api_request
from testbed.processes import free_port

pytestmark = pytest.mark.prefect
OWNER = Owner("team", "analytics", "uid-1")


def _read(server: PrefectServer, name: str) -> dict[str, object]:
    response = api_request("GET", f"{server.api_url}/work_pools/{name}")
    response.raise_for_status()
    return dict(response.json())


def test_creates_then_keeps_the_concurrency_limit(prefect_server: PrefectServer) -> None:
    check = ensure_work_pool(prefect_server.api_url, "wp-limit", 5, OWNER)
    assert (check.ok, check.reason) == (True, "WorkPoolCreated")
    pool = _read(prefect_server, "wp-limit")
    assert pool["type"] == "process" and pool["concurrency_limit"] == 5
    # Someone changes it in the UI: the next reconcile puts it back.
    api_request(
        "PATCH", f"{prefect_server.api_url}/work_pools/wp-limit", json={"concurrency_limit": 99}
    ).raise_for_status()
    check = ensure_work_pool(prefect_server.api_url, "wp-limit", 5, OWNER)
    assert (check.ok, check.reason) == (True, "WorkPoolUpdated")
    assert _read(prefect_server, "wp-limit")["concurrency_limit"] == 5
    assert ensure_work_pool(prefect_server.api_url, "wp-limit", 5, OWNER).reason == "WorkPoolInSync"


def test_a_pool_of_another_type_is_refused(prefect_server: PrefectServer) -> None:
    api_request(
        "POST",
        f"{prefect_server.api_url}/work_pools/",
        json={"name": "wp-k8s", "type": "kubernetes"},
    ).raise_for_status()
    check = ensure_work_pool(prefect_server.api_url, "wp-k8s", None, OWNER)
    assert (check.ok, check.reason) == (False, "WorkPoolTypeMismatch")
    assert "spec.prefect.workPool.name" in check.message


def test_unreachable_api_is_a_false_check_with_the_reason() -> None:
    url = f"http://127.0.0.1:{free_port()}/api"  # nothing listens there
    check = ensure_work_pool(url, "wp", 1, OWNER, api_key="secret-key-value", timeout=2)
    assert (check.ok, check.reason) == (False, "PrefectAPIUnreachable")
    assert url in check.message and "secret-key-value" not in check.message


def test_a_kuberay_work_pool_gets_its_type_and_template_kept(
    prefect_server: PrefectServer,
) -> None:
    from prefect_raypool_operator.builders.ephemeral import base_job_template
    from prefect_raypool_operator.spec import PrefectRayPoolSpec

    spec = PrefectRayPoolSpec.model_validate(
        {"placement": "Ephemeral", "prefect": {"apiUrl": prefect_server.api_url}}
    )
    template = base_job_template("flows", spec)
    url = prefect_server.api_url

    def ensure(limit: int | None = None) -> tuple[bool | None, str]:
        check = ensure_work_pool(url, "wp-kuberay", limit, OWNER, None, 10, "kuberay", template)
        return check.ok, check.reason

    assert ensure() == (True, "WorkPoolCreated")
    pool = _read(prefect_server, "wp-kuberay")
    assert pool["type"] == "kuberay" and pool["base_job_template"] == template
    # Someone edits the template: the next reconcile puts the spec's back.
    edited = {**template, "variables": {**template["variables"], "required": ["image"]}}
    api_request(
        "PATCH", f"{url}/work_pools/wp-kuberay", json={"base_job_template": edited}
    ).raise_for_status()
    assert ensure() == (True, "WorkPoolUpdated")
    assert _read(prefect_server, "wp-kuberay")["base_job_template"] == template
    assert ensure() == (True, "WorkPoolInSync")
    # A process pool of the same name is not an Ephemeral pool's.
    check = ensure_work_pool(url, "wp-limit-p", 1, OWNER)
    assert check.ok
    check = ensure_work_pool(url, "wp-limit-p", 1, OWNER, None, 10, "kuberay", template)
    assert (check.ok, check.reason) == (False, "WorkPoolTypeMismatch")
    assert "'process', not 'kuberay'" in check.message
