"""Replacing Ray pods that run an older spec without killing a flow run. Pure.

KubeRay never restarts running Ray pods for a template change (a new image, Ray
version, head settings): the old pods run on, and deleting them kills the
flow runs whose drivers are attached. With `spec.ray.updateStrategy.type:
DrainThenReplace` (the default) the pool does it in steps, one per reconcile, its
progress kept in `status.rayRollout` so a restarted operator carries on:

1. Draining: the Prefect worker Deployment goes to 0 replicas. Each worker pod stops
   taking flow runs and lets its running ones finish (its drain, `spec.prefect.drain`);
   new flow runs wait in the work pool.
2. Replacing, once no Prefect worker pod is left: the outdated Ray pods are deleted
   and KubeRay makes them anew from the current template.
3. Done, once no outdated pod is left and the cluster is ready: the workers come back.

A new head that is not ready `progressDeadlineSeconds` after its pods were replaced
rolls back: the RayCluster gets the templates it had before the change again (kept in
`status.rayRollout.previous`; rayrollback.py), the pods made from the failed spec are
replaced by the old ones, and the workers come back on the old spec. The pool stays
there until its spec changes again.

ZeroCapacityNode pools whose worker replicas are the operator's, and HeadSidecar
pools (`automatic`). A HeadSidecar pool's Prefect worker lives in the head pod: the
head goes first, and its deletion is the drain (the sidecar takes no new flow run and
the Ray container's preStop waits until its runs have ended); its Ray worker pods go
once the old head is gone. Prefect worker pods left from before a switch to
HeadSidecar drain first, as in step 1. Worker replicas managed externally leave no
count the operator could set to 0: those, and `OnDelete`, are only reported
(`RayPodsOutdated`). The rollback deadline counts from when no old pod is left
terminating, so a head draining long flow runs is not taken for a failed one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prefect_raypool_operator.spec import Placement

DRAINING = "Draining"
REPLACING = "Replacing"
#: `spec.pod` (labels, annotations, node selection, ServiceAccount) alone does not start
#: a rollout: a pod label is no reason to stop taking flow runs. It is reported, and
#: goes with the next rollout or restart.
REPORTED_ONLY = frozenset({"pod"})


@dataclass(frozen=True)
class Outdated:
    """Ray pods made from an older spec, and the spec fields that changed."""

    head: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)
    fields: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.head or self.workers)


@dataclass(frozen=True)
class Step:
    """What this reconcile does: the rollout's status (None: none under way), the pods
    to delete now, and whether the Prefect workers stay paused."""

    rollout: dict[str, Any] | None = None
    delete: list[str] = field(default_factory=list)
    pause_workers: bool = False
    #: Set on the reconcile that finishes a rollout: how long it took, in seconds.
    finished_after: float | None = None
    #: Set on the reconcile that gives up on the new spec: the RayCluster templates to
    #: go back to (the rollout's `previous`).
    roll_back_to: dict[str, Any] | None = None


def automatic(drain_then_replace: bool, placement: Placement, external_replicas: bool) -> bool:
    """Whether the pool replaces outdated Ray pods itself (see the module's doc)."""
    if placement == Placement.HEAD_SIDECAR:
        return drain_then_replace
    return (
        drain_then_replace and placement == Placement.ZERO_CAPACITY_NODE and not external_replicas
    )


def paused(rollout: dict[str, Any] | None) -> bool:
    """Whether the Prefect worker Deployment stays at 0 replicas (status.rayRollout)."""
    return rollout is not None and bool(rollout.get("workersPaused"))


def next_step(
    current: dict[str, Any] | None,
    outdated: Outdated,
    *,
    placement: Placement,
    enabled: bool,
    prefect_worker_pods: int,
    cluster_ready: bool,
    now: datetime,
    previous: dict[str, Any] | None = None,
    deadline_seconds: float | None = None,
    terminating: int = 0,
) -> Step:
    """The next step of the rollout `current` (status.rayRollout), or of a new one.
    `previous`: the RayCluster's templates before the change, kept for a roll back
    once the new head is not ready `deadline_seconds` after the old pods are gone;
    `terminating`: Ray pods being deleted (a HeadSidecar head draining, say)."""
    if not enabled or placement == Placement.EPHEMERAL:
        return Step()
    if current is None:
        if not set(outdated.fields) - REPORTED_ONLY:
            return Step()
        current = {"since": _stamp(now), "fields": outdated.fields, "previous": previous}
    pause = placement == Placement.ZERO_CAPACITY_NODE
    if current.get("step") in (None, DRAINING) and prefect_worker_pods:
        # HeadSidecar: worker pods left from before a placement switch, draining on
        # the old head (their Deployment is gone: nothing to pause).
        return Step({**current, "step": DRAINING, "workersPaused": pause}, pause_workers=pause)
    step = current.get("step")
    if step != REPLACING:  # the deadline counts from the first Ray pod replaced
        current = {**current, "replacingSince": _stamp(now)}
    if outdated:
        fields = sorted(set(current.get("fields") or []) | set(outdated.fields))
        rollout = {**current, "step": REPLACING, "fields": fields, "workersPaused": pause}
        # HeadSidecar: the head first (its deletion drains the Prefect worker in it); Ray
        # worker pods of the old head would only rejoin it.
        delete = outdated.head or ([] if terminating else outdated.workers)
        if placement == Placement.ZERO_CAPACITY_NODE:
            delete = outdated.head + outdated.workers
        return Step(rollout, delete, pause)
    if not cluster_ready:
        waiting = {**current, "step": REPLACING, "workersPaused": pause}
        if terminating:  # the old pods still go (draining): the deadline has not begun
            waiting["replacingSince"] = _stamp(now)
        if current.get("previous") and overdue(waiting, now, deadline_seconds):
            # Back to what ran before; the deadline starts again for the old pods.
            back = {**waiting, "previous": None, "rolledBack": True, "replacingSince": _stamp(now)}
            return Step(back, pause_workers=pause, roll_back_to=current["previous"])
        return Step(waiting, pause_workers=pause)
    return Step(finished_after=(now - _parse(current["since"])).total_seconds())


def overdue(rollout: dict[str, Any], now: datetime, deadline_seconds: float | None) -> bool:
    """Whether the new Ray pods have been replaced for longer than the deadline."""
    since = rollout.get("replacingSince")
    if deadline_seconds is None or not since:
        return False
    return (now - _parse(since)).total_seconds() > deadline_seconds


def _stamp(now: datetime) -> str:
    return now.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
