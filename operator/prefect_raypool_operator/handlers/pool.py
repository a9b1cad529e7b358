"""Reconcile one pool, serialised per pool, and report it: status, Events, errors.

Error policy (deliberate): a problem only a spec change can fix raises
kopf.PermanentError (no retry storm; the next spec change triggers again); a problem
that may fix itself (missing Secret, KubeRay not installed yet, Prefect API down)
raises kopf.TemporaryError with a delay. The resync timer never raises: the status
already says what is wrong, and it keeps repairing drift.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
from kubernetes import client, config

from prefect_raypool_operator import kube
from prefect_raypool_operator.coalesce import Coalescer
from prefect_raypool_operator.handlers import health
from prefect_raypool_operator.naming import POOL_LABEL
from prefect_raypool_operator.reconcile import Outcome, reconcile
from prefect_raypool_operator.settings import CONFIG
from prefect_raypool_operator.watchcache import Reads

RETRY_DELAY = 15.0
_runs = Coalescer()  # one reconcile per pool at a time; bursts fold into one more
# metadata.generation of each owned object as last applied/seen by us: an event with
# another generation means someone changed its spec (drift), not just its status.
_generations: dict[tuple[str, str, str], int | None] = {}
# (namespace, name) -> (pool uid, the status we last wrote). The watch may lag behind
# our own writes; comparing with what we wrote keeps Events to one per transition and
# skips writes that would change nothing.
_written: dict[tuple[str, str], tuple[str, dict[str, Any]]] = {}
_api: client.ApiClient | None = None


def api_client() -> client.ApiClient:
    global _api
    if _api is None:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        configuration = client.Configuration.get_default_copy()
        # One connection per executor thread (kopf's max_workers), not urllib3's 10:
        # a discarded connection costs a new TLS handshake per request.
        configuration.connection_pool_maxsize = CONFIG.workers
        _api = client.ApiClient(configuration)
    return _api


Logger = logging.Logger | logging.LoggerAdapter[Any]


def run(
    namespace: str, name: str, reads: Reads, logger: Logger, repair: bool = True
) -> Outcome | None:
    """Reconcile the pool now, or fold into the reconcile already running for it.

    None when the pool is gone or the trigger was folded into a running reconcile.
    """
    ran, outcome = _runs.run(
        (namespace, name), lambda again: _run_once(namespace, name, reads, logger, again), repair
    )
    return outcome if ran else None


def _forget(namespace: str, name: str) -> None:
    health.forget(namespace, name)
    kube.forget_pool(namespace, name)
    _written.pop((namespace, name), None)


def _run_once(
    namespace: str, name: str, reads: Reads, logger: Logger, repair: bool
) -> Outcome | None:
    """Reconcile the pool as last seen, write status and Events. None if it is gone."""
    api = api_client()
    started = time.monotonic()
    body = reads.pool(namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        _forget(namespace, name)
        return None
    uid = body["metadata"]["uid"]
    written_uid, previous = _written.get((namespace, name), ("", None))
    if written_uid != uid or previous is None:
        previous = body.get("status") or {}
    outcome = reconcile(api, body, reads, previous, repair=repair)
    _generations.update(outcome.generations)
    if outcome.status != previous:
        kube.write_status(api, name, namespace, outcome.status)
        _written[(namespace, name)] = (uid, outcome.status)
    health.record(namespace, name)
    logger.debug(
        f"reconciled in {time.monotonic() - started:.3f}s: phase {outcome.status['phase']}"
    )
    # kopf.event, not kopf.info: kopf's own per-handler chatter is not posted (the
    # posting level is WARNING), ours is.
    owner = kube.as_body(body)
    for created in outcome.created:
        kopf.event(owner, type="Normal", reason="Created", message=f"created {created}")
    for change in outcome.transitions:
        kopf.event(
            owner,
            type="Warning" if change.warning else "Normal",
            reason=change.reason,
            message=f"{change.type}={change.status}: {change.message}",
        )
    if outcome.problem:
        logger.warning(f"{outcome.problem.reason}: {outcome.problem.message}")
    return outcome


def on_spec(namespace: str | None, name: str, logger: Logger, **kwargs: Any) -> None:
    """create / update / resume: reconcile, and let kopf retry what may fix itself."""
    assert namespace, "PrefectRayPool is namespaced"
    outcome = run(namespace, name, Reads.from_handler(kwargs), logger)
    if outcome is None or outcome.problem is None:
        return
    problem = outcome.problem
    if problem.permanent:
        raise kopf.PermanentError(f"{problem.reason}: {problem.message}")
    raise kopf.TemporaryError(f"{problem.reason}: {problem.message}", delay=RETRY_DELAY)


def on_resync(namespace: str | None, name: str, logger: Logger, **kwargs: Any) -> None:
    """The timer: drift repair and status refresh, whatever happened to the watch."""
    if namespace:
        run(namespace, name, Reads.from_handler(kwargs), logger)


def on_owned_change(
    type: str | None,
    body: Mapping[str, Any],
    labels: Mapping[str, str],
    namespace: str | None,
    logger: Logger,
    **kwargs: Any,
) -> None:
    """A RayCluster or worker Deployment we own changed or vanished: reconcile its pool.

    Deleted, first seen, or its spec changed by someone else: repair (apply). Only its
    status changed: observe, without re-applying.
    """
    pool = labels.get(POOL_LABEL)
    if not pool or not namespace:
        return
    meta = body.get("metadata") or {}
    key = (str(body.get("kind")), namespace, str(meta.get("name")))
    drifted = type in (None, "DELETED") or meta.get("generation") != _generations.get(key)
    run(namespace, pool, Reads.from_handler(kwargs), logger, repair=drifted)
