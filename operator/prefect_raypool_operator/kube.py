"""Kubernetes I/O for the controller: server-side apply, reads, Events, status writes.

Thin wrappers over the kubernetes client, and `KubeIO`, the real `ClusterIO` (port.py)
the controller gives each reconcile. Server-side apply with `force` makes every reconcile
level-triggered: whatever was edited or deleted by hand in the fields we own is put back.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import kopf
from kubernetes import client

from prefect_raypool_kuberay.contract import WORK_POOL_LABEL, label_value
from prefect_raypool_operator import flow_runs, kinds, kopf_namespaces, naming, workpool
from prefect_raypool_operator.clock import NEVER
from prefect_raypool_operator.config import CONFIG, MANAGED_SELECTOR
from prefect_raypool_operator.memory import recent
from prefect_raypool_operator.owned import BY_KIND, RAY_CLUSTER, Owned
from prefect_raypool_operator.port import ApplyConflict, DesiredWorkPool, Queue, SecretKey
from prefect_raypool_operator.spec import KeyRef
from prefect_raypool_operator.status import Check
from prefect_raypool_operator.watchcache import Reads

APPLY = "application/apply-patch+yaml"

Obj = dict[str, Any]


def _timeout() -> float:
    return CONFIG.kube_request_timeout


def _json(response: Any) -> Obj:
    """The body of a raw (`_preload_content=False`) response: skips the client's slow
    model (de)serialisation, which dominates CPU with many pools."""
    return cast(Obj, json.loads(response.data))


def as_body(raw: Obj) -> kopf.Body:
    """A plain dict as kopf's Body (for kopf.adopt and kopf's Event helpers)."""
    return kopf.Body(cast(Any, raw))


def not_found(exc: client.ApiException) -> bool:
    return exc.status == 404


def server_side_apply(
    api: client.ApiClient,
    manifest: Obj,
    field_manager: str = naming.FIELD_MANAGER,
    force: bool = True,
) -> tuple[Obj, bool]:
    """Server-side apply of one of the kinds a pool owns: (the live object, whether
    this apply created it; the server answers 201 then)."""
    meta = manifest["metadata"]
    group, version, plural = BY_KIND[manifest["kind"]].kind.resource
    # The custom-objects API is a plain /apis/<group>/<version>/... client, good for
    # any grouped kind. Raw: its deserialisation of an apply response yields None
    # (kubernetes 37), and raw is cheaper anyway.
    args = (meta["name"], meta["namespace"], manifest) if not group else (
        group, version, meta["namespace"], plural, meta["name"], manifest
    )  # fmt: skip
    try:
        response: Any = _objects(api, group, "patch", plural)(
            *args,
            field_manager=field_manager,
            force=force,
            _content_type=APPLY,
            _request_timeout=_timeout(),
            _preload_content=False,
        )
    except client.ApiException as exc:
        conflicts = apply_conflicts(exc) if not force else None
        if conflicts:
            raise ApplyConflict(conflicts) from exc
        raise
    return _json(response), response.status == 201


def _objects(api: client.ApiClient, group: str, verb: str, plural: str) -> Any:
    """The client call for `verb` on one object: the custom-objects API (a plain
    /apis/<group>/<version>/... client) for any grouped kind, CoreV1Api's own method for
    a core one (a ServiceAccount, a Pod: /api/v1/...)."""
    if group:
        return getattr(client.CustomObjectsApi(api), f"{verb}_namespaced_custom_object")
    singular = {"serviceaccounts": "service_account", "pods": "pod"}[plural]
    return getattr(client.CoreV1Api(api), f"{verb}_namespaced_{singular}")


_CONFLICT = re.compile(r'conflict with "([^"]*)"(?: with subresource "([^"]*)")?')


def apply_conflicts(exc: client.ApiException) -> dict[str, str]:
    """Field path -> the managers holding it, from a 409 to an unforced apply (each
    cause: 'conflict with "kubectl" with subresource "scale" using apps/v1')."""
    if exc.status != 409:
        return {}
    try:
        causes = json.loads(exc.body or "{}").get("details", {}).get("causes") or []
    except ValueError:
        return {}
    managers: dict[str, list[str]] = {}
    for cause in causes:
        found = _CONFLICT.match(cause.get("message") or "")
        if cause.get("reason") == "FieldManagerConflict" and found:
            manager, sub = found.groups()
            names = managers.setdefault(str(cause.get("field")), [])
            names.append(f"{manager} ({sub})" if sub else manager)
    return {field: ", ".join(names) for field, names in managers.items()}


def apply_as_handover_manager(api: client.ApiClient, manifest: Obj) -> bool:
    """Apply a few fields as the hand-over field manager (replicas.py), unforced: a
    conflict means another manager (kubectl scale, an HPA) holds them already, a 404 or
    422 that the object is gone; either way there is nothing left to keep."""
    try:
        server_side_apply(api, manifest, naming.HANDOVER_FIELD_MANAGER, force=False)
        return True
    except client.ApiException as exc:
        if exc.status in (404, 409, 422):
            return False
        raise


def delete(api: client.ApiClient, owned: Owned, namespace: str, pool_name: str) -> bool:
    """Remove an owned object the spec no longer wants; False if it was gone already."""
    group, version, plural = owned.kind.resource
    try:
        name = owned.object_name(pool_name)
        args = (name, namespace) if not group else (group, version, namespace, plural, name)
        _objects(api, group, "delete", plural)(*args, _request_timeout=_timeout())
        return True
    except client.ApiException as exc:
        if not_found(exc):
            return False
        raise


_kuberay_seen = NEVER


def kuberay_installed(api: client.ApiClient, namespace: str) -> bool:
    """Whether the API server serves ray.io/v1 RayClusters (KubeRay's CRD).

    A yes is remembered for most of a resync interval (CRDs rarely vanish).
    """
    global _kuberay_seen
    if recent(_kuberay_seen):
        return True
    group, version, plural = RAY_CLUSTER.kind.resource
    try:  # ours only: the answer is the same, and nobody else's object is sent
        client.CustomObjectsApi(api).list_namespaced_custom_object(
            group,
            version,
            namespace,
            plural,
            limit=1,
            label_selector=MANAGED_SELECTOR,
            _request_timeout=_timeout(),
        )
        _kuberay_seen = time.monotonic()
        return True
    except client.ApiException as exc:
        if not_found(exc):
            return False
        raise


def count_rayjobs(api: client.ApiClient, namespace: str, work_pool: str) -> int:
    """The RayJobs (flow-run clusters) the `kuberay` worker of `work_pool` made here: it
    labels each with the work pool's name."""
    group, version, plural = kinds.RAY_JOB.resource
    found = _json(
        client.CustomObjectsApi(api).list_namespaced_custom_object(
            group,
            version,
            namespace,
            plural,
            label_selector=f"{WORK_POOL_LABEL}={label_value(work_pool)}",
            _request_timeout=_timeout(),
            _preload_content=False,
        )
    )
    return len(found.get("items") or [])


def read_secret_key(api: client.ApiClient, namespace: str, ref: KeyRef) -> SecretKey | None:
    """The referenced key of a Secret as stored (base64) and the Secret's type, or None
    when the Secret is missing. Nothing else of the Secret is kept, nothing is decoded
    here: whoever sends a value decodes it (reconcile._SecretValues)."""
    try:
        response: Any = client.CoreV1Api(api).read_namespaced_secret(
            ref.name, namespace, _request_timeout=_timeout(), _preload_content=False
        )
    except client.ApiException as exc:
        if not_found(exc):
            return None
        raise
    secret = _json(response)
    value = (secret.get("data") or {}).get(ref.key)
    meta = secret.get("metadata") or {}
    times = [str(e["time"]) for e in meta.get("managedFields") or [] if e.get("time")]
    written = max(times, default=meta.get("creationTimestamp"))
    return SecretKey(
        str(secret.get("type") or "Opaque"),
        value if isinstance(value, str) else None,
        str(written) if written else None,
    )


#: Read a Secret as metadata only: its data never reaches the operator.
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def read_metadata(api: client.ApiClient, kind: kinds.Kind, namespace: str, name: str) -> Obj | None:
    """The metadata of an object by name, whoever made it, or None when there is none.
    A list by name, not a GET: the operator lists and watches its kinds already, and
    needs no other right to see what a first apply would take over."""
    group, version, plural = kind.resource
    list_args = (namespace,) if not group else (group, version, namespace, plural)
    response: Any = _objects(api, group, "list", plural)(
        *list_args,
        field_selector=f"metadata.name={name}",
        _headers={"Accept": METADATA_LIST},
        _request_timeout=_timeout(),
        _preload_content=False,
    )
    items = _json(response).get("items") or []
    return cast(Obj, items[0].get("metadata") or {}) if items else None


def _secret_metadata(api: client.ApiClient, namespace: str, name: str) -> Obj | None:
    try:
        found = client.CoreV1Api(api).read_namespaced_secret(
            name,
            namespace,
            _headers={"Accept": METADATA_ONLY},
            _request_timeout=_timeout(),
            _preload_content=False,
        )
    except client.ApiException as exc:
        if not_found(exc):
            return None
        raise
    return cast(Obj, _json(found)["metadata"])


def ensure_secret(api: client.ApiClient, manifest: Obj) -> tuple[Obj, bool]:
    """Create a Secret unless it exists: (its metadata, whether made now). Created,
    never applied: a token is not rotated behind running Ray nodes' backs."""
    meta = manifest["metadata"]
    core = client.CoreV1Api(api)
    for _ in range(2):  # a create answered 409 (made meanwhile) reads once more
        found = _secret_metadata(api, meta["namespace"], meta["name"])
        if found is not None:
            return found, False
        try:
            made = core.create_namespaced_secret(
                meta["namespace"],
                cast(Any, manifest),
                _request_timeout=_timeout(),
                _preload_content=False,
            )
            return cast(Obj, _json(made)["metadata"]), True
        except client.ApiException as exc:
            if exc.status != 409:
                raise
    raise RuntimeError(f"Secret {meta['name']} is being created and deleted at once")


def delete_pod(api: client.ApiClient, namespace: str, name: str) -> None:
    try:
        client.CoreV1Api(api).delete_namespaced_pod(
            name, namespace, _request_timeout=_timeout(), _preload_content=False
        )
    except client.ApiException as exc:
        if not not_found(exc):
            raise


def write_status(api: client.ApiClient, namespace: str, name: str, status: Obj) -> None:
    try:
        client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
            kinds.GROUP,
            kinds.VERSION,
            namespace,
            kinds.PLURAL,
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
            _request_timeout=_timeout(),
        )
    except client.ApiException as exc:
        # The pool went away after the watch cache showed it (its finalizer was
        # released meanwhile): no status to write, and no reason for a traceback.
        if not not_found(exc):
            raise


