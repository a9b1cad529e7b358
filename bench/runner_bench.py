"""Side-by-side benchmark of Prefect task runners on Ray: `make bench`.

Runners: ours (prefect_raypool), prefect-ray 0.6.0 (installed here as a bench-only
dependency), Prefect's ThreadPoolTaskRunner, and raw Ray (the ceiling, no Prefect).
Cases:
  warm_map   a map of no-op tasks after a warm-up, in a running flow (tasks/s)
  count_to   the README's count_to(10), 0.5 s tasks, in a fresh process that
             starts its own local Ray, against Ray's own start-up and shut-down
  shared_arg a map of 100 tasks sharing one 100 MB unmapped argument (bytes),
             under Prefect's default cache policy (`@task`, what users write):
             each task run's cache key hashes its inputs (tasks/s and driver peak RSS)
  shared_nocache  the same with `cache_policy=NO_CACHE` (no hashing): the data
             movement alone
  pool_flow  a pool's flow run: a fresh process (as the Prefect worker's
             `prefect flow-run execute` is) attaching to the running Ray head
             through RAY_ADDRESS, a map of 20 tasks of 50 ms; flow time and the
             time from the map's start to its first result. Each runner's runs
             follow each other, as a pool's flow runs do (ours warms Ray worker
             processes for the next one, see runner/prefect_raypool/warm.py)
Every case runs in a fresh child process (so peak RSS is per case), against one
Prefect server (SQLite) and, for the warm cases, one Ray head started here. Each run
starts once the server has gone idle: it records a run's events for seconds after the
run returns, and that backlog would otherwise load the next run (whichever runner).
prefect-ray is slow, so its cases run fewer tasks (printed in the table);
throughput is compared per task.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
#: What a pool's Ray nodes preload into idle Ray worker processes (warm.PRELOAD_MODULE).
PRELOAD_MODULE = "prefect_raypool.preload"

RUNNERS = ["ours", "prefect-ray", "threadpool", "raw-ray"]
# Task counts per case and runner: prefect-ray gets fewer to keep the bench short.
COUNTS = {
    "warm_map": {"ours": 1000, "prefect-ray": 200, "threadpool": 1000, "raw-ray": 1000},
    # raw Ray has no cache keys: it runs in shared_nocache only.
    "shared_arg": {"ours": 100, "prefect-ray": 20, "threadpool": 20},
    "shared_nocache": {"ours": 100, "prefect-ray": 20, "threadpool": 100, "raw-ray": 100},
    "count_to": {"ours": 10, "prefect-ray": 10, "threadpool": 10, "raw-ray": 10},
    "pool_flow": {"ours": 20, "prefect-ray": 20, "threadpool": 20},
}
#: pool_flow's task duration.
POOL_TASK_SECONDS = 0.05
BLOB_BYTES = 100 * 1024 * 1024
#: count_to's task duration (the README example's).
TASK_SECONDS = 0.5


def ensure_prefect_ray() -> None:
    if importlib.util.find_spec("prefect_ray") is None:
        print("bench: installing prefect-ray==0.6.0 (bench-only dependency)", flush=True)
        # --no-deps: prefect and ray are already pinned by this project.
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "prefect-ray==0.6.0"],
            check=True,
        )


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def session_cpu_seconds(sid: int) -> float:
    """CPU seconds used so far by the processes of session `sid` (from /proc)."""
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields[3] is the session id
            total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / os.sysconf("SC_CLK_TCK")


def wait_until_idle(sid: int, busy: float = 0.1, limit: float = 120.0) -> None:
    """Wait until session `sid` uses under `busy` of a CPU over a second.

    The Prefect server records a run's events for seconds after the run returns;
    the next run would otherwise share the CPUs with that backlog.
    """
    deadline = time.monotonic() + limit
    last = session_cpu_seconds(sid)
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = session_cpu_seconds(sid)
        if now - last < busy:
            return
        last = now


def make_runner(name: str) -> Any:
    if name == "ours":
        from prefect_raypool import RayTaskRunner

        return RayTaskRunner()
    if name == "prefect-ray":
        from prefect_ray import RayTaskRunner as PrefectRayTaskRunner

        return PrefectRayTaskRunner()
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner()


# --------------------------------------------------------------------------- child side


def child_warm_map(runner_name: str, n: int) -> dict[str, Any]:
    import ray

    if runner_name == "raw-ray":

        @ray.remote
        def noop(i: int) -> int:
            return i

        ray.get([noop.remote(i) for i in range(50)])
        start = time.perf_counter()
        ray.get([noop.remote(i) for i in range(n)])
        return {"seconds": time.perf_counter() - start}

    from prefect import flow, task

    @task
    def noop_task(i: int) -> int:
        return i

    @flow(task_runner=make_runner(runner_name))
    def warm_map(n: int) -> float:
        noop_task.map(range(20)).result()  # warm-up: workers started and hydrated
        start = time.perf_counter()
        results = noop_task.map(range(n)).result()
        elapsed = time.perf_counter() - start
        assert results == list(range(n))
        return elapsed

    return {"seconds": warm_map(n)}


def child_shared_arg(runner_name: str, n: int, cache: bool = True) -> dict[str, Any]:
    import ray

    blob = os.urandom(1024) * (BLOB_BYTES // 1024)
    base_rss = peak_rss_mb()
    if runner_name == "raw-ray":

        @ray.remote
        def use(blob: bytes, i: int) -> int:
            return len(blob) + i

        start = time.perf_counter()
        ref = ray.put(blob)
        ray.get([use.remote(ref, i) for i in range(n)])
        return {"seconds": time.perf_counter() - start, "base_rss_mb": base_rss}

    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE
    from prefect.utilities.annotations import unmapped

    # Default policy: Prefect hashes each task run's inputs for its cache key (the
    # 100 MB too, with prefect-ray and the thread pool; once per map with ours).
    # NO_CACHE: no hashing, only the data movement.
    def use_blob(blob: bytes, i: int) -> int:
        return len(blob) + i

    use_task = task(use_blob) if cache else task(cache_policy=NO_CACHE)(use_blob)

    @flow(task_runner=make_runner(runner_name))
    def shared(n: int) -> float:
        use_task.submit(b"", 0).result()  # warm-up
        start = time.perf_counter()
        results = use_task.map(unmapped(blob), range(n)).result()
        elapsed = time.perf_counter() - start
        assert results == [BLOB_BYTES + i for i in range(n)]
        return elapsed

    return {"seconds": shared(n), "base_rss_mb": base_rss}


def _time_ray_start_stop() -> dict[str, float]:
    """Add up the time spent in ray.init and ray.shutdown from now on, whoever calls them.

    Ray's start-up varies by seconds from run to run on a loaded machine; the time
    beyond it, measured in the same process, varies far less.
    """
    import ray

    spent = {"ray_start_stop": 0.0}

    def timed(fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent["ray_start_stop"] += time.perf_counter() - started

        return wrapper

    ray.init = timed(ray.init)
    ray.shutdown = timed(ray.shutdown)
    return spent


def child_count_to(runner_name: str, n: int) -> dict[str, Any]:
    import ray

    spent = _time_ray_start_stop()
    if runner_name == "raw-ray":
        # Ray's own start-up and shut-down, with one task round trip.
        start = time.perf_counter()
        ray.init(logging_level="ERROR")
        ray.get(ray.remote(lambda: 1).remote())
        ray.shutdown()
        return {"seconds": time.perf_counter() - start, **spent}

    from prefect import flow, task

    @task
    def shout(number: int) -> int:
        time.sleep(TASK_SECONDS)
        print(f"#{number}")
        return number

    @flow(task_runner=make_runner(runner_name))
    def count_to(highest_number: int) -> list[int]:
        return shout.map(range(highest_number)).result()

    start = time.perf_counter()
    assert count_to(n) == list(range(n))
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, **spent}  # what Ray's start and stop took in that time
    if ray.is_initialized():  # prefect-ray leaves an auto-started Ray behind
        ray.shutdown()
    return result


def child_pool_flow(runner_name: str, n: int) -> dict[str, Any]:
    """The pool flow as users write it; Ray is found through RAY_ADDRESS, as in a pod."""
    from prefect import flow, task
    from prefect.futures import as_completed

    marks: dict[str, float] = {}

    @task
    def work(i: int) -> int:
        time.sleep(POOL_TASK_SECONDS)
        return i

    @flow(task_runner=make_runner(runner_name))
    def pool_flow(n: int) -> list[int]:
        marks["map"] = time.perf_counter()
        futures = work.map(range(n))
        for _ in as_completed(futures):  # timing only: when the first result arrives
            marks["first"] = time.perf_counter()
            break
        return futures.result()

    start = time.perf_counter()
    assert pool_flow(n) == list(range(n))
    return {"seconds": time.perf_counter() - start, "first_result": marks["first"] - marks["map"]}


def child_main(case: str, runner_name: str, n: int, ray_address: str | None) -> None:
    import ray

    if ray_address and case not in ("count_to", "pool_flow"):
        ray.init(address=ray_address, logging_level="ERROR")
    fn = {
        "warm_map": child_warm_map,
        "shared_arg": child_shared_arg,
        "shared_nocache": lambda r, k: child_shared_arg(r, k, cache=False),
        "count_to": child_count_to,
        "pool_flow": child_pool_flow,
    }
    result = fn[case](runner_name, n)
    result.update({"case": case, "runner": runner_name, "n": n, "peak_rss_mb": peak_rss_mb()})
    print("BENCH-RESULT " + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent side


def run_child(
    case: str,
    runner_name: str,
    n: int,
    ray_address: str | None,
    env: dict[str, str],
    label: str | None = None,
) -> dict[str, Any] | None:
    cmd = [sys.executable, __file__, "--child", case, runner_name, str(n)]
    if case == "pool_flow" and ray_address:
        env = {**env, "RAY_ADDRESS": ray_address}  # as KubeRay sets it in a pod
    elif ray_address:
        cmd.append(ray_address)
    started = time.monotonic()
    label = label or runner_name
    try:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    except subprocess.TimeoutExpired:
        print(f"  {case:<10} {label:<12} timed out", flush=True)
        return None
    for line in out.stdout.splitlines():
        if line.startswith("BENCH-RESULT "):
            result: dict[str, Any] = json.loads(line.removeprefix("BENCH-RESULT "))
            rate = result["n"] / result["seconds"]
            beyond = (
                f" ({result['seconds'] - result['ray_start_stop']:.2f} s beyond Ray's start+stop)"
                if "ray_start_stop" in result
                else f" (first result {result['first_result']:.2f} s after the map)"
                if "first_result" in result
                else ""
            )
            print(
                f"  {case:<10} {label:<12} n={n:<5} {result['seconds']:7.2f} s "
                f"{rate:8.1f} tasks/s  peak RSS {result['peak_rss_mb']:.0f} MB "
                f"({time.monotonic() - started:.0f} s with start-up){beyond}",
                flush=True,
            )
            return result
    print(f"  {case:<10} {label:<12} FAILED:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}")
    return None


def cell_text(case: str, r: dict[str, Any]) -> str:
    if case == "count_to":
        return f"{r['seconds']:.2f} s ({r['seconds'] - r['ray_start_stop']:.2f})"
    text = f"{r['n'] / r['seconds']:.1f}/s (n={r['n']})"
    if case.startswith("shared_"):
        text += f", +{r['peak_rss_mb'] - r['base_rss_mb']:.0f} MB"
    return text


def fmt_ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.1f}x" if a and b else "-"


def print_table(results: dict[tuple[str, str], dict[str, Any]]) -> None:
    def rate(case: str, runner: str) -> float | None:
        r = results.get((case, runner))
        return r["n"] / r["seconds"] if r else None

    def cell(case: str, runner: str) -> str:
        r = results.get((case, runner))
        return cell_text(case, r) if r else "-"

    header = ["case", *RUNNERS, "ours/prefect-ray", "ours/threadpool"]
    rows = [header]
    for case in ["warm_map", "shared_arg", "shared_nocache"]:
        rows.append(
            [
                case,
                *[cell(case, r) for r in RUNNERS],
                fmt_ratio(rate(case, "ours"), rate(case, "prefect-ray")),
                fmt_ratio(rate(case, "ours"), rate(case, "threadpool")),
            ]
        )
    ray_start = results.get(("count_to", "raw-ray"))
    over = {
        r: results[("count_to", r)]["seconds"] - ray_start["seconds"]
        for r in ["ours", "prefect-ray"]
        if ray_start and ("count_to", r) in results
    }
    rows.append(
        [
            "count_to",
            *[cell("count_to", r) for r in RUNNERS],
            f"+{over['ours']:.2f} s vs +{over['prefect-ray']:.2f} s"
            if "ours" in over and "prefect-ray" in over
            else "-",
            "-",
        ]
    )
    pool = {r: results.get(("pool_flow", r)) for r in RUNNERS}
    if any(pool.values()):

        def secs(r: str, key: str) -> float | None:
            res = pool.get(r)
            return res[key] if res else None

        for key, label in [("seconds", "pool_flow time"), ("first_result", "pool_flow 1st result")]:
            rows.append(
                [
                    label,
                    *[
                        f"{secs(r, key):.2f} s" if secs(r, key) is not None else "-"
                        for r in RUNNERS
                    ],
                    fmt_ratio(secs("ours", key), secs("prefect-ray", key)),
                    fmt_ratio(secs("ours", key), secs("threadpool", key)),
                ]
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    print()
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    floor = count_to_floor(results)
    if floor:
        print(floor)
        print()
    print(
        "warm_map: no-op tasks/s once workers are warm; shared_arg: tasks/s with one 100 MB "
        "unmapped bytes argument under Prefect's default cache policy (`@task`: each task "
        "run's cache key hashes its inputs), and the driver's peak RSS above its level with "
        "the argument built; shared_nocache: the same with cache_policy=NO_CACHE; count_to: "
        "wall time of count_to(10) in a fresh process that starts and "
        "stops its own Ray (raw-ray column: Ray's own start, one task, stop; the ratio "
        "column: time above that), in brackets the time beyond the ray.init and "
        "ray.shutdown calls inside it (Ray's start-up varies by seconds between runs on a "
        "loaded machine). prefect-ray runs fewer tasks (n) to keep the bench short. "
        "pool_flow: a fresh process attaching to the running Ray head (RAY_ADDRESS) runs a "
        "map of 20 tasks of 50 ms: the flow's wall time and the time from the map's start "
        "to its first result (best of the runs; ratios are times, lower is better for ours); "
        "the head preloads prefect_raypool.preload into idle Ray worker processes "
        "(RAY_preload_python_modules), as a pool's Ray pods do."
    )


def count_to_floor(results: dict[tuple[str, str], dict[str, Any]]) -> str | None:
    """What count_to must spend beyond Ray's start-up here whatever the Ray runner.

    The tasks themselves (0.5 s waves of one task per CPU, Ray's default), and
    Prefect's own cost of a flow run: the thread pool's count_to runs all ten at
    once, so its time less one wave is what Prefect's flow engine spends.
    """
    ours = results.get(("count_to", "ours"))
    threadpool = results.get(("count_to", "threadpool"))
    if not (ours and threadpool):
        return None
    cpus = os.cpu_count() or 1
    waves = math.ceil(COUNTS["count_to"]["ours"] / cpus)
    work = waves * TASK_SECONDS
    prefect = threadpool["seconds"] - TASK_SECONDS
    return (
        f"count_to beyond Ray's start+stop: ours {ours['seconds'] - ours['ray_start_stop']:.2f} s. "
        f"Floor for any Ray runner here: {work:.1f} s of tasks ({waves} waves of "
        f"{TASK_SECONDS} s on {cpus} CPUs) + {prefect:.2f} s of Prefect's own flow-run "
        f"cost (the thread pool's count_to less its one wave) = {work + prefect:.2f} s; "
        "the target is 3 s."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    parser.add_argument("--cases", default="warm_map,shared_arg,shared_nocache,count_to,pool_flow")
    parser.add_argument("--runners", default=",".join(RUNNERS))
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs per case and runner; the best is kept"
    )
    args = parser.parse_args()
    if args.child:
        case, runner_name, n = args.child[0], args.child[1], int(args.child[2])
        child_main(case, runner_name, n, args.child[3] if len(args.child) > 3 else None)
        return 0

    from testbed import dataplane
    from testbed.prefect_server import start_prefect_server
    from testbed.processes import kill_stragglers

    ensure_prefect_ray()
    root = Path(tempfile.mkdtemp(prefix="rpbench-"))
    print(f"bench: starting a Prefect server and a Ray head (state in {root})", flush=True)
    server = start_prefect_server(root)
    cluster = dataplane.start_ray_head(
        num_cpus=os.cpu_count() or 2,
        auth_mode="disabled",
        # As a pool's Ray pods: idle Ray worker processes import Prefect and the runner.
        extra_env={
            "RAY_preload_python_modules": PRELOAD_MODULE,
            "PYTHONPATH": os.pathsep.join(
                [str(REPO / "runner"), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        },
    )
    local_ray = Path(tempfile.mkdtemp(prefix="rpb-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(server.env())
    env.update(
        {
            "RAY_AUTH_MODE": "disabled",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # keep Ray on loopback
            "RAY_TMPDIR": str(local_ray),  # count_to's own Ray, apart from the head
            "RAY_DEDUP_LOGS": "1",
            # Ahead of what the caller set (e.g. a private install of prefect-ray).
            "PYTHONPATH": os.pathsep.join(
                [str(REPO / "runner"), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
    )
    results: dict[tuple[str, str], dict[str, Any]] = {}
    try:
        # Runners alternate within each round, so background load on a shared
        # machine hits them alike; the best of the rounds is kept.
        for case in args.cases.split(","):
            rounds = [args.runners.split(",")] * args.repeat
            if case == "pool_flow":  # a pool's flow runs follow each other: no interleaving
                rounds = [[r] * args.repeat for r in args.runners.split(",")]
            for round_runners in rounds:
                for runner_name in round_runners:
                    # "ours@DIR": this runner from another checkout's runner/ folder
                    # (a baseline, e.g. `git worktree add /tmp/base HEAD`), side by side.
                    base, _, runner_dir = runner_name.partition("@")
                    if base not in COUNTS[case]:
                        continue
                    n = COUNTS[case][base]
                    address = cluster.address if case != "count_to" else None  # own Ray
                    child_env = {**env, "PYTHONPATH": runner_dir} if runner_dir else env
                    wait_until_idle(server.process.pid)
                    result = run_child(case, base, n, address, child_env, label=runner_name)
                    best = results.get((case, runner_name))
                    if result and (best is None or result["seconds"] < best["seconds"]):
                        results[(case, runner_name)] = result
    finally:
        dataplane.stop_ray(cluster)
        server.stop()
        kill_stragglers(str(local_ray))
    print_table(results)
    for (case, runner_name), r in sorted(results.items()):
        if "@" in runner_name:  # baselines are not in the table
            print(f"{case} {runner_name}: {cell_text(case, r)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
