"""One level-triggered reconcile of a PrefectRayPool: plan, apply, observe.

- `plan` (pure, plan.py): the pool's body to all it should have (owned objects, token
  Secret, work pool), or a refusal;
- `apply_plan` (here): every check that needs the cluster, then the writes, all through
  `ClusterIO` (port.py), the only I/O a reconcile does. All checks that can refuse the
  pool run before the first write: nothing is half-created;
- `observe_status` (pure, observe.py): what apply found to the pool's status.

Called the same way from every trigger (create, update, resume, the resync timer,
an owned object changing or vanishing).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from prefect_raypool_operator import (
    idle,
    orphans,
    rayrollback,
    rayrollout,
    rayscaleup,
    replicas,
)
from prefect_raypool_operator.builders.prefect_worker import COMPONENT as PREFECT_WORKER
from prefect_raypool_operator.builders.ray_token import (
    pod_token_digest,
    token_digest,
    with_token,
    with_token_digest,
)
from prefect_raypool_operator.clock import NEVER
from prefect_raypool_operator.config import CONFIG
from prefect_raypool_operator.kinds import POD
from prefect_raypool_operator.memory import Applied, PoolMemory, recent
from prefect_raypool_operator.naming import COMPONENT_LABEL, POOL_LABEL, PREFECT_WORKER_CONTAINER
from prefect_raypool_operator.observe import Found, TokenRoll, observe_status, outdated_pods
from prefect_raypool_operator.owned import (
    OWNED,
    PREFECT_WORKER_DEPLOYMENT,
    RAY_CLUSTER,
    Owned,
    held_by_pool,
    keep_autoscaled_replicas,
)
from prefect_raypool_operator.plan import Plan, plan
from prefect_raypool_operator.podstatus import pod_failure
from prefect_raypool_operator.port import (
    ApplyConflict,
    ClusterIO,
    DesiredWorkPool,
    Obj,
    Queue,
    SecretKey,
)
from prefect_raypool_operator.refusals import (
    KUBERAY_NOT_INSTALLED,
    SERVICE_ACCOUNT_TOKEN,
    Problem,
    api_key_is_service_account_token,
    name_conflict,
    secret_not_found,
)
from prefect_raypool_operator.replicas import Override
from prefect_raypool_operator.spec import KeyRef, RayUpdateType
from prefect_raypool_operator.status import Check, Transition, transitions
from prefect_raypool_operator.urls import redact


@dataclass
class ReconcileResult:
    """What one reconcile leaves the controller to do: write the status, post Events."""

    status: Obj
    transitions: list[Transition]
    problem: Problem | None = None  # why the pool is not fully reconciled
    created: list[str] = field(default_factory=list)
    overrides: list[Override] = field(default_factory=list)  # restored: one Event each
    crashed: list[str] = field(default_factory=list)  # orphaned flow runs: one Event each
    draining: list[str] = field(default_factory=list)  # worker pods draining: one Event each
    woke: str | None = None  # an idle pool woken: one Event
    scaled_up: str | None = None  # Ray worker groups raised for the queue: one Event


def reconcile(
    body: Obj, io: ClusterIO, memory: PoolMemory, previous: Obj, repair: bool = True
) -> ReconcileResult:
    """Reconcile one pool against its `previous` status. `repair=False` only observes
    objects that exist (an owned object's status changed); a missing one is created."""
    desired = plan(body)
    found = apply_plan(desired, io, memory, repair, previous)
    status = observe_status(desired, found, previous)
    problem = desired.refusal or found.refusal
    if problem is None and found.work_pool is not None and found.work_pool.ok is False:
        problem = Problem(found.work_pool.reason, found.work_pool.message, permanent=False)
    return ReconcileResult(
        status,
        transitions(previous, status),
        problem,
        found.created,
        found.overrides,
        found.crashed,
        found.draining,
        _woke(desired, found.idle),
        found.scaled_up.message(desired.work_pool_name) if found.scaled_up else None,
    )


def _woke(desired: Plan, decision: idle.Decision | None) -> str | None:
    """The Event message of a pool woken on this reconcile, if it was."""
    if decision is None or not decision.woke:
        return None
    if decision.state is None:
        return "spec.idle.suspendAfterSeconds is 0: resuming the Ray cluster and the workers"
    return (
        f"{decision.demand} flow runs want a worker in work pool {desired.work_pool_name}: "
        "resuming the Ray cluster and starting the Prefect workers"
    )


class SecretValueInvalid(ValueError):
    """A Secret value the operator would send but cannot: the message names the fix."""


class _SecretValues:
    """Referenced Secret keys, each read at most once per reconcile and kept as
    stored: existence is checked without decoding; only the Prefect API key is
    decoded, when it is sent (`api_key`)."""

    def __init__(self, io: ClusterIO, namespace: str) -> None:
        self._io, self._namespace = io, namespace
        self._values: dict[tuple[str, str], SecretKey | None] = {}

    def exists(self, ref: KeyRef) -> bool:
        found = self._read(ref)
        return found is not None and found.value is not None

    def secret_type(self, ref: KeyRef) -> str | None:
        found = self._read(ref)
        return found.type if found else None

    def stored(self, ref: KeyRef) -> tuple[str | None, str | None]:
        """The key's value as stored (base64), undecoded, and when the Secret was last
        written; None when missing or unknown."""
        found = self._read(ref)
        return (found.value, found.written) if found else (None, None)

    def _read(self, ref: KeyRef) -> SecretKey | None:
        key = (ref.name, ref.key)
        if key not in self._values:
            self._values[key] = self._io.secret_key(self._namespace, ref)
        return self._values[key]

    def _stored(self, ref: KeyRef) -> str | None:
        found = self._read(ref)
        return found.value if found else None

    def api_key(self, ref: KeyRef) -> str | None:
        """The Prefect API key as text for an HTTP header; None when missing."""
        stored = self._stored(ref)
        if stored is None:
            return None
        where = f"spec.prefect.apiKey: key {ref.key!r} of Secret {ref.name!r}"
        try:
            text = base64.b64decode(stored, validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise SecretValueInvalid(
                f"{where} is not UTF-8 text: store the Prefect API key itself"
            ) from None
        if not text or not all("!" <= c <= "~" for c in text):
            raise SecretValueInvalid(
                f"{where} is empty or holds spaces, line breaks or other characters an API "
                "key has not (a trailing newline, as `echo` adds?): store the key alone"
            )
        return text


def not_allowed(api_url: str) -> Problem:
    """The refusal of a URL off the allow-list; an empty list refuses every URL, and
    says which setting the operator's installer must fill."""
    entries = CONFIG.prefect_api_allowlist
    if not entries:
        return Problem(
            "PrefectAPIURLNotAllowed",
            f"spec.prefect.apiUrl {redact(api_url)} is refused: this operator's allow-list "
            "of Prefect API URLs is empty, so it sends no pool's API key anywhere: ask whoever "
            "installed the operator to list the Prefect API (chart value prefectApiAllowlist, "
            "environment variable RAYPOOL_PREFECT_API_ALLOWLIST)",
            permanent=True,
        )
    allowed = ", ".join(redact(p) for p in entries)
    return Problem(
        "PrefectAPIURLNotAllowed",
        f"spec.prefect.apiUrl {redact(api_url)} is not on this operator's allow-list of "
        f"Prefect API URLs ({allowed}): use one of them, or ask whoever installed the "
        "operator to add it (chart value prefectApiAllowlist)",
        permanent=True,
    )


def apply_plan(
    desired: Plan,
    io: ClusterIO,
    memory: PoolMemory,
    repair: bool,
    previous: Obj | None = None,
) -> Found:
    """Check what only the cluster knows, then make the plan so, step by step; return
    what was found. `repair=False` applies only what is missing; `previous` (the
    pool's status) carries the steps under way: a replacement of outdated Ray pods
    (rayrollout.py), a going back to an older Ray spec (rayrollback.py), the idle
    state (idle.py)."""
    previous = previous or {}
    if desired.spec is None or desired.refusal is not None:
        return Found()
    if not CONFIG.prefect_api_allowed(desired.spec.prefect.apiUrl):
        return Found(refusal=not_allowed(desired.spec.prefect.apiUrl))
    values = _SecretValues(io, desired.namespace)
    refusal = _cluster_refusal(desired, io, values)
    if refusal is not None:
        return Found(refusal=refusal)
    before = {owned: io.live(owned, desired.namespace, desired.pool_name) for owned in OWNED}
    refusal = _name_conflict(desired, io, before)
    if refusal is not None:
        return Found(refusal=refusal)
    found = Found()
    if desired.ray_token_secret is not None:
        refusal = _ensure_ray_token(desired.ray_token_secret, io, memory, found)
        if refusal is not None:
            return Found(refusal=refusal)
    digest, written = _ray_token_digest(desired, memory, values)
    manifests = {
        owned: manifest if digest is None else with_token_digest(manifest, digest)
        for owned, manifest in desired.desired.items()
    }
    # The pods first: a replaced token's roll and whether a rollout pauses the Prefect
    # workers decide what this reconcile applies (the controllers act on it later anyway).
    found.pods = io.pods(desired.namespace, desired.pool_name)
    found.token_roll = _roll_token(desired, io, digest, written, found.pods)
    step = _ray_rollout(
        desired,
        manifests,
        found,
        previous.get("rayRollout"),
        previous.get("rayRollback"),
        before.get(RAY_CLUSTER),
    )
    queue = _queue(desired, io, values)
    found.idle = _idle(desired, queue, found.pods, previous.get("idle"))
    workers = manifests.get(PREFECT_WORKER_DEPLOYMENT)
    if workers is not None and (step.pause_workers or found.idle.stop_workers):
        workers["spec"]["replicas"] = 0  # draining for a rollout or suspension, or waiting
    if workers is not None and found.rollback and desired.spec.prefect.image is None:
        _set_worker_image(workers, rayrollback.worker_image(found.rollback))
    cluster = manifests.get(RAY_CLUSTER)
    idle_on = desired.spec.idle.suspendAfterSeconds
    if cluster is not None and (idle_on or _suspended(before[RAY_CLUSTER])):
        # True: KubeRay deletes every Ray pod, head included. KubeRay resumes a suspended
        # cluster only on an explicit false, not on the field's absence.
        cluster["spec"]["suspend"] = found.idle.suspend_cluster
    if cluster is not None and not found.idle.suspend_cluster:
        # The autoscaler's replicas kept, then raised for the queue (rayscaleup.py).
        manifests[RAY_CLUSTER] = cluster = keep_autoscaled_replicas(cluster, before[RAY_CLUSTER])
        found.scaled_up, memory.raised_for = rayscaleup.raise_groups(
            desired.spec, cluster, queue.now if queue else None, memory.raised_for
        )
    # A step that changes what is applied (replicas to 0 and back, the cluster suspended
    # or resumed, the templates rolled back, worker groups raised) is applied now,
    # whatever woke this reconcile.
    stepped = (
        (previous.get("idle") or {}).get("state") != (found.idle.state or {}).get("state")
        or rayrollout.paused(previous.get("rayRollout")) != step.pause_workers
        or step.roll_back_to is not None
        or found.scaled_up is not None
    )
    _apply_owned(desired, manifests, io, memory, repair or stepped, found, before)
    for name in step.delete:
        io.delete_pod(desired.namespace, name)
    assert desired.work_pool is not None
    note = idle.work_pool_note(found.idle.state if found.idle else None)
    found.work_pool = _apply_work_pool(replace(desired.work_pool, note=note), io, memory, values)
    if not desired.ephemeral:
        found.draining = _newly_draining(desired, memory, found.pods)
        if found.work_pool.ok:
            found.crashed = _sweep_orphans(desired, io, memory, values, found.pods)
    if desired.ephemeral:
        found.flow_run_clusters = io.flow_run_clusters(desired.namespace, desired.work_pool_name)
    return found


def _cluster_refusal(desired: Plan, io: ClusterIO, values: _SecretValues) -> Problem | None:
    """The first of what only the cluster knows that stops the pool, if any."""
    api_key = desired.work_pool.api_key_ref if desired.work_pool else None
    if api_key is not None and values.secret_type(api_key) == SERVICE_ACCOUNT_TOKEN:
        return api_key_is_service_account_token(api_key.name)  # whatever keys it has
    for where, ref in desired.secret_refs:
        if not values.exists(ref):
            return secret_not_found(where, ref, desired.namespace)
    if not io.kuberay_installed(desired.namespace):
        return KUBERAY_NOT_INSTALLED
    return None


def _name_conflict(desired: Plan, io: ClusterIO, before: dict[Owned, Obj | None]) -> Problem | None:
    """An object the plan would apply that exists and is not the pool's (owned.py's
    `held_by_pool`), if any. The watch shows only objects with the operator's label;
    the API server is asked only for what the watch does not show (a first apply)."""
    namespace, pool_name = desired.namespace, desired.pool_name
    for owned, manifest in desired.desired.items():
        name = manifest["metadata"]["name"]
        live = before[owned]
        meta = live["metadata"] if live is not None else io.metadata(owned.kind, namespace, name)
        if meta is not None and not held_by_pool(meta, pool_name, desired.uid):
            return name_conflict(owned.kind.kind, name, namespace)
    return None


def _ensure_ray_token(
    secret: Obj, io: ClusterIO, memory: PoolMemory, found: Found
) -> Problem | None:
    """The planned Secret `<pool>-ray-token` exists (with a new random token if made
    now) and is the pool's; remember since when. A Secret of that name that is not the
    pool's is neither used nor touched."""
    if recent(memory.ray_token_seen_at) and memory.ray_token_digest:
        return None
    meta, made = io.ensure_secret(with_token(secret, secrets.token_urlsafe(32)))
    want = secret["metadata"]
    [owner] = want["ownerReferences"]
    if not made and not held_by_pool(meta, want["labels"][POOL_LABEL], owner["uid"]):
        return name_conflict("Secret", want["name"], want["namespace"])
    if made:
        found.created.append(f"Secret/{want['name']}")
    memory.ray_token_digest = None  # read anew (`_ray_token_digest`)
    memory.ray_token_seen_at = time.monotonic()
    return None


def _ray_token_digest(
    desired: Plan, memory: PoolMemory, values: _SecretValues
) -> tuple[str | None, str | None]:
    """The digest of the cluster's Ray token as stored now, and when its Secret was
    last written (the operator's Secret's are remembered while `_ensure_ray_token`
    trusts it); None without token auth."""
    if desired.ray_token is None:
        return None, None
    own = desired.ray_token_secret is not None
    if own and memory.ray_token_digest:
        return memory.ray_token_digest, memory.ray_token_written
    stored, written = values.stored(desired.ray_token)
    digest = token_digest(stored, desired.uid) if stored is not None else None
    if own:
        memory.ray_token_digest, memory.ray_token_written = digest, written
    return digest, written


def _roll_token(
    desired: Plan, io: ClusterIO, digest: str | None, written: str | None, pods: list[Obj]
) -> TokenRoll | None:
    """Pods that started with another token than the Secret's now (a token replaced,
    not a Secret restored with the same one: their digests differ) cannot be joined by
    a Ray process that starts with the new one. Replace them without failing a flow run:

    1. the Prefect worker pods holding the old token are deleted: SIGTERM, and the
       worker drains (takes no new flow run, ends when its runs have); their
       Deployment starts new ones with the new token, which wait for a new head;
    2. once none is left (drained, gone), no flow run drives the old cluster: its
       Ray pods are deleted, and KubeRay makes them anew with the new token.

    HeadSidecar runs the Prefect worker and its flow runs in the head pod: nothing is
    restarted; the status says so and how to do it. Pods without a digest (made
    before pods carried one) are left alone. A pod made after the Secret was last
    written read the token it has now, whatever its template's digest: the old
    ReplicaSet of the rolling worker Deployment makes such pods for those deleted
    here, and they must not be deleted in turn."""
    if digest is None:
        return None
    old = [
        p
        for p in pods
        if pod_token_digest(p) not in (None, digest)
        and (written is None or str(p["metadata"].get("creationTimestamp") or "") <= written)
    ]
    prefect = [p for p in old if _labels(p).get(COMPONENT_LABEL) == PREFECT_WORKER]
    ray = [p for p in old if _labels(p).get("ray.io/node-type")]
    if not prefect and not ray:
        return None
    if desired.sidecar:
        return TokenRoll("RayTokenReplacedRestartHead", [], _names(ray))
    if not prefect:
        _delete_pods(desired, io, ray)
        return TokenRoll("RayTokenReplacedRestarting", [], _names(ray))
    _delete_pods(desired, io, prefect)
    return TokenRoll("RayTokenReplacedDraining", _names(prefect), _names(ray))


def _labels(pod: Obj) -> dict[str, str]:
    return (pod.get("metadata") or {}).get("labels") or {}


def _names(pods: list[Obj]) -> list[str]:
    return sorted(str(p["metadata"].get("name")) for p in pods)


def _delete_pods(desired: Plan, io: ClusterIO, pods: list[Obj]) -> None:
    """Delete, with each pod's own grace period, those not already going."""
    for pod in pods:
        if not pod["metadata"].get("deletionTimestamp"):
            io.delete_pod(desired.namespace, pod["metadata"]["name"])


def _ray_rollout(
    desired: Plan,
    manifests: dict[Owned, Obj],
    found: Found,
    rollout: Obj | None,
    rollback: Obj | None,
    live_cluster: Obj | None,
) -> rayrollout.Step:
    """This reconcile's step in replacing the Ray pods that run an older spec, and the
    RayCluster it applies: the spec's, or the one of before a rolled back change."""
    spec = desired.spec
    assert spec is not None
    cluster = manifests.get(RAY_CLUSTER)
    found.rollback = rayrollback.current(rollback, cluster)
    if cluster is not None and found.rollback:
        manifests[RAY_CLUSTER] = cluster = rayrollback.applied(cluster, found.rollback)
    workers = desired.desired.get(PREFECT_WORKER_DEPLOYMENT)
    enabled = rayrollout.automatic(
        spec.ray.updateStrategy.type == RayUpdateType.DRAIN_THEN_REPLACE,
        spec.placement,
        workers is not None and replicas.external(workers),
    )
    now = datetime.now(UTC)
    outdated = outdated_pods(cluster, found.pods)
    found.rollout = step = rayrollout.next_step(
        rollout,
        outdated,
        placement=spec.placement,
        enabled=enabled and found.token_roll is None,
        prefect_worker_pods=sum(1 for p in found.pods if _prefect_worker_pod(p)),
        cluster_ready=any(_ready_head(p) for p in found.pods),
        now=now,
        previous=rayrollback.templates(live_cluster, cluster),
        deadline_seconds=spec.ray.updateStrategy.progressDeadlineSeconds,
        terminating=sum(1 for p in found.pods if _ray_pod(p) and _deleting(p)),
    )
    back_to = step.roll_back_to
    if cluster is not None and back_to is not None:
        rollout_now = step.rollout or {}
        failure = pod_failure(found.pods, lambda name: name != PREFECT_WORKER_CONTAINER, now)
        why = f"{failure.reason}: {failure.message}" if failure else "the head pod was not ready"
        found.rollback = rayrollback.rolled_back(
            cluster, back_to, list(rollout_now.get("fields") or []), why, now
        )
        manifests[RAY_CLUSTER] = cluster = rayrollback.applied(cluster, found.rollback)
    found.ray_cluster = cluster
    return step


def _queue(desired: Plan, io: ClusterIO, values: _SecretValues) -> Queue | None:
    """The work pool's flow runs that want a worker, when idle or the worker groups
    follow them (None: neither, or Prefect not answering)."""
    spec, want = desired.spec, desired.work_pool
    assert spec is not None and want is not None
    if not (spec.idle.suspendAfterSeconds or rayscaleup.following(spec)):
        return None
    try:
        api_key = values.api_key(want.api_key_ref) if want.api_key_ref else None
    except SecretValueInvalid:
        return None  # unknown; the work pool's check says what is wrong with the key
    return io.flow_run_queue(want, api_key, spec.idle.wakeAheadSeconds)


def _idle(
    desired: Plan, queue: Queue | None, pods: list[Obj], current: Obj | None
) -> idle.Decision:
    """This reconcile's step in suspending an idle pool or waking it (idle.py)."""
    assert desired.spec is not None
    settings = desired.spec.idle
    return idle.next_state(
        current,
        suspend_after=settings.suspendAfterSeconds,
        min_awake=settings.minAwakeSeconds,
        demand=queue.wanting if queue else None,
        worker_pods=sum(1 for p in pods if _prefect_worker_pod(p)),
        now=datetime.now(UTC),
    )


def _suspended(live: Obj | None) -> bool:
    """Whether a live RayCluster is, or is going, suspended."""
    if not live:
        return False
    conditions = (live.get("status") or {}).get("conditions") or []
    return bool((live.get("spec") or {}).get("suspend")) or any(
        c.get("type") == "RayClusterSuspended" and c.get("status") == "True" for c in conditions
    )


def _ray_pod(pod: Obj) -> bool:
    return "ray.io/node-type" in ((pod.get("metadata") or {}).get("labels") or {})


def _deleting(pod: Obj) -> bool:
    return bool((pod.get("metadata") or {}).get("deletionTimestamp"))


def _set_worker_image(deployment: Obj, image: str | None) -> None:
    """The Prefect worker container's image: the Ray image it runs with (rollback)."""
    for container in deployment["spec"]["template"]["spec"]["containers"]:
        if image and container["name"] == PREFECT_WORKER_CONTAINER:
            container["image"] = image


def _prefect_worker_pod(pod: Obj) -> bool:
    labels = (pod.get("metadata") or {}).get("labels") or {}
    return labels.get(COMPONENT_LABEL) == PREFECT_WORKER


def _ready_head(pod: Obj) -> bool:
    meta = pod.get("metadata") or {}
    if (meta.get("labels") or {}).get("ray.io/node-type") != "head" or meta.get(
        "deletionTimestamp"
    ):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _apply_owned(
    desired: Plan,
    manifests: dict[Owned, Obj],
    io: ClusterIO,
    memory: PoolMemory,
    repair: bool,
    found: Found,
    before: dict[Owned, Obj | None],
) -> None:
    """Apply each desired object (only when missing unless repairing, and not when the
    watch shows it as last applied: `in_sync`), delete the pool's objects the plan no
    longer wants, remember each one's generation. `before`: the watch's objects."""
    namespace, pool_name = desired.namespace, desired.pool_name
    memory.replicas_contest.start(desired.generation, time.monotonic(), CONFIG.resync_seconds)
    for owned, manifest in manifests.items():
        live = before[owned]
        name = manifest["metadata"]["name"]
        key = (owned.kind.kind, name)
        if live is not None and owned.replace(manifest, live):
            io.delete(owned, namespace, pool_name)  # an immutable field: made anew below
            live = None
        if repair or live is None:
            manifest = owned.merge_live(manifest, live)
            digest = manifest_digest(manifest)
            if not in_sync(owned, manifest, digest, live, memory):
                live = _apply_one(owned, manifest, live, io, memory, found)
                meta = live["metadata"]
                memory.applied[key] = Applied(
                    digest, meta.get("uid"), meta.get("generation"), time.monotonic()
                )
        assert live is not None
        memory.generations[key] = live["metadata"].get("generation")
        found.live[owned] = live
    for owned in OWNED:
        gone = before[owned]
        if (
            owned not in manifests
            and gone is not None
            and held_by_pool(gone["metadata"], pool_name, desired.uid)
        ):
            io.delete(owned, namespace, pool_name)
    found.contested = memory.replicas_contest.contested()


def _apply_one(
    owned: Owned, manifest: Obj, live: Obj | None, io: ClusterIO, memory: PoolMemory, found: Found
) -> Obj:
    """Apply one owned object (handing fields over first where the spec let go of
    them); the live object the API server answers."""
    handing_over = owned.hand_over(manifest, live)
    if handing_over is not None:
        io.apply_handover(handing_over)
    if owned.overridden is None:
        applied, created = io.apply_manifest(manifest)
    else:
        applied, created = _apply_contestable(owned, manifest, live, io, memory, found)
    if created:
        found.created.append(f"{owned.kind.kind}/{manifest['metadata']['name']}")
    return applied


def manifest_digest(manifest: Obj) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True).encode()).hexdigest()


