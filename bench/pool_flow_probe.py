"""Where a pool flow run's time goes: a fresh process attaching to a running Ray head.

Probe (not part of `make bench`): starts a Prefect server and a Ray head, then runs
the pool flow (a map of 20 tasks of 50 ms) in fresh processes and prints a timeline
from timestamps taken in the driver and in the Ray workers.
  tests/isolated.sh .venv/bin/python -m bench.pool_flow_probe [--runs 3]
PROBE_PROFILE_MAP=FILE appends a profile of the driver's map submission to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
PRELOAD = "prefect_raypool.preload"

CHILD = r"""
import json, os, sys, time
T = {"proc_start": float(sys.argv[1])}
import ray
T["ray_imported"] = time.time()
from prefect import flow, task
T["prefect_imported"] = time.time()
from prefect_raypool import RayTaskRunner
def timed(name, fn):
    def wrapper(*a, **k):
        T[name + "_start"] = time.time()
        try:
            return fn(*a, **k)
        finally:
            T[name + "_end"] = time.time()
    return wrapper
RayTaskRunner.__enter__ = timed("runner_enter", RayTaskRunner.__enter__)
RayTaskRunner.__exit__ = timed("runner_exit", RayTaskRunner.__exit__)
RayTaskRunner._flush_ray_worker_logs = timed("flush_logs", RayTaskRunner._flush_ray_worker_logs)
RayTaskRunner._warm_for_next_flow_run = timed("warm_next", RayTaskRunner._warm_for_next_flow_run)
ray.init = timed("ray_init", ray.init)
if os.environ.get("PROBE_PROFILE_MAP"):  # where the driver's map submission goes
    import cProfile, pstats
    _map = RayTaskRunner.map
    def profiled_map(*a, **k):
        with cProfile.Profile() as prof:
            out = _map(*a, **k)
        with open(os.environ["PROBE_PROFILE_MAP"], "a") as f:
            pstats.Stats(prof, stream=f).sort_stats("cumulative").print_stats(40)
        return out
    RayTaskRunner.map = profiled_map
ray.shutdown = timed("ray_shutdown", ray.shutdown)

def _stat_start():
    with open("/proc/self/stat") as f:
        ticks = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as f:
        btime = next(int(l.split()[1]) for l in f if l.startswith("btime"))
    return btime + ticks / os.sysconf("SC_CLK_TCK")

@task
def work(i: int) -> dict:
    start = time.time()
    time.sleep(0.05)
    return {"pid": os.getpid(), "start": start, "proc": _stat_start(), "end": time.time()}

@flow(task_runner=RayTaskRunner(address="auto"))
def pool_flow(n: int) -> list:
    T["flow_start"] = time.time()
    futures = work.map(range(n))
    T["map_submitted"] = time.time()
    futures[0].wait(); T["first_future_done"] = time.time()
    out = futures.result()
    T["all_results"] = time.time()
    return out

T["flow_call"] = time.time()
out = pool_flow(20)
T["flow_return"] = time.time()
print("PROBE " + json.dumps({"T": T, "tasks": out}), flush=True)
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from testbed import dataplane
    from testbed.prefect_server import start_prefect_server

    root = Path(tempfile.mkdtemp(prefix="rpprobe-"))
    server = start_prefect_server(root)
    cluster = dataplane.start_ray_head(
        num_cpus=os.cpu_count() or 2,
        auth_mode="disabled",
        extra_env={
            # PROBE_PRELOAD / PROBE_PATH: more modules for the idle Ray worker
            # processes to preload (e.g. timers around ray_worker's steps), and where.
            "RAY_preload_python_modules": os.environ.get("PROBE_PRELOAD", PRELOAD),
            "PYTHONPATH": os.pathsep.join([str(REPO / "runner"), os.environ.get("PROBE_PATH", "")]),
        },
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(server.env())
    env.update(
        {
            "RAY_ADDRESS": cluster.address,
            "RAY_AUTH_MODE": "disabled",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            "PYTHONPATH": os.pathsep.join([str(REPO / "runner"), env.get("PYTHONPATH", "")]),
        }
    )
    try:
        for run in range(args.runs):
            time.sleep(3)
            t0 = time.time()
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(t0)], env=env, capture_output=True, text=True
            )
            exited = time.time()
            line = next((x for x in out.stdout.splitlines() if x.startswith("PROBE ")), None)
            if line is None:
                print(out.stdout[-2000:], out.stderr[-3000:])
                continue
            data: dict[str, Any] = json.loads(line.removeprefix("PROBE "))
            T, tasks = data["T"], data["tasks"]
            T["proc_exit"] = exited
            first_proc = min(t["proc"] for t in tasks)
            first_task = min(t["start"] for t in tasks)
            first_end = min(t["end"] for t in tasks)
            print(f"run {run}: {len({t['pid'] for t in tasks})} worker pids")
            base = T["flow_start"]
            rows = sorted(
                [(k, v) for k, v in T.items()]
                + [
                    ("first worker process started", first_proc),
                    ("first task body started", first_task),
                    ("first task body ended", first_end),
                    ("last task body ended", max(t["end"] for t in tasks)),
                ],
                key=lambda kv: kv[1],
            )
            rows.sort(key=lambda kv: kv[1])
            for k, v in rows:
                print(f"  {v - base:+7.3f} s  {k}")
            print(
                f"  flow (flow_start..flow_return) {T['flow_return'] - T['flow_start']:.2f} s,"
                f" first result after map {T['first_future_done'] - T['flow_start']:.2f} s"
            )
    finally:
        dataplane.stop_ray(cluster)
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
