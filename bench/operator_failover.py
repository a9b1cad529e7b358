"""Operator failover: how long pools go without an operator when the leader goes.

    .venv/bin/python -m bench.operator_failover [--rounds 3]

Two replicas elect a leader on a Lease with the chart's timings (leaseDuration 15 s,
renewDeadline 10 s, retryPeriod 2 s). Each round stops the leader, changes a pool's
spec at that instant, and times (a) until the standby leads and (b) until the change
is in the pool's RayCluster (the new leader's start-up and first reconcile included);
then starts a fresh standby for the next round. The leader is stopped two ways:

- SIGKILL (a crash, an evicted pod): the standby waits out the lease duration;
- SIGTERM (a rolling upgrade, a drain): the leader releases the Lease as it exits.

Prints the median and the range of each.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client, config

from prefect_raypool_operator import kinds
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane
from testbed.elected import Replica, Timing
from testbed.operator_process import apply_pool_crd
from testbed.prefect_server import start_prefect_server
from testbed.processes import stop_recorded
from testbed.waiting import eventually

NS = "default"
TINY = {"cpu": "10m", "memory": "64Mi"}
POOL = kinds.GROUP, kinds.VERSION, NS, kinds.PLURAL


def _pool(api_url: str, max_replicas: int) -> dict[str, Any]:
    return {
        "apiVersion": "prefectray.io/v1alpha1",
        "kind": "PrefectRayPool",
        "metadata": {"name": "failover"},
        "spec": {
            "ray": {
                "head": {"resources": TINY},
                "workerGroups": [
                    {"name": "cpu", "replicas": 0, "maxReplicas": max_replicas, "resources": TINY}
                ],
            },
            "prefect": {"apiUrl": api_url, "resources": TINY},
        },
    }


class Bench:
    def __init__(self, state: Path, kubeconfig: Path, api_url: str, timing: Timing):
        self.state, self.kubeconfig, self.api_url, self.timing = state, kubeconfig, api_url, timing
        self.custom = client.CustomObjectsApi(
            config.new_client_from_config(config_file=str(kubeconfig))
        )
        self.started = 0
        self.max_replicas = 4

    def replica(self) -> Replica:
        self.started += 1
        r = Replica(
            self.kubeconfig,
            self.state / f"replica-{self.started}.log",
            lease="prefect-raypool-operator",
            lease_namespace=NS,
            scope=(f"--namespace={NS}",),
            timing=self.timing,
        )
        r.start()
        return r

    def applied(self) -> bool:
        try:
            rc = self.custom.get_namespaced_custom_object(
                "ray.io", "v1", NS, "rayclusters", "failover"
            )
        except client.ApiException as e:
            if e.status == 404:
                return False
            raise
        return bool(rc["spec"]["workerGroupSpecs"][0]["maxReplicas"] == self.max_replicas)

    def round(self, leader: Replica, standby: Replica, how: str) -> tuple[float, float]:
        """Stop the leader `how`; seconds until the standby leads, and until it acted."""
        self.max_replicas += 1
        assert leader.proc is not None
        if how == "SIGKILL":
            leader.kill()
        else:
            leader.proc.terminate()  # SIGTERM to the process, as the kubelet sends it
        stopped = time.monotonic()
        self.custom.patch_namespaced_custom_object(
            *POOL, "failover", _pool(self.api_url, self.max_replicas)
        )
        leading = standby.wait_leading(timeout=self.timing.lease + 60) - stopped
        eventually(self.applied, timeout=60, interval=0.05, what="the change applied")
        acted = time.monotonic() - stopped
        leader.stop()
        return leading, acted


def _report(what: str, samples: list[float]) -> None:
    print(
        f"  {what}: median {statistics.median(samples):.1f} s "
        f"(min {min(samples):.1f}, max {max(samples):.1f}, n={len(samples)})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    timing = Timing()  # the chart's defaults
    state = Path(tempfile.mkdtemp(prefix="raypool-bench-"))
    cp = ControlPlane(binaries=ensure_binaries(), state_dir=state)
    cp.start()
    prefect = start_prefect_server(state / "prefect")
    replicas: list[Replica] = []
    try:
        apply_pool_crd(cp.binaries.kubectl, cp.kubeconfig)
        bench = Bench(state, cp.kubeconfig, prefect.api_url, timing)
        leader = bench.replica()
        replicas.append(leader)
        leader.wait_leading()
        bench.custom.create_namespaced_custom_object(
            *POOL, _pool(prefect.api_url, bench.max_replicas)
        )
        eventually(bench.applied, timeout=120, what="the pool's RayCluster")
        results: dict[str, tuple[list[float], list[float]]] = {}
        for how in ("SIGKILL", "SIGTERM"):
            leading, acted = results.setdefault(how, ([], []))
            for _ in range(args.rounds):
                standby = bench.replica()
                replicas.append(standby)
                took, done = bench.round(leader, standby, how)
                leading.append(took)
                acted.append(done)
                leader = standby
        print(
            f"operator failover, two replicas (leaseDuration {timing.lease:g} s, "
            f"renewDeadline {timing.renew:g} s, retryPeriod {timing.retry:g} s):"
        )
        for how, (leading, acted) in results.items():
            _report(f"{how} the leader -> the standby leads", leading)
            _report(f"{how} the leader -> a change made then is applied", acted)
    finally:
        for r in replicas:
            r.stop()
        prefect.stop()
        stop_recorded(state)
    print(f"logs: {state}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
