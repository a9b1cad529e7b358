"""The reconcile's port: what a reconcile may ask of the world outside its memory.

`ClusterIO` is the only I/O a reconcile does; kube.py's `KubeIO` is the real one, the
controller tests' `FakeIO` an in-memory one. What crosses it is declared here too
(`ApplyConflict`, the work pool a plan wants and its `Owner`), so that the adapter and
the pure chain (plan, reconcile, observe) both stand on this module, not on each other.
It imports nothing of the operator at run time: the types it names are for the checker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prefect_raypool_kuberay.contract import WORKER_TYPE

if TYPE_CHECKING:
    from prefect_raypool_operator.kinds import Kind
    from prefect_raypool_operator.owned import Owned
    from prefect_raypool_operator.spec import KeyRef
    from prefect_raypool_operator.status import Check

Obj = dict[str, Any]

#: The work pool types a pool wants: the Prefect worker type that polls it.
WORK_POOL_TYPE = "process"  # ZeroCapacityNode, HeadSidecar: `prefect worker start`
KUBERAY_WORK_POOL_TYPE = WORKER_TYPE  # an Ephemeral pool's: the kuberay worker's type


class ApplyConflict(Exception):
    """An unforced apply found fields that other field managers hold."""

    def __init__(self, managers: dict[str, str]) -> None:
        super().__init__(f"apply conflicts: {managers}")
        self.managers = managers  # field path (".spec.replicas") -> who holds it


@dataclass(frozen=True)
class Queue:
    """A work pool's flow runs that want a worker, as Prefect counted them."""

    now: int  # holding a worker (pending, running, paused, cancelling) or due now (late too)
    ahead: int  # scheduled later, within the horizon asked for (idle's wakeAheadSeconds)

    @property
    def wanting(self) -> int:
        return self.now + self.ahead


@dataclass(frozen=True)
class Owner:
    """The PrefectRayPool holding a work pool."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}/{self.uid}"

    def same_pool(self, other: Owner) -> bool:
        """One namespace and name is one pool: a pool deleted and created again (a new
        uid) takes over what its predecessor held."""
        return (self.namespace, self.name) == (other.namespace, other.name)


@dataclass(frozen=True)
class SecretKey:
    """One key of a Secret as stored, and the Secret's type: a ServiceAccount's token
    (kubernetes.io/service-account-token) is never sent as a Prefect API key."""

    type: str
    value: str | None  # base64 as stored; None when the Secret has no such key
    # When the Secret was last written (RFC 3339, UTC: its newest managedFields time,
    # else its creation): a pod made later read the value it has now.
    written: str | None = None


@dataclass(frozen=True)
class DesiredWorkPool:
    """The Prefect work pool a pool wants, all decided from its spec (plan.py). Only
    the API key's value is read when it is sent: the plan names its Secret key."""

    api_url: str  # spec.prefect.apiUrl, as the pool author wrote it
    name: str
    type: str  # WORK_POOL_TYPE or KUBERAY_WORK_POOL_TYPE
    concurrency_limit: int | None
    base_job_template: Obj | None  # None: the type's default, left as it is
    api_key_ref: KeyRef | None
    owner: Owner
    note: str | None = None  # why no worker polls (a suspended pool): in the description


class ClusterIO(Protocol):
    """Everything the controller reads and writes outside its own memory: the
    Kubernetes API (reads from the watches' cache) and the Prefect API."""

    def pool(self, namespace: str, name: str) -> Obj | None: ...

    def live(self, owned: Owned, namespace: str, pool_name: str) -> Obj | None:
        """The pool's object of this kind as the watch shows it (ours by label only)."""
        ...

    def metadata(self, kind: Kind, namespace: str, name: str) -> Obj | None:
        """The metadata of whatever object of this kind and name exists, ours or not
        (the API server, not the watch): what a first apply would take over."""
        ...

    def apply_manifest(self, manifest: Obj, force: bool = True) -> tuple[Obj, bool]:
        """Server-side apply: (the live object, whether this apply created it).
        Unforced, raises ApplyConflict where another field manager holds a field."""
        ...

    def apply_handover(self, manifest: Obj) -> bool:
        """Apply (unforced) as the hand-over field manager; False when another manager
        holds the field already or the object is gone."""
        ...

    def delete(self, owned: Owned, namespace: str, pool_name: str) -> bool: ...

    def ensure_secret(self, manifest: Obj) -> tuple[Obj, bool]:
        """Create unless it exists (never overwritten): (its metadata, whether this call
        made it)."""
        ...

    def delete_pod(self, namespace: str, name: str) -> None: ...

    def secret_key(self, namespace: str, ref: KeyRef) -> SecretKey | None:
        """The referenced key as stored and the Secret's type; None when the Secret is
        missing."""
        ...

    def kuberay_installed(self, namespace: str) -> bool: ...

    def flow_run_clusters(self, namespace: str, work_pool: str) -> int:
        """RayJobs labelled with `work_pool`: an Ephemeral pool's flow-run clusters."""
        ...

    def pods(self, namespace: str, pool_name: str) -> list[Obj]:
        """The pool's pods: the sidecar's readiness and containers' failure reasons."""
        ...

    def ensure_work_pool(self, work_pool: DesiredWorkPool, api_key: str | None) -> Check: ...

    def active_flow_runs(self, work_pool: DesiredWorkPool, api_key: str | None) -> list[Obj] | None:
        """The work pool's RUNNING and CANCELLING flow runs; None when Prefect could
        not be asked."""
        ...

    def flow_run_queue(
        self, work_pool: DesiredWorkPool, api_key: str | None, ahead_seconds: int
    ) -> Queue | None:
        """The flow runs that want a worker (flow_runs.py), counting those scheduled
        within `ahead_seconds` as ahead; None when Prefect did not answer."""
        ...

    def crash_flow_run(
        self, work_pool: DesiredWorkPool, api_key: str | None, run_id: str, message: str
    ) -> bool:
        """Propose Crashed for a flow run; True when Prefect accepted it."""
        ...

    def release_work_pool(self, work_pool: DesiredWorkPool, api_key: str | None) -> Check:
        """On deletion: delete the work pool its owner created, release one it adopted."""
        ...

    def write_status(self, namespace: str, name: str, status: Obj) -> None: ...

    def post_event(self, owner: Obj, type: str, reason: str, message: str) -> None: ...
