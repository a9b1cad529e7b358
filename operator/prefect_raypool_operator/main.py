"""Every kopf handler, registered in one place; each delegates to the controller.

Run with `python -m prefect_raypool_operator --namespace=NS` (or --all-namespaces);
see __main__.py.
"""

from __future__ import annotations

import time
from typing import Any

import kopf

from prefect_raypool_operator import (
    config,
    kinds,
    kopf_log,
    kopf_namespaces,
    kopf_watches,
    kube,
    naming,
    startup,
    watchcache,
)
from prefect_raypool_operator.controller import CONTROLLER, Logger, api_client
from prefect_raypool_operator.owned import OWNED_KINDS

POOLS = kinds.POOL.resource
MANAGED = {naming.MANAGED_BY_LABEL: naming.MANAGED_BY}
kopf_namespaces.keep_watching_terminating_namespaces()
kopf_watches.track_watch_streams()
kopf_log.soften_storage_initializing_retries()


@kopf.on.startup()
def on_startup(settings: kopf.OperatorSettings, logger: Logger, **_: Any) -> None:
    config.configure_kopf(settings)
    for warning in config.CONFIG.warnings():
        logger.warning(warning)
    api = api_client()  # fail at start, not at the first pool, when there is no cluster config
    startup.wait_until_served(lambda namespace: kube.pools_served(api, namespace), logger.info)


# What reconciles read instead of GETs (watchcache.Reads): the pools, what they own, their pods.
kopf.index(*POOLS, id=watchcache.POOL_INDEX)(watchcache.index_by_name)
kopf.index(*kinds.POD.resource, labels=MANAGED, id=watchcache.POD_INDEX)(
    watchcache.index_pods_by_pool
)
for owned_kind in OWNED_KINDS:
    kopf.index(*owned_kind.kind.resource, labels=MANAGED, id=owned_kind.index)(
        watchcache.index_by_name
    )


@kopf.on.create(*POOLS)
@kopf.on.update(*POOLS, field="spec")
@kopf.on.resume(*POOLS)
def on_spec(namespace: str | None, name: str, logger: Logger, **kwargs: Any) -> None:
    CONTROLLER.on_spec(namespace, name, logger, kwargs)


@kopf.timer(
    *POOLS, interval=config.CONFIG.resync_seconds, initial_delay=config.CONFIG.resync_seconds
)
def on_resync(namespace: str | None, name: str, logger: Logger, **kwargs: Any) -> None:
    CONTROLLER.on_resync(namespace, name, logger, kwargs)


def _polls_queue(spec: kopf.Spec, status: kopf.Status, **_: Any) -> bool:
    """A pool suspended while idle, or with its autoscaled worker groups following the
    queue (rayscaleup.py): Prefect is asked more often than a resync."""
    suspended = (status.get("idle") or {}).get("state") in ("Suspending", "Suspended")
    return suspended or bool(((spec.get("ray") or {}).get("autoscaling") or {}).get("enabled"))


@kopf.timer(*POOLS, interval=config.CONFIG.queue_poll_seconds, when=_polls_queue)
def on_queue_poll(namespace: str | None, name: str, logger: Logger, **kwargs: Any) -> None:
    """A suspended pool wakes when a flow run is scheduled, and autoscaled worker
    groups rise for it, sooner than a resync."""
    CONTROLLER.on_resync(namespace, name, logger, kwargs)


@kopf.on.delete(*POOLS)
def on_delete(body: kopf.Body, retry: int, logger: Logger, **kwargs: Any) -> None:
    CONTROLLER.on_delete(body, retry, logger, kwargs)


def on_owned_change(
    type: str | None, body: kopf.Body, namespace: str | None, logger: Logger, **kwargs: Any
) -> None:
    CONTROLLER.on_owned_change(type, body, namespace, logger, kwargs)


for owned_kind in OWNED_KINDS:
    kopf.on.event(*owned_kind.kind.resource, labels=MANAGED)(on_owned_change)


# Liveness (/healthz): a failing probe answers 500 and logs why (an ERROR line naming
# what is stale); kopf caches healthy answers for 10 s. PermanentError: kopf would otherwise
# retry the probe after a 60 s backoff while the kubelet's request waits.
@kopf.on.probe(id="watch")
def watch_probe(**_: Any) -> dict[str, Any]:
    """Every open watch stream heard from the API server lately (kopf_watches.py)."""
    ages = kopf_watches.STREAMS.ages(time.monotonic())
    try:
        return kopf_watches.check(ages, config.CONFIG.watch_stale_seconds)
    except kopf_watches.StaleWatch as e:
        raise kopf.PermanentError(str(e)) from None


@kopf.on.probe(id="reconcile")
def reconcile_probe(**_: Any) -> dict[str, Any]:
    """Reconciles still run: catches handlers stuck while the watches are fine."""
    try:
        return CONTROLLER.liveness()
    except RuntimeError as e:
        raise kopf.PermanentError(str(e)) from None
