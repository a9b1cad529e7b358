"""What a flow run costs on an Ephemeral pool, on a real node, beside a warm pool.

    tests/isolated.sh .venv/bin/python -m bench.ephemeral_real [--runs 3] [--count 4]
        [--rows warm,woken,raised,demand,ephemeral]

The same deployed flow (examples/count_to.py, `count_to(4)`, RayTaskRunner() with
no arguments) runs `--runs` times on a warm ZeroCapacityNode pool, on the same pool
suspended while idle (`spec.idle`, each run waking it), on a pool whose Ray autoscaler
has removed every Ray worker (the group raised by the queue, `podsPerFlowRun: 1`, or
left to Ray's demand, 0), then on an Ephemeral pool, one run at a time. For each run,
from the flow run's scheduled time (Prefect's `expected_start_time`): its RayJob
created (Ephemeral) or its pool waking (idle), its first task run started, the flow
run finished. The Prefect workers poll every second (Prefect's default is 10 s: add
half of that to each figure with defaults). The images are already on the node, as
on a node that ran the pool before.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from testbed.ephemeral import (
    FAST_POLL,
    run_flow_on_ephemeral_pool,
    start_ephemeral_pool,
    task_timeline,
)
from testbed.pooldriver import PoolDriver, pool_manifest
from testbed.realstack import RealNodeUnavailable, RealStack, start_real_stack
from testbed.waiting import eventually


def _driver(stack: RealStack) -> PoolDriver:
    pools = PoolDriver(
        stack.kubeconfig, stack.kubectl, stack.prefect.api_url, f"bench-{uuid.uuid4().hex[:6]}"
    )
    pools.create_namespace()
    return pools


def _warm_pool(stack: RealStack, runs: int, count: int) -> list[tuple[float, float]]:
    pools = _driver(stack)
    try:
        manifest = pool_manifest("warm", pools.prefect_api_url, "ZeroCapacityNode")
        manifest["spec"]["prefect"]["env"] = list(FAST_POLL)
        pools.apply(manifest)
        pools.wait_ready("warm")
        out = []
        for _ in range(runs):
            run_id = pools.run_deployment(
                "warm", "count_to.py:count_to", "count-to", {"highest_number": count}
            )
            run = pools.wait_final(run_id)
            assert run.state.type.value == "COMPLETED", run.state
            _, first, final = task_timeline(pools, run)
            out.append((first, final))
        return out
    finally:
        pools.delete()  # frees the node's CPUs for the Ephemeral runs


def _wakes(pools: PoolDriver) -> int:
    return len([e for e in pools.events("idle") if e.reason == "Waking"])


def _woke(pools: PoolDriver, before: int) -> bool:
    return _wakes(pools) > before


def _woken_pool(stack: RealStack, runs: int, count: int) -> list[tuple[float, float, float]]:
    """Each run submitted to a suspended pool (no pod left): (woken, first task, final)."""
    pools = _driver(stack)
    try:
        manifest = pool_manifest("idle", pools.prefect_api_url, "ZeroCapacityNode")
        manifest["spec"]["prefect"]["env"] = list(FAST_POLL)
        manifest["spec"]["idle"] = {"suspendAfterSeconds": 15, "minAwakeSeconds": 0}
        pools.apply(manifest)
        out = []
        for _ in range(runs):
            pools.wait_condition("idle", "Ready", "False", "Suspended", timeout=600)
            eventually(lambda: not pools.pods("prefectray.io/pool=idle"), 300, "no pod left")
            wakes = _wakes(pools)
            t0 = time.monotonic()
            run_id = pools.run_deployment(
                "idle", "count_to.py:count_to", "count-to", {"highest_number": count}
            )
            eventually(partial(_woke, pools, wakes), 120, "a Waking Event", interval=0.5)
            woken = time.monotonic() - t0  # seen from here: within a poll of the Event
            run = pools.wait_final(run_id, timeout=600)
            assert run.state.type.value == "COMPLETED", run.state
            _, first, final = task_timeline(pools, run)
            out.append((woken, first, final))
        return out
    finally:
        pools.delete()


def _autoscaled_pool(
    stack: RealStack, runs: int, count: int, per_run: int
) -> list[tuple[float, float]]:
    """Each run on a pool whose Ray autoscaler has removed every Ray worker (the head
    takes no tasks): the group raised by the queue (`podsPerFlowRun: 1`) or only by
    Ray's demand (0). (first task, final)."""
    pools = _driver(stack)
    name = f"auto{per_run}"
    try:
        manifest = pool_manifest(name, pools.prefect_api_url, "ZeroCapacityNode")
        spec = manifest["spec"]
        spec["prefect"]["env"] = list(FAST_POLL)
        spec["prefect"]["resources"]["cpu"] = "500m"  # room for the autoscaler container
        spec["ray"]["autoscaling"] = {
            "enabled": True,
            "idleTimeoutSeconds": 10,
            "resources": {"cpu": "100m", "memory": "256Mi"},
        }
        spec["ray"]["workerGroups"][0].update(
            replicas=0, minReplicas=0, maxReplicas=1, podsPerFlowRun=per_run
        )
        pools.apply(manifest)
        pools.wait_ready(name)
        workers = f"prefectray.io/pool={name},ray.io/node-type=worker"
        out = []
        for _ in range(runs):
            eventually(lambda: not pools.pods(workers), 300, "no Ray worker left")
            run_id = pools.run_deployment(
                name, "count_to.py:count_to", "count-to", {"highest_number": count}
            )
            run = pools.wait_final(run_id, timeout=600)
            assert run.state.type.value == "COMPLETED", run.state
            _, first, final = task_timeline(pools, run)
            out.append((first, final))
        return out
    finally:
        pools.delete()


