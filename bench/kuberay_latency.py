"""Ephemeral pools: time from a flow run scheduled to its RayJob created.

    .venv/bin/python -m bench.kuberay_latency [--runs 10] [--poll 1]

The `kuberay` worker polls Prefect every `--poll` seconds (PREFECT_WORKER_QUERY_SECONDS;
Prefect's default is 10), so the latency is about half a poll plus the worker's own
work: reading the deployment, templating, the Pending/Submitting states, the create.
Runs one after another on the local control plane with the real KubeRay operator.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import anyio
from kubernetes import client, config

from prefect_raypool_kuberay.worker import GROUP, PLURAL, VERSION, KubeRayWorker
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane
from testbed.prefect_server import start_prefect_server
from testbed.processes import stop_recorded


async def _measure(api: client.ApiClient, namespace: str, runs: int) -> list[float]:
    from prefect.client.orchestration import get_client

    pool = f"bench-{uuid.uuid4().hex[:6]}"
    template = KubeRayWorker.get_default_base_job_template()
    template["variables"]["properties"]["namespace"]["default"] = namespace
    custom = client.CustomObjectsApi(api)
    async with get_client() as c:
        from prefect.client.schemas.actions import WorkPoolCreate

        await c.create_work_pool(
            WorkPoolCreate(name=pool, type="kuberay", base_job_template=template)
        )
        flow_id = await c.create_flow_from_name("bench-flow")
        deployment = await c.create_deployment(
            flow_id=flow_id, name="bench", work_pool_name=pool, entrypoint="f.py:f"
        )
        latencies: list[float] = []
        async with anyio.create_task_group() as tg:
            worker = KubeRayWorker(work_pool_name=pool, kube_api_client=api)
            tg.start_soon(lambda: worker.start(printer=lambda *_: None))
            for _ in range(runs + 1):  # the first one warms the worker up
                start = time.monotonic()
                run = await c.create_flow_run_from_deployment(deployment)
                selector = f"prefect.io/flow-run-id={run.id}"
                while not custom.list_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, label_selector=selector
                )["items"]:
                    await anyio.sleep(0.05)
                latencies.append(time.monotonic() - start)
            tg.cancel_scope.cancel()
    return latencies[1:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="raypool-bench-kuberay-"))
    cp = ControlPlane(binaries=ensure_binaries(), state_dir=state)
    cp.start()
    prefect = start_prefect_server(state / "prefect")
    try:
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_WORKER_QUERY_SECONDS,
            temporary_settings,
        )

        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        namespace = "bench-kuberay"
        client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        settings: dict[Any, Any] = {
            PREFECT_API_URL: prefect.api_url,
            PREFECT_WORKER_QUERY_SECONDS: args.poll,
        }
        with temporary_settings(settings):
            latencies = anyio.run(_measure, api, namespace, args.runs)
    finally:
        prefect.stop()
        stop_recorded(state)
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    print(
        f"flow run scheduled -> RayJob created ({len(ordered)} runs, worker polling every "
        f"{args.poll:g}s): median {statistics.median(ordered):.2f}s, p95 {p95:.2f}s, "
        f"max {ordered[-1]:.2f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