def in_sync(owned: Owned, manifest: Obj, digest: str, live: Obj | None, memory: PoolMemory) -> bool:
    """Whether the watch shows `live` as the operator last applied it, with the same
    manifest to apply now: then an apply would change nothing, and is skipped.

    Server-side apply of an unchanged manifest changes nothing but is a request all
    the same: one per owned object per pool per resync, thousands a minute with
    hundreds of pools. What an apply would put back shows here: a spec edited by anyone
    bumps the generation (kinds without one are compared field by field), a deleted or
    replaced object has no or another uid, and our labels and annotations are
    compared. An object with a field another manager may hold (replicas) is applied
    while that contest lasts, and every object again after `reapply_seconds`.
    """
    if live is None:
        return False
    last = memory.applied.get((owned.kind.kind, manifest["metadata"]["name"]))
    if last is None or last.digest != digest:
        return False
    if time.monotonic() - last.at > CONFIG.reapply_seconds:
        return False
    if owned.overridden is not None and memory.replicas_contest.last is not None:
        return False
    meta, want = live.get("metadata") or {}, manifest["metadata"]
    if meta.get("uid") != last.uid or meta.get("generation") != last.generation:
        return False
    for field_name in ("labels", "annotations"):
        have = meta.get(field_name) or {}
        if any(have.get(k) != v for k, v in (want.get(field_name) or {}).items()):
            return False
    if last.generation is None:  # no generation to tell a changed spec
        return all(
            live.get(k) == v
            for k, v in manifest.items()
            if k not in ("apiVersion", "kind", "metadata")
        )
    return True