def _ephemeral(stack: RealStack, runs: int, count: int) -> list[tuple[float, float, float]]:
    pools = _driver(stack)
    try:
        start_ephemeral_pool(pools, "eph")
        out = []
        for _ in range(runs):
            run = run_flow_on_ephemeral_pool(pools, "eph", count)
            assert run.flow_run.state.type.value == "COMPLETED", run.flow_run.state
            out.append((run.rayjob_created_s, run.first_task_running_s, run.final_s))
        return out
    finally:
        pools.delete()


def _median(values: list[float]) -> str:
    return f"{statistics.median(values):5.1f}s (min {min(values):.1f}, max {max(values):.1f})"


Measure = Callable[[RealStack, int, int], Sequence[tuple[float, ...]]]
ROWS: dict[str, Measure] = {
    "warm": _warm_pool,
    "woken": _woken_pool,
    "raised": partial(_autoscaled_pool, per_run=1),
    "demand": partial(_autoscaled_pool, per_run=0),
    "ephemeral": _ephemeral,
}
LABELS = {
    "warm": "warm ZeroCapacityNode",
    "woken": "suspended, woken (idle)",
    "raised": "autoscaled from 0 workers, queue-raised",
    "demand": "autoscaled from 0 workers, Ray demand only",
    "ephemeral": "Ephemeral (RayJob)",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--count", type=int, default=4, help="count_to(N): N tasks")
    parser.add_argument(
        "--rows", default=",".join(ROWS), help=f"which, comma-separated: {','.join(ROWS)}"
    )
    args = parser.parse_args()
    rows = set(args.rows.split(","))
    state = Path(tempfile.mkdtemp(prefix="raypool-bench-real-"))
    try:
        stack = start_real_stack(state)
    except RealNodeUnavailable as e:
        print(f"skipped: no real node here: {e}")
        return 0
    got: dict[str, list[tuple[float, ...]]] = {}
    try:
        for row, measure in ROWS.items():
            if row in rows:
                got[row] = list(measure(stack, args.runs, args.count))
    finally:
        stack.stop()
        shutil.rmtree(state, ignore_errors=True)
    print(f"\ncount_to({args.count}), {args.runs} runs each, medians from the flow run scheduled:")
    print(f"  {'':44} {'RayJob created / woken':>28} {'first task running':>28} {'final':>28}")
    for row, figures in got.items():
        columns = [_median([f[i] for f in figures]) for i in range(len(figures[0]))]
        print(
            f"  {LABELS[row]:44} "
            + " ".join(f"{c:>28}" for c in ["-"] * (3 - len(columns)) + columns)
        )
    if "warm" in got and "ephemeral" in got:
        extra = statistics.median([e[2] for e in got["ephemeral"]]) - statistics.median(
            [w[1] for w in got["warm"]]
        )
        print(f"  Ephemeral costs {extra:.1f}s more per flow run than the warm pool (medians)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
