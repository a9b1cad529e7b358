"""Scale to zero while the work pool has nothing to run, wake when it has. Pure.

Prefect's queue knows when runs are waiting; KubeRay's autoscaler only sees Ray's
demand, and never removes the head. With `spec.idle.suspendAfterSeconds` a
ZeroCapacityNode pool steps, one reconcile at a time, its state in `status.idle` so a
restarted operator (or a new leader) carries on:

1. Awake: the work pool's waiting flow runs (`demand`: scheduled within
   `wakeAheadSeconds`, pending, running, paused, cancelling) keep it so. After
   `suspendAfterSeconds` without any, and at least `minAwakeSeconds` after it woke:
2. Suspending: the Prefect worker Deployment goes to 0. A worker pod that took a run
   at the last moment drains it (its pod stays until the run ends, and the run counts
   as demand, which wakes the pool again). Once no worker pod is left:
3. Suspended: the RayCluster is suspended (`spec.suspend`: KubeRay deletes every Ray
   pod, head included). The operator asks Prefect every few seconds
   (`RAYPOOL_QUEUE_POLL_SECONDS`); a waiting flow run wakes it: Awake, the cluster
   resumed and the workers back at once.

When Prefect cannot be asked (`demand` None) nothing changes: an unknown queue never
suspends a pool, and never wakes one either (it would only suspend again).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

AWAKE = "Awake"
SUSPENDING = "Suspending"
SUSPENDED = "Suspended"


@dataclass(frozen=True)
class Decision:
    """This reconcile's idle state (status.idle; None when idle is off) and what it
    asks of the pool's objects."""

    state: dict[str, Any] | None = None
    stop_workers: bool = False  # the Prefect worker Deployment at 0
    suspend_cluster: bool = False  # the RayCluster's spec.suspend
    woke: bool = False  # left Suspending or Suspended on this reconcile
    demand: int | None = None  # the flow runs that want a worker, as Prefect said


def next_state(
    current: dict[str, Any] | None,
    *,
    suspend_after: int,
    min_awake: int,
    demand: int | None,
    worker_pods: int,
    now: datetime,
) -> Decision:
    """The idle state after this reconcile, from `current` (status.idle)."""
    stamp = _stamp(now)
    if not suspend_after:  # off: a pool suspended before is woken
        woke = bool(current) and (current or {}).get("state") != AWAKE
        return Decision(woke=woke)
    state = dict(current or {"state": AWAKE, "since": stamp, "awakeSince": stamp})
    state.setdefault("lastDemand", stamp)  # idle time counts from the first look
    if demand:
        state["lastDemand"] = stamp
        if state["state"] != AWAKE:
            awake = {**state, "state": AWAKE, "since": stamp, "awakeSince": stamp}
            return Decision(awake, woke=True, demand=demand)
    if state["state"] == AWAKE:
        if (
            demand == 0
            and _for(state["lastDemand"], now) >= suspend_after
            and _for(state.get("awakeSince") or state["since"], now) >= min_awake
        ):
            return Decision({**state, "state": SUSPENDING, "since": stamp}, stop_workers=True)
        return Decision(state)
    if state["state"] == SUSPENDING and worker_pods == 0 and demand == 0:
        return Decision(
            {**state, "state": SUSPENDED, "since": stamp}, stop_workers=True, suspend_cluster=True
        )
    return Decision(state, stop_workers=True, suspend_cluster=state["state"] == SUSPENDED)


def idle_for(state: dict[str, Any] | None, now: datetime) -> float | None:
    """Seconds since the work pool last had a flow run to run."""
    last = (state or {}).get("lastDemand")
    return _for(last, now) if last else None


def _for(stamp: str, now: datetime) -> float:
    then = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (now - then).total_seconds()


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def work_pool_note(state: dict[str, Any] | None) -> str | None:
    """The line the work pool's description carries while the pool is suspended."""
    if state is None or state.get("state") != SUSPENDED:
        return None
    return (
        f"suspended while idle since {state['since']}: no worker polls until a flow run "
        "is scheduled, which wakes the pool (spec.idle)"
    )
