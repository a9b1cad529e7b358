"""Handler registration, in one place. Run with:

    kopf run -m prefect_raypool_operator.main --standalone \\
        --liveness=http://0.0.0.0:8080/healthz --namespace=NS   # or --all-namespaces
"""

from __future__ import annotations

from typing import Any

import kopf

from prefect_raypool_operator import naming, settings, spec, watchcache
from prefect_raypool_operator.handlers import health, pool

POOLS = (spec.GROUP, spec.VERSION, spec.PLURAL)
OWNED = {naming.MANAGED_BY_LABEL: naming.MANAGED_BY}


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    _configure(settings)
    pool.api_client()


def _configure(kopf_settings: kopf.OperatorSettings) -> None:
    settings.configure(kopf_settings)


# What reconciles read instead of GETs (watchcache.Reads names these three ids).
kopf.index(*POOLS, id="pool_index")(watchcache.index_by_name)
kopf.index("ray.io", "v1", "rayclusters", labels=OWNED, id="raycluster_index")(
    watchcache.index_by_name
)
kopf.index("apps", "v1", "deployments", labels=OWNED, id="deployment_index")(
    watchcache.index_by_name
)

kopf.on.create(*POOLS)(pool.on_spec)
kopf.on.update(*POOLS, field="spec")(pool.on_spec)
kopf.on.resume(*POOLS)(pool.on_spec)
kopf.timer(
    *POOLS,
    interval=settings.CONFIG.resync_seconds,
    initial_delay=settings.CONFIG.resync_seconds,
)(pool.on_resync)
kopf.on.event("ray.io", "v1", "rayclusters", labels=OWNED)(pool.on_owned_change)
kopf.on.event("apps", "v1", "deployments", labels=OWNED)(pool.on_owned_change)


@kopf.on.probe(id="reconcile")
def reconcile_probe(**_: Any) -> dict[str, Any]:
    return health.check()
