"""One level-triggered reconcile of a PrefectRayPool: plan, apply, observe.

- plan (pure, plan.py): the pool's body to the objects it should own, or a refusal;
- apply (here): every check that needs the cluster, then the writes, all through
  `ClusterIO`, the only I/O a reconcile does. All checks that can refuse the pool run
  before the first write: nothing is half-created;
- observe (pure, observe.py): what apply found to the pool's status.

Called the same way from every trigger (create, update, resume, the resync timer,
an owned object changing or vanishing).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import kopf

from prefect_raypool_operator.builders.ray_token import build_ray_token_secret
from prefect_raypool_operator.memory import NEVER, PoolMemory, recent
from prefect_raypool_operator.observe import Found, observe
from prefect_raypool_operator.owned import OWNED, Owned
from prefect_raypool_operator.plan import Plan, plan
from prefect_raypool_operator.refusals import KUBERAY_NOT_INSTALLED, Problem, secret_not_found
from prefect_raypool_operator.replicas import Override
from prefect_raypool_operator.spec import KeyRef
from prefect_raypool_operator.status import Check, Transition, transitions

Obj = dict[str, Any]


class ApplyConflict(Exception):
    """An unforced apply found fields that other field managers hold."""

    def __init__(self, managers: dict[str, str]) -> None:
        super().__init__(f"apply conflicts: {managers}")
        self.managers = managers  # field path (".spec.replicas") -> who holds it


class ClusterIO(Protocol):
    """Everything the controller reads and writes outside its own memory: the
    Kubernetes API (reads from the watches' cache) and the Prefect API."""

    def pool(self, namespace: str, name: str) -> Obj | None: ...

    def live(self, owned: Owned, namespace: str, pool_name: str) -> Obj | None: ...

    def apply(self, manifest: Obj, force: bool = True) -> tuple[Obj, bool]:
        """Server-side apply: (the live object, whether this apply created it).
        Unforced, raises ApplyConflict where another field manager holds a field."""
        ...

    def hand_over(self, manifest: Obj) -> bool:
        """Apply (unforced) as the hand-over field manager; False when another manager
        holds the field already or the object is gone."""
        ...

    def delete(self, owned: Owned, namespace: str, pool_name: str) -> bool: ...

    def create_secret(self, manifest: Obj) -> bool:
        """Create unless it exists (never overwritten); True if this call made it."""
        ...

    def secret_value(self, namespace: str, ref: KeyRef) -> str | None: ...

    def kuberay_installed(self, namespace: str) -> bool: ...

    def pods(self, namespace: str, pool_name: str) -> list[Obj]:
        """The pool's pods: the sidecar's readiness and containers' failure reasons."""
        ...

    def ensure_work_pool(
        self, api_url: str, name: str, concurrency_limit: int | None, api_key: str | None
    ) -> Check: ...

    def write_status(self, namespace: str, name: str, status: Obj) -> None: ...

    def post_event(self, owner: Obj, type: str, reason: str, message: str) -> None: ...


@dataclass
class Outcome:
    status: Obj
    transitions: list[Transition]
    problem: Problem | None = None  # why the pool is not fully reconciled
    created: list[str] = field(default_factory=list)
    overrides: list[Override] = field(default_factory=list)  # restored: one Event each


def reconcile(
    body: Obj, io: ClusterIO, memory: PoolMemory, previous: Obj, repair: bool = True
) -> Outcome:
    """Reconcile one pool against its `previous` status. `repair=False` only observes
    objects that exist (an owned object's status changed); a missing one is created."""
    desired = plan(body)
    found = apply(desired, io, memory, repair)
    status = observe(desired, found, previous)
    problem = desired.refusal or found.refusal
    if problem is None and found.work_pool is not None and found.work_pool.ok is False:
        problem = Problem(found.work_pool.reason, found.work_pool.message, permanent=False)
    return Outcome(status, transitions(previous, status), problem, found.created, found.overrides)


class _SecretValues:
    """Referenced Secret keys, each read at most once per reconcile (the Prefect API
    key is checked for existence first and used for the work pool after)."""

    def __init__(self, io: ClusterIO, namespace: str) -> None:
        self._io, self._namespace = io, namespace
        self._values: dict[tuple[str, str], str | None] = {}

    def get(self, ref: KeyRef) -> str | None:
        key = (ref.name, ref.key)
        if key not in self._values:
            self._values[key] = self._io.secret_value(self._namespace, ref)
        return self._values[key]


def apply(desired: Plan, io: ClusterIO, memory: PoolMemory, repair: bool) -> Found:
    """Check what only the cluster knows, then make it so, step by step; return what
    was found. `repair=False` applies only what is missing."""
    if desired.spec is None or desired.refusal is not None:
        return Found()
    values = _SecretValues(io, desired.namespace)
    refusal = _cluster_refusal(desired, io, values)
    if refusal is not None:
        return Found(refusal=refusal)
    found = Found()
    if repair and desired.makes_ray_token:
        _ensure_ray_token(desired, io, memory, found)
    _apply_owned(desired, io, memory, repair, found)
    found.pods = io.pods(desired.namespace, desired.pool_name)
    found.work_pool = _work_pool(desired, io, memory, values)
    return found


def _cluster_refusal(desired: Plan, io: ClusterIO, values: _SecretValues) -> Problem | None:
    """The first of what only the cluster knows that stops the pool, if any."""
    for where, ref in desired.secret_refs:
        if values.get(ref) is None:
            return secret_not_found(where, ref, desired.namespace)
    if not io.kuberay_installed(desired.namespace):
        return KUBERAY_NOT_INSTALLED
    return None


def _ensure_ray_token(desired: Plan, io: ClusterIO, memory: PoolMemory, found: Found) -> None:
    if recent(memory.ray_token_seen_at):
        return
    token = secrets.token_urlsafe(32)
    secret = build_ray_token_secret(desired.pool_name, desired.namespace, token)
    kopf.adopt(secret, owner=kopf.Body(cast(Any, desired.body)))
    if io.create_secret(secret):
        found.created.append(f"Secret/{secret['metadata']['name']}")
    memory.ray_token_seen_at = time.monotonic()


def _apply_owned(
    desired: Plan, io: ClusterIO, memory: PoolMemory, repair: bool, found: Found
) -> None:
    """Apply each desired object (only when missing unless repairing), delete the owned
    ones the plan no longer wants, remember each one's generation."""
    namespace, pool_name = desired.namespace, desired.pool_name
    before = {owned: io.live(owned, namespace, pool_name) for owned in OWNED}
    memory.replicas_contest.start(desired.generation, time.monotonic())
    for owned, manifest in desired.desired.items():
        live = before[owned]
        name = manifest["metadata"]["name"]
        if repair or live is None:
            manifest = owned.merge_live(manifest, live)
            handing_over = owned.hand_over(manifest, live)
            if handing_over is not None:
                io.hand_over(handing_over)
            if owned.overridden is None:
                live, created = io.apply(manifest)
            else:
                live, created = _apply_contestable(owned, manifest, live, io, memory, found)
            if created:
                found.created.append(f"{owned.kind.kind}/{name}")
        memory.generations[(owned.kind.kind, name)] = live["metadata"].get("generation")
        found.live[owned] = live
    for owned in OWNED:
        if owned not in desired.desired and before[owned] is not None:
            io.delete(owned, namespace, pool_name)
    found.contested = memory.replicas_contest.contested()


def _apply_contestable(
    owned: Owned, manifest: Obj, live: Obj | None, io: ClusterIO, memory: PoolMemory, found: Found
) -> tuple[Obj, bool]:
    """An object with a field other managers may take (owned.overridden): an unforced
    apply first asks the API server, which knows who holds what even when the watch
    lags behind; restoring it is up to the pool's contest (replicas.py)."""
    assert owned.overridden is not None
    try:
        return io.apply(manifest, force=False)
    except ApplyConflict as conflict:
        theirs = owned.overridden(manifest, live, conflict.managers)
    if theirs is not None:
        if memory.replicas_contest.restore_now(theirs, time.monotonic()):
            found.overrides.append(theirs)
        else:
            manifest = theirs.leave(manifest)  # backing off: theirs stands for now
    return io.apply(manifest)


def _work_pool(desired: Plan, io: ClusterIO, memory: PoolMemory, values: _SecretValues) -> Check:
    assert desired.spec is not None
    prefect = desired.spec.prefect
    api_key = values.get(prefect.apiKey.secretKeyRef) if prefect.apiKey else None
    limit = prefect.workPool.concurrencyLimit
    name = desired.work_pool_name
    key = (prefect.apiUrl, name, limit, hashlib.sha256((api_key or "").encode()).hexdigest())
    if recent(memory.work_pool_checked_at.get(key, NEVER)):
        return Check(True, "WorkPoolInSync", f"work pool {name!r} matches the spec")
    check = io.ensure_work_pool(prefect.apiUrl, name, limit, api_key)
    if check.ok:
        memory.work_pool_checked_at[key] = time.monotonic()
    else:
        memory.work_pool_checked_at.pop(key, None)
    return check
