"""Operator latency beside KubeRay's own, on the local control plane.

    .venv/bin/python -m bench.operator_latency [--counts 1,100]

For N pools applied at once: time from apply to RayCluster created and to pool Ready.
Beside it, KubeRay's latency from RayCluster apply to head pod created, measured on
the same cluster with N RayClusters. Prints medians, p95s and the ratio
(target: ours apply->RayCluster within 2x of KubeRay's apply->head pod).

Each latency runs from just before that object's create request to the watch event
that shows the result; the watches start before the first create, so the time the
benchmark itself spends submitting N objects is not counted against anyone.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config, watch

from prefect_raypool_operator import kinds
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane
from testbed.operator_process import OperatorProcess, allow_prefect, apply_pool_crd
from testbed.prefect_server import start_prefect_server
from testbed.processes import free_port, stop_recorded

POOL = kinds.GROUP, kinds.VERSION, kinds.PLURAL
RAY = "ray.io", "v1", "rayclusters"
TINY = {"cpu": "10m", "memory": "64Mi"}
ROUNDS_OF_ONE = 10  # "1 at once" is measured this many times, one after another


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


class FirstSeen:
    """When each object first satisfies `done`, from a watch on one namespace.

    The watch starts at the list's resourceVersion before anything is created, so
    no event is missed however long the creates take. A stream that breaks under
    load is resumed from a fresh list (what it missed is seen at the list's time).
    """

    def __init__(
        self,
        list_fn: Callable[..., Any],
        args: tuple[Any, ...],
        name_of: Callable[[Any], str | None],
        done: Callable[[Any], bool] = lambda _: True,
        **kwargs: Any,
    ):
        self.times: dict[str, float] = {}
        self._name_of, self._done = name_of, done
        self._stopped = False
        self._changed = threading.Condition()
        self._watch = watch.Watch()

        def listed() -> str:
            result = list_fn(*args, **kwargs)
            if isinstance(result, dict):
                items, version = result["items"], result["metadata"]["resourceVersion"]
            else:
                items, version = result.items, result.metadata.resource_version
            for obj in items:
                self._see(obj)
            return str(version)

        def run(version: str) -> None:
            while not self._stopped:
                try:
                    for event in self._watch.stream(
                        list_fn, *args, resource_version=version, timeout_seconds=600, **kwargs
                    ):
                        if event["type"] == "ERROR":  # e.g. 410 Gone: list again
                            raise RuntimeError(str(event["object"]))
                        self._see(event["object"])
                    return
                except Exception:
                    if self._stopped:  # the stream ends once the namespace goes
                        return
                    self._watch = watch.Watch()
                    version = listed()

        threading.Thread(target=run, args=(listed(),), daemon=True).start()

    def _see(self, obj: Any) -> None:
        name = self._name_of(obj)
        if name and name not in self.times and self._done(obj):
            with self._changed:
                self.times[name] = time.monotonic()
                self._changed.notify_all()

    def wait(self, started: dict[str, float], timeout: float = 240) -> dict[str, float]:
        """Latency of each started object (name -> seconds); absent if not seen in time."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not started.keys() <= self.times.keys():
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
        return {n: self.times[n] - t for n, t in started.items() if n in self.times}

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


def _apply_in_rounds(
    count: int, create: Callable[[str], None], prefix: str, watchers: list[FirstSeen]
) -> list[dict[str, float]]:
    """Create `count` objects at once, ROUNDS_OF_ONE times when `count` is 1 (one
    sample says little); per watcher, the latencies of all of them."""
    results: list[dict[str, float]] = [{} for _ in watchers]
    for round_ in range(ROUNDS_OF_ONE if count == 1 else 1):
        started = {}
        for i in range(count):
            name = f"{prefix}{round_}-{i}"
            started[name] = time.monotonic()
            create(name)
        for result, watcher in zip(results, watchers, strict=True):
            result.update(watcher.wait(started))
    for watcher in watchers:
        watcher.stop()
    return results


def _stats(label: str, values: dict[str, float], n: int) -> float:
    got = sorted(values.values())
    if len(got) < n:
        print(f"  {label:<40} only {len(got)}/{n} finished")
    if not got:
        return float("nan")
    p95 = got[min(len(got) - 1, int(0.95 * len(got)))]
    median = statistics.median(got)
    print(f"  {label:<40} median {median:7.3f}s  p95 {p95:7.3f}s  max {got[-1]:7.3f}s")
    return median


def _namespace(core: client.CoreV1Api, name: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    for _ in range(300):
        try:
            core.read_namespaced_service_account("default", name)
            return
        except client.ApiException:
            time.sleep(0.2)


def _name(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["name"])


def _ready(pool: dict[str, Any]) -> bool:
    conditions = (pool.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def bench(count: int, api: client.ApiClient, api_url: str, run: int, quiet: bool = False) -> None:
    core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
    report = (lambda *a: None) if quiet else _stats
    samples = ROUNDS_OF_ONE if count == 1 else count
    if not quiet:
        print(f"== {count} at once" + (f", {ROUNDS_OF_ONE} times" if count == 1 else ""))
    ns = f"kuberay-{run + 1}-{count}"
    _namespace(core, ns)
    heads = FirstSeen(
        core.list_namespaced_pod,
        (ns,),
        name_of=lambda pod: (pod.metadata.labels or {}).get("ray.io/cluster"),
        label_selector="ray.io/node-type=head",
    )
    ray_ready = FirstSeen(
        custom.list_namespaced_custom_object,
        (*RAY[:2], ns, RAY[2]),
        name_of=_name,
        done=lambda rc: (rc.get("status") or {}).get("state") == "ready",
    )
    to_head, to_ready = _apply_in_rounds(
        count,
        lambda name: custom.create_namespaced_custom_object(
            *RAY[:2], ns, RAY[2], _raycluster(name)
        ),
        "rc",
        [heads, ray_ready],
    )
    kuberay = report("KubeRay: RayCluster apply -> head pod", to_head, samples)
    report("KubeRay: RayCluster apply -> ready", to_ready, samples)
    core.delete_namespace(ns)  # free the simulated node's pod slots for the pools

    ns = f"pools-{run + 1}-{count}"
    _namespace(core, ns)
    clusters = FirstSeen(
        custom.list_namespaced_custom_object, (*RAY[:2], ns, RAY[2]), name_of=_name
    )
    ready = FirstSeen(
        custom.list_namespaced_custom_object, (*POOL[:2], ns, POOL[2]), name_of=_name, done=_ready
    )
    to_cluster, to_pool_ready = _apply_in_rounds(
        count,
        lambda name: custom.create_namespaced_custom_object(
            *POOL[:2], ns, POOL[2], _pool(name, api_url)
        ),
        "p",
        [clusters, ready],
    )
    ours = report("ours: pool apply -> RayCluster created", to_cluster, samples)
    report("ours: pool apply -> pool Ready", to_pool_ready, samples)
    if not quiet:
        waiting: dict[str, int] = {}
        for p in custom.list_namespaced_custom_object(*POOL[:2], ns, POOL[2])["items"]:
            for c in (p.get("status") or {}).get("conditions", []):
                if c["status"] != "True" and c["type"] != "Ready":
                    key = f"{c['type']}={c['status']} {c['reason']}"
                    waiting[key] = waiting.get(key, 0) + 1
        for key, n in sorted(waiting.items()):
            print(f"    not ready: {n} x {key}")
        print(f"  ratio ours/KubeRay (medians): {ours / kuberay:.2f}x  (target <= 2x)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1,100")
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="raypool-bench-"))
    cp = ControlPlane(binaries=ensure_binaries(), state_dir=state)
    cp.start()
    prefect = start_prefect_server(state / "prefect")
    allowed = allow_prefect(prefect.api_url)
    op = OperatorProcess(cp.kubeconfig, state / "operator.log", free_port(), allowed)
    try:
        apply_pool_crd(cp.binaries.kubectl, cp.kubeconfig)
        op.start()
        api = config.new_client_from_config(config_file=str(cp.kubeconfig))
        # Warm-up: the operator's watches are live and connections open before timing.
        bench(1, api, prefect.api_url, -1, quiet=True)
        for run, count in enumerate(int(c) for c in args.counts.split(",")):
            bench(count, api, prefect.api_url, run)
    finally:
        op.stop()
        prefect.stop()
        stop_recorded(state)
    print(yaml.safe_dump({"operator_log": str(state / "operator.log")}).strip())
    return 0


if __name__ == "__main__":
    sys.exit(main())