class KubeIO:
    """The real `ClusterIO`: reads from the watches' cache, writes to the API server,
    the work pool through the Prefect API."""

    def __init__(self, api: client.ApiClient, reads: Reads) -> None:
        self.api, self.reads = api, reads

    def pool(self, namespace: str, name: str) -> Obj | None:
        return self.reads.pool(namespace, name)

    def live(self, owned: Owned, namespace: str, pool_name: str) -> Obj | None:
        return self.reads.owned(owned, namespace, pool_name)

    def metadata(self, kind: kinds.Kind, namespace: str, name: str) -> Obj | None:
        return read_metadata(self.api, kind, namespace, name)

    def apply_manifest(self, manifest: Obj, force: bool = True) -> tuple[Obj, bool]:
        return server_side_apply(self.api, manifest, force=force)

    def apply_handover(self, manifest: Obj) -> bool:
        return apply_as_handover_manager(self.api, manifest)

    def delete(self, owned: Owned, namespace: str, pool_name: str) -> bool:
        return delete(self.api, owned, namespace, pool_name)

    def ensure_secret(self, manifest: Obj) -> tuple[Obj, bool]:
        return ensure_secret(self.api, manifest)

    def delete_pod(self, namespace: str, name: str) -> None:
        delete_pod(self.api, namespace, name)

    def flow_run_clusters(self, namespace: str, work_pool: str) -> int:
        return count_rayjobs(self.api, namespace, work_pool)

    def secret_key(self, namespace: str, ref: KeyRef) -> SecretKey | None:
        return read_secret_key(self.api, namespace, ref)

    def kuberay_installed(self, namespace: str) -> bool:
        return kuberay_installed(self.api, namespace)

    def pods(self, namespace: str, pool_name: str) -> list[Obj]:
        return self.reads.pods(namespace, pool_name)

    def ensure_work_pool(self, work_pool: DesiredWorkPool, api_key: str | None) -> Check:
        return workpool.ensure_work_pool(
            CONFIG.operator_prefect_url(work_pool.api_url),
            work_pool.name,
            work_pool.concurrency_limit,
            work_pool.owner,
            api_key=api_key,
            timeout=CONFIG.prefect_timeout,
            work_pool_type=work_pool.type,
            base_job_template=work_pool.base_job_template,
            adopt=CONFIG.adopt_work_pools,
            note=work_pool.note,
        )

    def active_flow_runs(self, work_pool: DesiredWorkPool, api_key: str | None) -> list[Obj] | None:
        url = CONFIG.operator_prefect_url(work_pool.api_url)
        return flow_runs.active_flow_runs(url, work_pool.name, api_key, CONFIG.prefect_timeout)

    def flow_run_queue(
        self, work_pool: DesiredWorkPool, api_key: str | None, ahead_seconds: int
    ) -> Queue | None:
        url = CONFIG.operator_prefect_url(work_pool.api_url)
        now = datetime.now(UTC)
        # Due now: what a worker's next poll takes (Prefect's default prefetch, 10 s).
        near, far = now + timedelta(seconds=10), now + timedelta(seconds=ahead_seconds)
        return flow_runs.queue(url, work_pool.name, api_key, CONFIG.prefect_timeout, near, far)

    def crash_flow_run(
        self, work_pool: DesiredWorkPool, api_key: str | None, run_id: str, message: str
    ) -> bool:
        url = CONFIG.operator_prefect_url(work_pool.api_url)
        return flow_runs.crash_flow_run(url, run_id, message, api_key, CONFIG.prefect_timeout)

    def release_work_pool(self, work_pool: DesiredWorkPool, api_key: str | None) -> Check:
        return workpool.release_work_pool(
            CONFIG.operator_prefect_url(work_pool.api_url),
            work_pool.name,
            work_pool.owner,
            api_key=api_key,
            timeout=CONFIG.prefect_timeout,
        )

    def write_status(self, namespace: str, name: str, status: Obj) -> None:
        write_status(self.api, namespace, name, status)

    def post_event(self, owner: Obj, type: str, reason: str, message: str) -> None:
        # kopf.event, not kopf.info: kopf's own per-handler chatter is not posted (the
        # posting level is WARNING), ours is.
        if kopf_namespaces.terminating(owner.get("metadata", {}).get("namespace")):
            return  # refused there; kopf would retry it nine times (kopf_namespaces.py)
        kopf.event(as_body(owner), type=type, reason=reason, message=message)


def pools_served(api: client.ApiClient, namespace: str | None) -> float | None:
    """None when PrefectRayPools can be listed (in `namespace`, or cluster-wide), or
    the seconds a 429 asks to wait (startup.py). Other errors are kopf's to report.

    The list kopf starts with, no limit and no resourceVersion: a limited or
    resourceVersion'd list can take another path in the API server (etcd or the
    cache) and miss the 429 kopf would get."""
    group, version, plural = kinds.POOL.resource
    objects = client.CustomObjectsApi(api)
    try:
        if namespace is None:
            objects.list_cluster_custom_object(group, version, plural, _request_timeout=_timeout())
        else:
            objects.list_namespaced_custom_object(
                group, version, namespace, plural, _request_timeout=_timeout()
            )
    except client.ApiException as exc:
        if exc.status == 429:
            return float((exc.headers or {}).get("Retry-After") or 1)
    except Exception:  # unreachable, say: kopf's own first list meets it and reports it
        pass
    return None
