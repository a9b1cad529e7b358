"""Flow runs left RUNNING by a worker pod that is gone: which to mark Crashed. Pure.

A pool's flow runs are subprocesses of its Prefect worker container; when the pod is
killed hard (force-deleted, its node lost) or the container restarts, they die with it
and nothing tells Prefect: the run stays RUNNING for ever. The draining worker
(runner's drain_worker.py) records each run's `infrastructure_pid` as `<pod>:<pid>`,
so the operator can see (reconcile.py's sweep, once per resync interval):

- the pod is gone (the watch shows no such pod; the API server is asked again before
  anything is written), or
- its worker container runs, but started after the run did (a restart: every process
  of the old container is gone).

Only RUNNING and CANCELLING runs are looked at (SCHEDULED and PENDING ones are still
a worker's to start), only runs whose pod name is one of this pool's worker pods
(`<pool>-prefect-worker-...`, the head `<pool>-head-...`), and a run is crashed only
when two sweeps in a row found it so: a pod the watch has not shown yet, or a run that
just finished, is not crashed on one look.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect_raypool_operator import naming

Obj = dict[str, Any]
ACTIVE_STATES = ("RUNNING", "CANCELLING")
GONE, RESTARTED = "gone", "restarted"


@dataclass(frozen=True)
class ActiveRun:
    """A flow run of the pool's work pool, as Prefect answered."""

    id: str
    name: str
    state_type: str
    infrastructure_pid: str | None
    start_time: datetime | None


@dataclass(frozen=True)
class Orphan:
    run: ActiveRun
    pod: str
    why: str  # GONE or RESTARTED


def pod_of(infrastructure_pid: str | None) -> str | None:
    """The pod in `<pod>:<pid>` (the draining worker's); None for anything else."""
    pod, sep, pid = (infrastructure_pid or "").rpartition(":")
    return pod if sep and pod and pid.isdigit() else None


def worker_pod_prefixes(pool_name: str) -> tuple[str, ...]:
    """Names the pool's Prefect worker pods start with, in either placement (a run may
    have started before a placement switch)."""
    return (
        f"{naming.prefect_worker_deployment(pool_name)}-",
        f"{naming.ray_cluster(pool_name)}-head-",
    )


def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def active_run(raw: Obj) -> ActiveRun | None:
    """A flow run from Prefect's JSON; None when it is not one."""
    state = raw.get("state") or {}
    if not isinstance(raw.get("id"), str) or not isinstance(state, dict):
        return None
    pid = raw.get("infrastructure_pid")
    return ActiveRun(
        id=raw["id"],
        name=str(raw.get("name") or ""),
        state_type=str(state.get("type") or ""),
        infrastructure_pid=pid if isinstance(pid, str) else None,
        start_time=parse_time(raw.get("start_time")),
    )


def _worker_started_at(pod: Obj) -> datetime | None:
    """When the pod's running Prefect worker container started; None if not running."""
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == naming.PREFECT_WORKER_CONTAINER:
            running = (status.get("state") or {}).get("running") or {}
            return parse_time(running.get("startedAt"))
    return None


def orphans(runs: Iterable[ActiveRun], pods: Iterable[Obj], pool_name: str) -> list[Orphan]:
    """The runs whose worker pod is gone, or whose worker container restarted since."""
    by_name = {(p.get("metadata") or {}).get("name"): p for p in pods}
    prefixes = worker_pod_prefixes(pool_name)
    found = []
    for run in runs:
        pod_name = pod_of(run.infrastructure_pid)
        if run.state_type not in ACTIVE_STATES or pod_name is None:
            continue
        if not pod_name.startswith(prefixes):
            continue  # another worker's run on the same work pool
        pod = by_name.get(pod_name)
        if pod is None:
            found.append(Orphan(run, pod_name, GONE))
            continue
        started = _worker_started_at(pod)
        if started is not None and run.start_time is not None and started > run.start_time:
            found.append(Orphan(run, pod_name, RESTARTED))
    return found


def confirm(now: list[Orphan], before: set[str]) -> tuple[list[Orphan], set[str]]:
    """The orphans seen on this sweep and the one before (to crash), and the ids to
    remember for the next sweep."""
    return [o for o in now if o.run.id in before], {o.run.id for o in now}


def crash_message(orphan: Orphan) -> str:
    if orphan.why == RESTARTED:
        what = f"the Prefect worker container of pod {orphan.pod} restarted"
    else:
        what = f"the Prefect worker pod {orphan.pod} no longer exists"
    return (
        f"{what} while this flow run was running there, and its process with it; marked "
        "Crashed by the prefect-raypool operator"
    )


def draining(pods: Iterable[Obj], pool_name: str) -> list[str]:
    """The pool's worker pods being deleted whose worker still runs: draining."""
    prefixes = worker_pod_prefixes(pool_name)
    return sorted(
        meta["name"]
        for pod in pods
        if (meta := pod.get("metadata") or {}).get("deletionTimestamp")
        and str(meta.get("name") or "").startswith(prefixes)
        and _worker_started_at(pod) is not None
    )


def draining_message(pod: str, timeout: int, policy: str) -> str:
    return (
        f"Prefect worker pod {pod} is being replaced: it takes no new flow runs and lets "
        f"its running ones finish, for at most {timeout}s (spec.prefect.drain.timeoutSeconds)"
        f"; then those still running are stopped ({policy}, spec.prefect.drain.onTimeout)"
    )


def event_message(orphan: Orphan) -> str:
    return f"flow run {orphan.run.name!r} ({orphan.run.id}) marked Crashed: " + crash_message(
        orphan
    )
