"""Which operator acts on a pool: the one whose identity its label names.

Two installs of the operator (two chart releases) may cover the same namespaces, and
each has its own Lease, so leader election alone would let both act on one pool. So
each operator has an identity (RAYPOOL_OPERATOR_ID; the chart's is
`<release namespace>.<release>`), and kopf watches only the pools labelled
`prefectray.io/operator=<its identity>` (a server-side selector, config.configure_kopf):
another operator's pool never reaches its handlers, so it adds no finalizer, writes no
annotation and reconciles nothing there. A pool without the label is claimed here by
the first operator to label it, through a merge patch conditional on the
resourceVersion it saw, so two operators cannot both win; an Event names the
claimant. A pool author may set the label beforehand to pick an operator; removing it
hands the pool to whichever operator claims it next.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, cast

from kopf._cogs.structs.references import NamespaceName, match_namespace
from kubernetes import client, watch

from prefect_raypool_operator import kinds, naming
from prefect_raypool_operator.config import CONFIG

Obj = dict[str, Any]
log = logging.getLogger("prefect_raypool_operator.claim")

#: The pools no operator has claimed yet.
UNCLAIMED = f"!{naming.OPERATOR_LABEL}"


def claim_patch(pool: Obj, operator_id: str) -> Obj:
    """The merge patch that labels `pool` as this operator's, refused (409) if the pool
    changed since it was seen: another operator may have claimed it meanwhile."""
    return {
        "metadata": {
            "labels": {naming.OPERATOR_LABEL: operator_id},
            "resourceVersion": pool["metadata"]["resourceVersion"],
        }
    }


def claim(api: client.ApiClient, pool: Obj, operator_id: str) -> bool:
    """Label the pool as ours; False when it changed or went away meanwhile (the watch
    shows what became of it)."""
    meta = pool["metadata"]
    try:
        client.CustomObjectsApi(api).patch_namespaced_custom_object(
            kinds.GROUP,
            kinds.VERSION,
            meta["namespace"],
            kinds.PLURAL,
            meta["name"],
            claim_patch(pool, operator_id),
            _content_type="application/merge-patch+json",
            _request_timeout=CONFIG.kube_request_timeout,
        )
        return True
    except client.ApiException as exc:
        if exc.status in (404, 409):
            return False
        raise


def watched_namespaces(clusterwide: bool, patterns: tuple[str, ...]) -> list[str | None]:
    """Where to watch for unclaimed pools: each namespace named exactly, else the whole
    cluster (None), filtered by kopf's own patterns (`in_scope`)."""
    exact = [p for p in patterns if not any(c in p for c in "!*?,")]
    if clusterwide or not patterns or len(exact) < len(patterns):
        return [None]
    return list(exact)


def in_scope(namespace: str, clusterwide: bool, patterns: tuple[str, ...]) -> bool:
    name = NamespaceName(namespace)
    return clusterwide or not patterns or any(match_namespace(name, p) for p in patterns)


def _events(api: client.ApiClient, namespace: str | None) -> Iterator[Obj]:
    """One watch of the unclaimed pools: every one as ADDED first, then changes, until
    the API server ends it."""
    objects = client.CustomObjectsApi(api)
    group, version, plural = kinds.POOL.resource
    args: tuple[Any, ...]
    list_fn: Any
    if namespace is None:
        list_fn, args = objects.list_cluster_custom_object, (group, version, plural)
    else:
        list_fn, args = objects.list_namespaced_custom_object, (group, version, namespace, plural)
    yield from watch.Watch().stream(
        list_fn,
        *args,
        label_selector=UNCLAIMED,
        timeout_seconds=int(CONFIG.watch_server_timeout),
        _request_timeout=CONFIG.watch_client_timeout,
    )


def claimed_event(pool: Obj, operator_id: str, now: dt.datetime) -> Obj:
    """The pool's `Claimed` Event, naming the operator that acts on it."""
    meta = pool["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": kinds.POOL.api_version,
            "kind": kinds.POOL.kind,
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta.get("uid"),
        },
        "type": "Normal",
        "reason": "Claimed",
        "message": (
            f"managed by the operator {operator_id} (label {naming.OPERATOR_LABEL}); "
            "other operators covering this namespace leave it alone"
        ),
        "source": {"component": naming.MANAGED_BY},
        "firstTimestamp": now.isoformat(),
        "lastTimestamp": now.isoformat(),
        "count": 1,
    }


def _announce(api: client.ApiClient, pool: Obj, operator_id: str) -> None:
    """Posted here, not through kopf's Event queue, which lives in its handlers' context."""
    event = claimed_event(pool, operator_id, dt.datetime.now(dt.UTC))
    try:
        client.CoreV1Api(api).create_namespaced_event(
            event["metadata"]["namespace"],
            cast(Any, event),
            _request_timeout=CONFIG.kube_request_timeout,
        )
    except Exception as exc:  # an Event is a courtesy: the label says it all
        log.warning(f"Event for the claim of {pool['metadata']['name']} not posted: {exc}")


def claim_loop(
    api: client.ApiClient,
    operator_id: str,
    namespace: str | None,
    scope: Callable[[str], bool],
    writing: Callable[[], AbstractContextManager[bool]],
    events: Callable[[client.ApiClient, str | None], Iterator[Obj]] = _events,
    retry_delay: float = 2.0,
) -> None:
    """Claim every unclaimed pool in `namespace` (None: the cluster, where `scope`
    says), until `writing()` refuses (the operator is stopping)."""
    wait = threading.Event()
    while True:
        try:
            for event in events(api, namespace):
                pool = event["object"]
                meta = pool.get("metadata") or {}
                if event["type"] not in ("ADDED", "MODIFIED") or not scope(meta["namespace"]):
                    continue
                with writing() as may_write:
                    if not may_write:
                        return
                    if claim(api, pool, operator_id):
                        log.info(f"claimed {meta['namespace']}/{meta['name']}")
                        _announce(api, pool, operator_id)
        except Exception as exc:  # the API server restarting, a dropped stream: again
            log.warning(f"watch for unclaimed pools: {type(exc).__name__}: {exc}")
            wait.wait(retry_delay)
        with writing() as may_write:
            if not may_write:
                return


def start(
    api: client.ApiClient,
    operator_id: str,
    clusterwide: bool,
    patterns: tuple[str, ...],
    writing: Callable[[], AbstractContextManager[bool]],
) -> list[threading.Thread]:
    """A claiming thread per watched namespace (or one for the cluster)."""
    threads = []
    for namespace in watched_namespaces(clusterwide, patterns):
        thread = threading.Thread(
            target=claim_loop,
            args=(
                api,
                operator_id,
                namespace,
                lambda ns: in_scope(ns, clusterwide, patterns),
                writing,
            ),
            name=f"claim-{namespace or 'cluster'}",
            daemon=True,
        )
        thread.start()
        threads.append(thread)
    return threads
