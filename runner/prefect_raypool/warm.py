"""Warm Ray worker processes for the next flow run of a pool.

Every flow run of a pool is a fresh driver, so a new Ray job, and Ray gives a job
only Ray worker processes of its own: it starts them when the job's tasks arrive
and kills them when the job ends. Each flow run so paid a process start, Prefect's
import and its first-use set-up (seconds on 2 cores) before its first task run.

Ray does reuse one kind of process across jobs: a worker started for no job yet,
which the next job that needs one takes over (it then applies that job's config,
so user code and `sys.path` are the new job's). A flow run that leaves a Ray
cluster running asks each node it ran on for as many such processes as it used
(`prestart_for_next_job`). Where the Ray node runs with
`RAY_preload_python_modules=prefect_raypool.preload` (the operator's pools do),
they also import Prefect and this runner while idle, before any job exists.
"""

from __future__ import annotations

import logging
from collections import Counter

import ray

#: The module a Ray node preloads into its idle worker processes (see preload.py).
PRELOAD_MODULE = "prefect_raypool.preload"


def prestart_for_next_job(
    used: Counter[str], keep_alive_s: int, log: logging.Logger, timeout: float = 2.0
) -> int:
    """Ask each node in `used` (node id -> Ray worker processes this job used there)
    for that many job-less Ray worker processes, kept alive `keep_alive_s` seconds.

    Replacing what the job used, not a fixed number, keeps the idle processes per
    node at about what one flow run needs; past `keep_alive_s` Ray trims idle ones
    back to its soft limit (the node's CPU count). Returns the processes asked for.
    Best effort: a failure is logged and the flow run goes on.
    """
    from ray._private.grpc_utils import init_grpc_channel
    from ray.core.generated import common_pb2, node_manager_pb2, node_manager_pb2_grpc

    asked = 0
    nodes = {n["NodeID"]: n for n in ray.nodes() if n.get("Alive")}
    for node_id, count in used.items():
        node = nodes.get(node_id)
        if node is None or count <= 0:
            continue
        cpus = int(node.get("Resources", {}).get("CPU", 0))
        count = min(count, max(cpus, 1))
        address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
        try:
            channel = init_grpc_channel(address)
            try:
                node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(
                    node_manager_pb2.PrestartWorkersRequest(  # type: ignore[attr-defined]
                        language=common_pb2.Language.PYTHON,  # type: ignore[attr-defined]
                        num_workers=count,
                        keep_alive_duration_secs=keep_alive_s,
                    ),
                    timeout=timeout,
                )
            finally:
                channel.close()
            asked += count
        except Exception:  # best effort: never fail a flow run on warming
            log.debug(f"Could not prestart Ray workers on node {node_id}", exc_info=True)
    return asked
