"""The kinds a pool owns, one row each.

The handlers watch, the reconciler applies, reads and deletes, and drift is tracked
through this table; no code tests an object's `kind` to decide what to do with it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefect_raypool_operator import kinds, naming, replicas

Obj = dict[str, Any]


def _desired_as_is(desired: Obj, live: Obj | None) -> Obj:
    return desired


def _none(desired: Obj, live: Obj | None) -> None:
    return None


def _never(desired: Obj, live: Obj) -> bool:
    return False


def role_ref_changed(desired: Obj, live: Obj) -> bool:
    """A RoleBinding's roleRef cannot change (the API server refuses the update): one
    that names another role (a Role of the pool's own, before the chart shipped the
    worker's ClusterRole) is deleted and made anew."""
    return bool(live.get("roleRef")) and live["roleRef"] != desired["roleRef"]


Overridden = Callable[[Obj, Obj | None, dict[str, str]], replicas.Override | None]


def keep_autoscaled_replicas(desired: Obj, live: Obj | None) -> Obj:
    """With the autoscaler on, the live worker-group replicas are its call, not ours
    (reconcile.py applies this itself, before raising them for the queue)."""
    if live is None or not desired["spec"].get("enableInTreeAutoscaling"):
        return desired
    live_groups = {g.get("groupName"): g for g in live.get("spec", {}).get("workerGroupSpecs", [])}
    for group in desired["spec"]["workerGroupSpecs"]:
        current = live_groups.get(group["groupName"], {}).get("replicas")
        if current is not None:
            group["replicas"] = max(group["minReplicas"], min(group["maxReplicas"], current))
    return desired


@dataclass(frozen=True)
class Owned:
    kind: kinds.Kind
    index: str  # the kopf index (main.py) that keeps these objects in memory
    object_name: Callable[[str], str]  # pool name -> this object's name
    # What of the live object an apply keeps: (desired, live or None) -> what to apply.
    merge_live: Callable[[Obj, Obj | None], Obj] = _desired_as_is
    # Fields other field managers may take, which are not forced back unannounced:
    # (desired, live, the API server's conflicts: field -> manager) -> what to restore.
    overridden: Overridden | None = None
    # Fields the operator stops sending that must keep their live value: (what it will
    # apply, live) -> an apply by the hand-over field manager first, or None.
    hand_over: Callable[[Obj, Obj | None], Obj | None] = _none
    # An immutable field differs: (desired, live) -> delete the live object, then apply.
    replace: Callable[[Obj, Obj], bool] = _never


def held_by_pool(meta: Obj, pool_name: str, pool_uid: str) -> bool:
    """Whether an existing object of a generated name is the pool's to apply: owned by
    this pool (its uid; labels edited away are drift, put back), or carrying the
    operator's labels for a pool of this name and no owner but a PrefectRayPool of this
    name (its predecessor, or one deleted with `--cascade=orphan`). Anything else is
    someone else's: a forced apply would take it over, and the garbage collector would
    delete it with the pool."""
    refs = meta.get("ownerReferences") or []
    pools = [  # of any version of the CRD
        ref
        for ref in refs
        if ref.get("kind") == kinds.POOL.kind
        and str(ref.get("apiVersion")).partition("/")[0] == kinds.POOL.group
    ]
    if any(ref.get("uid") == pool_uid for ref in pools):
        return True
    labels = meta.get("labels") or {}
    return (
        labels.get(naming.MANAGED_BY_LABEL) == naming.MANAGED_BY
        and labels.get(naming.POOL_LABEL) == pool_name
        and len(pools) == len(refs)
        and all(ref.get("name") == pool_name for ref in pools)
    )


RAY_CLUSTER = Owned(kinds.RAY_CLUSTER, "raycluster_index", naming.ray_cluster)
PREFECT_WORKER_DEPLOYMENT = Owned(
    kinds.DEPLOYMENT,
    "deployment_index",
    naming.prefect_worker_deployment,
    replicas.leave_external_replicas,
    replicas.override,
    replicas.hand_over,
)
NETWORK_POLICY = Owned(kinds.NETWORK_POLICY, "networkpolicy_index", naming.network_policy)
# An Ephemeral pool's `kuberay` worker: its account, bound to the chart's worker
# ClusterRole (builders/ephemeral.py).
SERVICE_ACCOUNT = Owned(kinds.SERVICE_ACCOUNT, "serviceaccount_index", naming.kuberay_worker)
ROLE_BINDING = Owned(
    kinds.ROLE_BINDING, "rolebinding_index", naming.kuberay_worker, replace=role_ref_changed
)
# Two of one kind (builders/disruption.py), in one index: rows are told apart by name.
HEAD_DISRUPTION_BUDGET = Owned(
    kinds.POD_DISRUPTION_BUDGET, "pdb_index", naming.head_disruption_budget
)
WORKER_DISRUPTION_BUDGET = Owned(
    kinds.POD_DISRUPTION_BUDGET, "pdb_index", naming.worker_disruption_budget
)
OWNED = (
    RAY_CLUSTER,
    SERVICE_ACCOUNT,
    ROLE_BINDING,
    PREFECT_WORKER_DEPLOYMENT,
    NETWORK_POLICY,
    HEAD_DISRUPTION_BUDGET,
    WORKER_DISRUPTION_BUDGET,
)
#: Each owned kind once (what is watched and indexed), in OWNED's order.
OWNED_KINDS = tuple({owned.kind: owned for owned in OWNED}.values())
BY_KIND = {owned.kind.kind: owned for owned in OWNED_KINDS}


def owned_of(manifest: Obj, pool_name: str) -> Owned:
    """The row a planned manifest is: its kind and, among rows of one kind, its name."""
    name = manifest["metadata"]["name"]
    for owned in OWNED:
        if owned.kind.kind == manifest["kind"] and owned.object_name(pool_name) == name:
            return owned
    raise KeyError(f"{manifest['kind']}/{name} is no owned object of pool {pool_name}")