def _apply_contestable(
    owned: Owned, manifest: Obj, live: Obj | None, io: ClusterIO, memory: PoolMemory, found: Found
) -> tuple[Obj, bool]:
    """An object with a field other managers may take (owned.overridden): an unforced
    apply first asks the API server, which knows who holds what even when the watch
    lags behind; restoring it is up to the pool's contest (replicas.py)."""
    assert owned.overridden is not None
    try:
        return io.apply_manifest(manifest, force=False)
    except ApplyConflict as conflict:
        theirs = owned.overridden(manifest, live, conflict.managers)
    if theirs is not None:
        if memory.replicas_contest.restore_now(theirs, time.monotonic()):
            found.overrides.append(theirs)
        else:
            manifest = theirs.leave(manifest)  # backing off: theirs stands for now
    return io.apply_manifest(manifest)


def _apply_work_pool(
    want: DesiredWorkPool, io: ClusterIO, memory: PoolMemory, values: _SecretValues
) -> Check:
    """Make the planned work pool so; not asked again for a while once it matched."""
    try:
        api_key = values.api_key(want.api_key_ref) if want.api_key_ref else None
    except SecretValueInvalid as exc:
        return Check(False, "SecretValueInvalid", str(exc))
    key = (
        want.api_url,
        want.name,
        want.concurrency_limit,
        hashlib.sha256((api_key or "").encode()).hexdigest(),
        want.type,
        json.dumps(want.base_job_template, sort_keys=True),
        want.note,
    )
    if recent(memory.work_pool_checked_at.get(key, NEVER)):
        return Check(True, "WorkPoolInSync", f"work pool {want.name!r} matches the spec")
    check = io.ensure_work_pool(want, api_key)
    if check.ok:  # only the latest: an older one (before a note came and went) is stale
        memory.work_pool_checked_at = {key: time.monotonic()}
    else:
        memory.work_pool_checked_at.pop(key, None)
    return check


