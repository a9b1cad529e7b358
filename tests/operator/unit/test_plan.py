"""The plan is the whole desired state, decided from the spec alone (pure): the owned
objects, the token Secret without its random value, the work pool with its type and
template. And the reconcile's port stays at the bottom of the operator's imports."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest

from prefect_raypool_operator import port
from prefect_raypool_operator.plan import plan
from prefect_raypool_operator.port import KUBERAY_WORK_POOL_TYPE, WORK_POOL_TYPE, Owner

pytestmark = pytest.mark.unit


def _pool(**spec: Any) -> dict[str, Any]:
    prefect = {"apiUrl": "http://prefect:4200/api", **spec.pop("prefect", {})}
    return {
        "apiVersion": "prefectray.io/v1alpha1",
        "kind": "PrefectRayPool",
        "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "generation": 1},
        "spec": {"prefect": prefect, **spec},
    }


def test_the_token_secret_is_planned_without_its_token() -> None:
    secret = plan(_pool()).ray_token_secret
    assert secret is not None and secret["metadata"]["name"] == "p-ray-token"
    assert [ref["uid"] for ref in secret["metadata"]["ownerReferences"]] == ["u1"]
    assert "stringData" not in secret and "data" not in secret  # drawn when it is made
    assert plan(_pool()) == plan(_pool())  # the same body, the same plan
    named = {"auth": {"mode": "token", "secretKeyRef": {"name": "t", "key": "k"}}}
    assert plan(_pool(ray=named)).ray_token_secret is None
    # Not an Ephemeral pool's: its runs' clusters cannot take a token yet (KubeRay v1.5).
    assert plan(_pool(placement="Ephemeral")).ray_token_secret is None


def test_the_work_pool_is_planned_with_its_type_and_template() -> None:
    prefect = {
        "workPool": {"name": "etl", "concurrencyLimit": 3},
        "apiKey": {"secretKeyRef": {"name": "prefect", "key": "key"}},
    }
    process = plan(_pool(prefect=prefect)).work_pool
    assert process is not None
    assert (process.name, process.type, process.concurrency_limit) == ("etl", WORK_POOL_TYPE, 3)
    assert process.base_job_template is None and process.owner == Owner("ns", "p", "u1")
    assert process.api_key_ref is not None and process.api_key_ref.name == "prefect"
    ephemeral = plan(_pool(placement="Ephemeral")).work_pool
    assert ephemeral is not None and ephemeral.type == KUBERAY_WORK_POOL_TYPE
    assert ephemeral.base_job_template is not None and ephemeral.api_key_ref is None
    properties = ephemeral.base_job_template["variables"]["properties"]
    assert properties["namespace"]["default"] == "ns"
    assert plan(_pool(placement="Nowhere")).work_pool is None  # refused: nothing sent


def test_the_port_imports_nothing_of_the_operator_at_run_time() -> None:
    """kube.py (the adapter) and the pure chain both import port.py: were it to import
    either, the adapter would again stand above the reconcile."""
    tree = ast.parse(Path(port.__file__).read_text())
    runtime = [
        node
        for node in tree.body
        if isinstance(node, ast.Import | ast.ImportFrom)
        and any(
            (getattr(node, "module", None) or alias.name).startswith("prefect_raypool_operator")
            for alias in node.names
        )
    ]
    assert runtime == []


def test_the_operators_worker_env_goes_to_warm_pools_workers_not_over_theirs() -> None:
    from prefect_raypool_operator.owned import owned_of

    platform = (("HTTPS_PROXY", "http://proxy:3128"), ("PREFECT_API_URL", "x"), ("TEAM", "ops"))
    own = {"env": [{"name": "TEAM", "value": "data"}]}
    planned = plan(_pool(placement="ZeroCapacityNode", prefect=own), worker_env=platform)
    deployment = next(m for m in planned.desired.values() if m["kind"] == "Deployment")
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    names = [e["name"] for e in env]
    assert len(names) == len(set(names))  # the apply refuses a name twice
    values = {e["name"]: e.get("value") for e in env}
    assert values["HTTPS_PROXY"] == "http://proxy:3128"
    assert values["TEAM"] == "data" and values["PREFECT_API_URL"] == "http://prefect:4200/api"
    sidecar = plan(_pool(placement="HeadSidecar"), worker_env=platform)
    head = next(m for m in sidecar.desired.values() if m["kind"] == "RayCluster")
    containers = head["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    assert {"name": "HTTPS_PROXY", "value": "http://proxy:3128"} in containers[1]["env"]
    assert [owned_of(m, "p") for m in plan(_pool()).desired.values()] == [
        owned_of(m, "p") for m in plan(_pool(), worker_env=()).desired.values()
    ]
    ephemeral = plan(_pool(placement="Ephemeral"), worker_env=platform)
    assert "proxy" not in str(ephemeral.desired)


def test_a_malformed_worker_env_names_the_chart_value() -> None:
    from prefect_raypool_operator.config import _worker_env

    assert _worker_env('{"B": "2", "A": "1"}') == (("A", "1"), ("B", "2"))
    for raw in ("[1]", '{"bad name": "x"}', '{"A": 1}', "{"):
        with pytest.raises(ValueError, match="RAYPOOL_PREFECT_WORKER_ENV"):
            _worker_env(raw)
