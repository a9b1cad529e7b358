"""Ray worker groups raised from the Prefect queue, ahead of Ray's autoscaler. Pure.

Ray's autoscaler adds a worker only once tasks wait for one, so a flow run's first
tasks wait for a pod to start. Prefect knows earlier: a flow run that is due, pending
or running wants workers. With the autoscaler on, each group with `podsPerFlowRun`
is raised to that many pods per such run, within its minReplicas and maxReplicas.

Only raised, never lowered: the autoscaler removes what stays idle. And raised once per
rise of the queue: a run that waits long (a concurrency limit, say) does not raise the
group again after the autoscaler took an idle pod away, so the two never fight. The
count last raised for is the operator's memory; after a restart it raises once more at
most, which the autoscaler takes back when the pods stay idle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prefect_raypool_operator.spec import PrefectRayPoolSpec

Obj = dict[str, Any]


@dataclass(frozen=True)
class Raise:
    """What one reconcile raises: group name -> (from, to) replicas."""

    groups: dict[str, tuple[int, int]]
    wanting: int  # the flow runs it was raised for

    def message(self, work_pool: str) -> str:
        raised = ", ".join(f"{g} {a} -> {b}" for g, (a, b) in sorted(self.groups.items()))
        return (
            f"{self.wanting} flow runs want a worker in work pool {work_pool}: Ray worker "
            f"groups raised ahead of the autoscaler ({raised}; spec.ray.workerGroups[]."
            "podsPerFlowRun)"
        )


def following(spec: PrefectRayPoolSpec) -> bool:
    """Whether any worker group follows the queue (the autoscaler on)."""
    return spec.ray.autoscaling.enabled and any(g.podsPerFlowRun for g in spec.ray.workerGroups)


def raise_groups(
    spec: PrefectRayPoolSpec, cluster: Obj, wanting: int | None, raised_for: int
) -> tuple[Raise | None, int]:
    """Raise `cluster`'s worker groups (the RayCluster to apply, its replicas the live
    ones) in place for `wanting` flow runs; return what was raised, if anything, and
    the count to remember as raised for. `wanting` None (Prefect not answering)
    changes nothing."""
    if wanting is None or not following(spec):
        return None, raised_for
    if wanting <= raised_for:  # no rise: the autoscaler's call; a fall lowers the mark
        return None, wanting
    per_run = {g.name: g.podsPerFlowRun for g in spec.ray.workerGroups}
    raised: dict[str, tuple[int, int]] = {}
    for group in cluster["spec"].get("workerGroupSpecs") or []:
        current = int(group.get("replicas") or 0)
        want = per_run.get(group["groupName"], 0) * wanting
        target = min(group["maxReplicas"], max(group["minReplicas"], want))
        if target > current:
            group["replicas"] = target
            raised[group["groupName"]] = (current, target)
    return (Raise(raised, wanting) if raised else None), wanting
