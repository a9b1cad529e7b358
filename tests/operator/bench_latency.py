"""Operator latency beside KubeRay's own, on the local control plane.

    .venv/bin/python tests/operator/bench_latency.py [--counts 1,100]

For N pools applied at once: time from apply to RayCluster created and to pool Ready.
Beside it, KubeRay's latency from RayCluster apply to head pod created, measured on
the same cluster with N RayClusters. Prints medians, p95s and the ratio
(target: ours apply->RayCluster within 2x of KubeRay's apply->head pod).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import yaml  # noqa: E402
from kubernetes import client, config  # noqa: E402
from operator_process import OperatorProcess  # noqa: E402

from dataplane import free_port, start_prefect_server, stop_prefect_server  # noqa: E402
from prefect_raypool_operator import crd  # noqa: E402
from prefect_raypool_operator.devenv import ControlPlane, ensure_binaries  # noqa: E402
from prefect_raypool_operator.devenv.operator_run import wait_established  # noqa: E402
from prefect_raypool_operator.devenv.processes import stop_recorded  # noqa: E402

REPO = HERE.parents[1]
POOL = "prefectray.io", "v1alpha1", "prefectraypools"
RAY = "ray.io", "v1", "rayclusters"
TINY = {"cpu": "10m", "memory": "64Mi"}


def _pool(name: str, api_url: str) -> dict[str, Any]:
    return {
        "apiVersion": "prefectray.io/v1alpha1",
        "kind": "PrefectRayPool",
        "metadata": {"name": name},
        "spec": {  # tiny requests: 100 pools must fit the one simulated node
            "ray": {
                "head": {"resources": TINY},
                "workerGroups": [{"name": "cpu", "replicas": 1, "resources": TINY}],
            },
            "prefect": {"apiUrl": api_url, "resources": TINY},
        },
    }


def _raycluster(name: str) -> dict[str, Any]:
    container = {"name": "ray", "image": "rayproject/ray:2.60.0-py311"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayCluster",
        "metadata": {"name": name},
        "spec": {
            "rayVersion": "2.60.0",
            "headGroupSpec": {
                "rayStartParams": {},
                "template": {"spec": {"containers": [container]}},
            },
            "workerGroupSpecs": [
                {
                    "groupName": "cpu",
                    "replicas": 1,
                    "minReplicas": 0,
                    "maxReplicas": 1,
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [container]}},
                }
            ],
        },
    }


def _poll(
    pending: dict[str, float], done: Callable[[], set[str]], timeout: float = 240
) -> dict[str, float]:
    latencies: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    while len(latencies) < len(pending) and time.monotonic() < deadline:
        now = time.monotonic()
        for name in done() - latencies.keys():
            if name in pending:
                latencies[name] = now - pending[name]
        time.sleep(0.1)
    return latencies


def _stats(label: str, values: dict[str, float], n: int) -> float:
    got = sorted(values.values())
    if len(got) < n:
        print(f"  {label:<40} only {len(got)}/{n} finished")
    if not got:
        return float("nan")
    p95 = got[min(len(got) - 1, int(0.95 * len(got)))]
    median = statistics.median(got)
    print(f"  {label:<40} median {median:6.2f}s  p95 {p95:6.2f}s  max {got[-1]:6.2f}s")
    return median


def _namespace(core: client.CoreV1Api, name: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    for _ in range(300):
        try:
            core.read_namespaced_service_account("default", name)
            return
        except client.ApiException:
            time.sleep(0.2)


def bench(count: int, api: client.ApiClient, api_url: str, run: int, quiet: bool = False) -> None:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    report = (lambda *a: None) if quiet else _stats
    if not quiet:
        print(f"== {count} at once")
    ns = f"kuberay-{run + 1}-{count}"
    _namespace(core, ns)
    started = {}
    for i in range(count):
        started[f"rc{i}"] = time.monotonic()
        custom.create_namespaced_custom_object(*RAY[:2], ns, RAY[2], _raycluster(f"rc{i}"))

    def heads() -> set[str]:
        pods = core.list_namespaced_pod(ns, label_selector="ray.io/node-type=head").items
        return {p.metadata.labels["ray.io/cluster"] for p in pods}

    kuberay = report("KubeRay: RayCluster apply -> head pod", _poll(started, heads), count)
    core.delete_namespace(ns)  # free the simulated node's pod slots for the pools

    ns = f"pools-{run + 1}-{count}"
    _namespace(core, ns)
    started = {}
    for i in range(count):
        started[f"p{i}"] = time.monotonic()
        custom.create_namespaced_custom_object(*POOL[:2], ns, POOL[2], _pool(f"p{i}", api_url))

    def clusters() -> set[str]:
        items = custom.list_namespaced_custom_object(*RAY[:2], ns, RAY[2])["items"]
        return {rc["metadata"]["name"] for rc in items}

    def ready() -> set[str]:
        items = custom.list_namespaced_custom_object(*POOL[:2], ns, POOL[2])["items"]
        return {
            p["metadata"]["name"]
            for p in items
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in (p.get("status") or {}).get("conditions", [])
            )
        }

    ours = report("ours: pool apply -> RayCluster created", _poll(started, clusters), count)
    report("ours: pool apply -> pool Ready", _poll(started, ready), count)
    if not quiet:
        waiting: dict[str, int] = {}
        for p in custom.list_namespaced_custom_object(*POOL[:2], ns, POOL[2])["items"]:
            for c in (p.get("status") or {}).get("conditions", []):
                if c["status"] != "True" and c["type"] != "Ready":
                    key = f"{c['type']}={c['status']} {c['reason']}"
                    waiting[key] = waiting.get(key, 0) + 1
        for key, n in sorted(waiting.items()):
            print(f"    not ready: {n} x {key}")
    if not quiet:
        print(f"  ratio ours/KubeRay (medians): {ours / kuberay:.2f}x  (target <= 2x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,100")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="raypool-bench-"))
    cp = ControlPlane(binaries=ensure_binaries(), state_dir=state)
    cp.start()
    prefect = start_prefect_server(state / "prefect")
    op = OperatorProcess(cp.kubeconfig, state / "operator.log", free_port(), {})
    try:
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / crd.CRD_FILE))
        wait_established(cp.binaries.kubectl, cp.kubeconfig)
        op.start()
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        # Warm-up: the operator's watches are live and connections open before timing.
        bench(1, api, prefect.api_url, -1, quiet=True)
        for run, count in enumerate(int(c) for c in args.counts.split(",")):
            bench(count, api, prefect.api_url, run)
    finally:
        op.stop()
        stop_prefect_server(prefect)
        stop_recorded(state)
    print(yaml.safe_dump({"operator_log": str(state / "operator.log")}).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