def _newly_draining(desired: Plan, memory: PoolMemory, pods: list[Obj]) -> list[str]:
    """Worker pods being deleted that drain their flow runs, each told once: the
    Events' messages."""
    assert desired.spec is not None
    drain = desired.spec.prefect.drain
    now = set(orphans.draining(pods, desired.pool_name))
    new = sorted(now - memory.draining_told)
    memory.draining_told = now
    return [orphans.draining_message(pod, drain.timeoutSeconds, drain.onTimeout) for pod in new]


def _sweep_orphans(
    desired: Plan, io: ClusterIO, memory: PoolMemory, values: _SecretValues, pods: list[Obj]
) -> list[str]:
    """Once per resync interval: mark Crashed the flow runs whose worker pod is gone or
    whose worker container restarted, found so on two sweeps in a row (orphans.py);
    a pod the watch no longer shows is asked of the API server before. The Events'
    messages of those crashed."""
    want = desired.work_pool
    assert want is not None
    if recent(memory.orphans_swept_at):
        return []
    memory.orphans_swept_at = time.monotonic()
    try:
        api_key = values.api_key(want.api_key_ref) if want.api_key_ref else None
    except SecretValueInvalid:
        return []
    raw = io.active_flow_runs(want, api_key)
    if raw is None:
        return []  # Prefect not asked this time: the suspects wait for the next sweep
    runs = [run for run in map(orphans.active_run, raw) if run is not None]
    confirmed, memory.orphan_suspects = orphans.confirm(
        orphans.orphans(runs, pods, desired.pool_name), memory.orphan_suspects
    )
    crashed = []
    for orphan in confirmed:
        if orphan.why == orphans.GONE and io.metadata(POD, desired.namespace, orphan.pod):
            continue  # the watch lags behind: the pod is there
        if io.crash_flow_run(want, api_key, orphan.run.id, orphans.crash_message(orphan)):
            crashed.append(orphans.event_message(orphan))
        memory.orphan_suspects.discard(orphan.run.id)
    return crashed


def release(body: Obj, io: ClusterIO) -> Check | None:
    """A deleted pool's work pool: deleted if the operator created it for this pool,
    released if adopted. None when the operator never sent this pool's spec anywhere
    (refused, or its URL not allowed)."""
    want = plan(body).work_pool
    if want is None or not CONFIG.prefect_api_allowed(want.api_url):
        return None
    try:
        values = _SecretValues(io, body["metadata"]["namespace"])
        api_key = values.api_key(want.api_key_ref) if want.api_key_ref else None
    except SecretValueInvalid as exc:
        return Check(False, "SecretValueInvalid", str(exc))
    return io.release_work_pool(want, api_key)
