"""Kubernetes I/O for the reconciler: server-side apply, reads, the token Secret.

Thin wrappers over the kubernetes client so the reconciler reads as a list of steps.
Server-side apply with `force` makes every reconcile level-triggered: whatever was
edited or deleted by hand in the fields we own is put back.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from typing import Any, cast

import kopf
from kubernetes import client

from prefect_raypool_operator import naming, spec
from prefect_raypool_operator.settings import CONFIG

APPLY = "application/apply-patch+yaml"
RAY_GROUP, RAY_VERSION, RAY_PLURAL = "ray.io", "v1", "rayclusters"

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


def apply(api: client.ApiClient, manifest: Obj) -> tuple[Obj, bool]:
    """Server-side apply of one of the kinds a pool owns: (the live object, whether
    this apply created it; the server answers 201 then)."""
    meta = manifest["metadata"]
    kwargs: Obj = {
        "field_manager": naming.FIELD_MANAGER,
        "force": True,
        "_content_type": APPLY,
        "_request_timeout": _timeout(),
    }
    kind = manifest["kind"]
    response: Any
    if kind == "RayCluster":
        # Raw: the client's deserialisation of an apply response to a custom object
        # yields None (kubernetes 37), and raw is cheaper anyway.
        response = client.CustomObjectsApi(api).patch_namespaced_custom_object(
            RAY_GROUP,
            RAY_VERSION,
            meta["namespace"],
            RAY_PLURAL,
            meta["name"],
            manifest,
            _preload_content=False,
            **kwargs,
        )
    elif kind == "Deployment":
        response = client.AppsV1Api(api).patch_namespaced_deployment(
            meta["name"], meta["namespace"], manifest, _preload_content=False, **kwargs
        )
    else:
        raise ValueError(f"apply: unsupported kind {kind}")
    return _json(response), response.status == 201


_kuberay_seen = -1e9


def kuberay_installed(api: client.ApiClient, namespace: str) -> bool:
    """Whether the API server serves ray.io/v1 RayClusters (KubeRay's CRD).

    A yes is remembered for most of a resync interval (CRDs rarely vanish).
    """
    global _kuberay_seen
    if time.monotonic() - _kuberay_seen < 0.9 * CONFIG.resync_seconds:
        return True
    try:
        client.CustomObjectsApi(api).list_namespaced_custom_object(
            RAY_GROUP, RAY_VERSION, namespace, RAY_PLURAL, limit=1, _request_timeout=_timeout()
        )
        _kuberay_seen = time.monotonic()
        return True
    except client.ApiException as exc:
        if not_found(exc):
            return False
        raise


def delete_deployment(api: client.ApiClient, name: str, namespace: str) -> bool:
    """Remove the worker Deployment (placement switched away from ZeroCapacityNode)."""
    try:
        client.AppsV1Api(api).delete_namespaced_deployment(
            naming.worker_deployment(name), namespace, _request_timeout=_timeout()
        )
        return True
    except client.ApiException as exc:
        if not_found(exc):
            return False
        raise


def read_head_pod(api: client.ApiClient, name: str, namespace: str) -> Obj | None:
    pods = _json(
        client.CoreV1Api(api).list_namespaced_pod(
            namespace,
            label_selector=f"ray.io/cluster={naming.ray_cluster(name)},ray.io/node-type=head",
            _request_timeout=_timeout(),
            _preload_content=False,
        )
    )
    items = pods.get("items") or []
    return dict(items[0]) if items else None


def read_secret_key(api: client.ApiClient, ref: spec.KeyRef, namespace: str) -> str | None:
    """The decoded value of a Secret key, or None when the Secret or key is missing."""
    try:
        secret = client.CoreV1Api(api).read_namespaced_secret(
            ref.name, namespace, _request_timeout=_timeout()
        )
    except client.ApiException as exc:
        if not_found(exc):
            return None
        raise
    raw = (secret.data or {}).get(ref.key)
    return base64.b64decode(raw).decode() if raw is not None else None


# (namespace, pool) -> (pool uid, when its token Secret was last known to exist): every
# repair reconcile would otherwise cost a create answered 409.
_token_seen: dict[tuple[str, str], tuple[str, float]] = {}


def forget_pool(namespace: str, name: str) -> None:
    _token_seen.pop((namespace, name), None)


def ensure_token_secret(api: client.ApiClient, owner: Obj, name: str, namespace: str) -> bool:
    """Create `<pool>-ray-token` with a fresh random token unless it exists; True if made.

    Created, never applied: a token is not rotated behind running Ray nodes' backs.
    """
    uid = owner["metadata"]["uid"]
    seen_uid, seen_at = _token_seen.get((namespace, name), ("", -1e9))
    if seen_uid == uid and time.monotonic() - seen_at < 0.9 * CONFIG.resync_seconds:
        return False
    body: Obj = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": naming.ray_token_secret(name),
            "namespace": namespace,
            "labels": naming.labels(name, "ray-token"),
        },
        "stringData": {naming.RAY_TOKEN_KEY: secrets.token_urlsafe(32)},
    }
    kopf.adopt(body, owner=as_body(owner))
    try:
        client.CoreV1Api(api).create_namespaced_secret(
            namespace, cast(Any, body), _request_timeout=_timeout()
        )
        created = True
    except client.ApiException as exc:
        if exc.status != 409:
            raise
        created = False
    _token_seen[(namespace, name)] = (uid, time.monotonic())
    return created


def write_status(api: client.ApiClient, name: str, namespace: str, status: Obj) -> None:
    client.CustomObjectsApi(api).patch_namespaced_custom_object_status(
        spec.GROUP,
        spec.VERSION,
        namespace,
        spec.PLURAL,
        name,
        {"status": status},
        _content_type="application/merge-patch+json",
        _request_timeout=_timeout(),
    )
