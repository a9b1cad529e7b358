"""Pure: which RayJobs and flow runs a worker may act on, and when it may act.

The sweep and the watch delete RayJobs and crash flow runs; both must touch only
their own pool's, on their own Prefect server, for the run's current attempt, and
never on one odd reading (a replica that has not seen a RayJob yet, a retry whose
new RayJob is being created, a flow run read during a restore).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Generic, TypeVar
from uuid import UUID

from prefect_raypool_kuberay.contract import (
    FLOW_RUN_ID_LABEL,
    PREFECT_SERVER_LABEL,
    WORK_POOL_ID_LABEL,
    server_label,
)

Obj = dict[str, Any]
K = TypeVar("K", bound=Hashable)


def pool_labels(work_pool_id: UUID | str, api_url: str) -> dict[str, str]:
    """The labels that make a RayJob this work pool's, on this Prefect server."""
    return {WORK_POOL_ID_LABEL: str(work_pool_id), PREFECT_SERVER_LABEL: server_label(api_url)}


def selector(labels: dict[str, str]) -> str:
    """A label selector matching all of `labels`."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


# ---- the infrastructure id ------------------------------------------------------------


def infrastructure_id(namespace: str, name: str) -> str:
    """What the worker reports to Prefect for a run: the RayJob, namespace included,
    so cancellation and the sweep find it whatever the run's job variables were."""
    return f"{namespace}/{name}"


def split_infrastructure_id(pid: str, default_namespace: str) -> tuple[str, str]:
    """(namespace, name); an id without a namespace (an older worker's) is in
    `default_namespace`."""
    namespace, _, name = pid.rpartition("/")
    return (namespace or default_namespace, name)


# ---- RayJobs as the sweep lists them ------------------------------------------------


@dataclass(frozen=True)
class SweptRayJob:
    """A listed RayJob of the pool, with the flow run it was made for."""

    namespace: str
    name: str
    flow_run_id: UUID

    @property
    def id(self) -> str:
        return infrastructure_id(self.namespace, self.name)


def read_rayjob(item: Obj, namespace: str) -> SweptRayJob | str:
    """The RayJob as the sweep needs it, or why it cannot be read (a label someone
    edited): the caller skips that one and goes on with the others."""
    meta = item.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        return "a RayJob without a name"
    value = (meta.get("labels") or {}).get(FLOW_RUN_ID_LABEL)
    try:
        run_id = UUID(str(value))
    except ValueError:
        return f"RayJob {namespace}/{name}: label {FLOW_RUN_ID_LABEL}={value!r} is no flow run id"
    return SweptRayJob(namespace, name, run_id)


class RunIs(Enum):
    """What the flow run of a listed RayJob is, as the sweep read it."""

    GONE = "gone"  # not found on the Prefect server
    FINAL = "final"
    CANCELLING = "cancelling"
    ACTIVE = "active"


def sweep_action(run: RunIs, gone_before: bool) -> str | None:
    """Why the sweep deletes the RayJob now, or None to leave it.

    A finished or cancelling run's RayJob goes at once; a vanished run's only when the
    previous sweep found it vanished too (`gone_before`): one 404 (a server being
    restored, a read that raced a retry) must not take a running cluster down."""
    if run is RunIs.FINAL:
        return "its flow run is finished"
    if run is RunIs.CANCELLING:
        return "its flow run is cancelling"
    if run is RunIs.GONE and gone_before:
        return "its flow run no longer exists (two sweeps apart)"
    return None


@dataclass
class TwiceSeen(Generic[K]):
    """Confirmation two sweeps apart: a key counts once it is seen in two sweeps in a row.

    `step(seen)` takes what this sweep found and returns what the previous one found as
    well; a key missing from one sweep starts over."""

    previous: frozenset[K] = field(default_factory=frozenset)

    def step(self, seen: Iterable[K]) -> set[K]:
        now = frozenset(seen)
        confirmed = set(now & self.previous)
        self.previous = now
        return confirmed

    def __contains__(self, key: object) -> bool:
        return key in self.previous


# ---- the run's current attempt -----------------------------------------------------


def superseded(
    own_id: str,
    own_state_id: UUID | None,
    pid: str | None,
    state_type: str | None,
    state_id: UUID | None,
) -> bool:
    """Has the flow run moved on from the RayJob `own_id`, which was created while the
    run was in the Pending state `own_state_id`?

    A retry (from the UI, or a driver that rescheduled itself) submits the same flow run
    again: a new Pending state, then a new RayJob and infrastructure id. The old
    RayJob's verdict (often Failed) is then no word on the new attempt, whose Pending
    state the old one must not crash. An id without a namespace (an older worker's)
    matches by name."""
    if pid and pid != own_id and pid != own_id.rpartition("/")[2]:
        return True
    return state_type == "PENDING" and own_state_id is not None and state_id != own_state_id
