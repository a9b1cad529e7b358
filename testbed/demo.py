"""`make demo`: examples/count_to.py deployed to a pool on `make up`'s real node.

A pool named `demo` (the HeadSidecar example) runs the example flow image
(examples/flows/Dockerfile: the pools' default image plus the flow code); the flow is
deployed to its work pool, one run is started, and the demo prints its state, its
task runs and the Ray pods that ran them.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import yaml

from testbed import REPO
from testbed.images import FLOWS_IMAGE
from testbed.node import NODE_NAME
from testbed.pooldriver import PoolDriver
from testbed.processes import cluster_tool
from testbed.waiting import eventually

IN_CLUSTER_PREFECT = "http://prefect-server.prefect.svc:4200/api"  # see devenv.expose_prefect


def demo_pool_manifest() -> dict[str, Any]:
    """The HeadSidecar example, named `demo`, running the example flow image."""
    manifest: dict[str, Any] = yaml.safe_load(
        (REPO / "examples" / "pools" / "head-sidecar.yaml").read_text()
    )
    manifest["metadata"]["name"] = "demo"
    manifest["spec"]["ray"]["image"] = FLOWS_IMAGE
    manifest["spec"]["prefect"]["workPool"]["name"] = "demo"
    return manifest


def main(state: Path) -> int:
    kubeconfig = state / "kubeconfig"
    api_url_file = state / "prefect-api-url"
    if not kubeconfig.exists() or not api_url_file.exists():
        print("make demo: nothing is running; start it with `make up`", file=sys.stderr)
        return 1

    kubectl = cluster_tool(state / "bin" / "kubectl", kubeconfig)
    if NODE_NAME not in kubectl("get", "nodes", "-o", "name"):
        print(
            "make demo: needs `make up` with a real node (this one is simulated)", file=sys.stderr
        )
        return 1
    driver = PoolDriver(kubeconfig, kubectl, api_url_file.read_text().strip(), "default")
    # `make up` keeps room on the node for this pool. Where `reports` (the same
    # HeadSidecar pool) was applied all the same, the demo pool takes its place.
    if kubectl("get", "prp", "reports", "--ignore-not-found", "-o", "name").strip():
        print("make demo: the pool `demo` (the example flow image) replaces `reports`", flush=True)
        kubectl("delete", "prp", "reports", "--ignore-not-found", "--wait=true")
        eventually(lambda: not driver.pods("prefectray.io/pool=reports"), 180, "reports' pods gone")
    else:
        print("make demo: the pool `demo` (HeadSidecar, the example flow image)", flush=True)
    t0 = time.monotonic()
    driver.apply(demo_pool_manifest())
    driver.wait_ready("demo", timeout=600)
    print(f"pool demo Ready after {time.monotonic() - t0:.1f}s", flush=True)
    run_id = driver.run_deployment(
        "demo", "count_to.py:count_to", "count-to", {"highest_number": 10}
    )
    run = driver.wait_final(run_id)
    with driver.prefect() as c:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        task_runs = c.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id]))
        )
    pods = {p.status.pod_ip: p.metadata.name for p in driver.pods("ray.io/cluster=demo")}
    ran_on = driver.ray_nodes_of_finished_tasks("demo", "run_task")
    print(f"flow run {run.name}: {run.state.type.value}, {len(task_runs)} task runs")
    for ip in sorted(set(ran_on.values())):
        count = sum(1 for v in ran_on.values() if v == ip)
        print(f"  {count} Ray task(s) ran on {pods.get(ip, ip)}")
    print("`kubectl delete prp demo` frees its room on the node.")
    return 0 if run.state.type.value == "COMPLETED" else 1
