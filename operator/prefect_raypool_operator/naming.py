"""Every name and label the operator gives to the objects it generates."""

from __future__ import annotations

from prefect_raypool_operator import spec

DOMAIN = spec.GROUP
MANAGED_BY = "prefect-raypool-operator"
FIELD_MANAGER = MANAGED_BY

POOL_LABEL = f"{DOMAIN}/pool"
COMPONENT_LABEL = f"{DOMAIN}/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

FINALIZER = f"{DOMAIN}/finalizer"
ANNOTATION_PREFIX = DOMAIN

HEAD_CONTAINER = "ray-head"
RAY_WORKER_CONTAINER = "ray-worker"
PREFECT_WORKER_CONTAINER = "prefect-worker"
RAY_TMP_VOLUME = "ray-tmp"
RAY_TMP_DIR = "/tmp/ray"

GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
RAY_TOKEN_KEY = "token"


def ray_cluster(pool: str) -> str:
    return pool


def head_service(pool: str) -> str:
    """KubeRay's name for the head service of the RayCluster `pool`."""
    return f"{ray_cluster(pool)}-head-svc"


def head_address(pool: str) -> str:
    return f"{head_service(pool)}:{GCS_PORT}"


def head_service_fqdn(pool: str, namespace: str) -> str:
    return f"{head_service(pool)}.{namespace}.svc"


def dashboard_url(pool: str, namespace: str) -> str:
    return f"http://{head_service_fqdn(pool, namespace)}:{DASHBOARD_PORT}"


def worker_deployment(pool: str) -> str:
    return f"{pool}-prefect-worker"


def ray_token_secret(pool: str) -> str:
    return f"{pool}-ray-token"


def work_pool(pool: str, pool_spec: spec.PrefectRayPoolSpec) -> str:
    return pool_spec.prefect.workPool.name or pool


def labels(pool: str, component: str) -> dict[str, str]:
    """Labels on every generated object; selectors use the first two."""
    return {
        POOL_LABEL: pool,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
        "app.kubernetes.io/name": "prefect-raypool",
        "app.kubernetes.io/instance": pool,
    }


def selector(pool: str, component: str) -> dict[str, str]:
    return {POOL_LABEL: pool, COMPONENT_LABEL: component}
