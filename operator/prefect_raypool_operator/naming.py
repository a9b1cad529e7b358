"""Every name and label the operator gives to the objects it generates.

`pool_name` is always the PrefectRayPool's metadata.name; the Prefect work pool is
`work_pool_name`.
"""

from __future__ import annotations

from prefect_raypool_kuberay import contract
from prefect_raypool_operator import kinds
from prefect_raypool_operator.spec import PrefectRayPoolSpec

DOMAIN = kinds.GROUP
MANAGED_BY = "prefect-raypool-operator"
FIELD_MANAGER = MANAGED_BY

POOL_LABEL = f"{DOMAIN}/pool"
COMPONENT_LABEL = f"{DOMAIN}/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"

FINALIZER = f"{DOMAIN}/finalizer"
ANNOTATION_PREFIX = DOMAIN
#: On a worker Deployment whose replicas an HPA or `kubectl scale` sets, not the operator.
EXTERNAL_REPLICAS_ANNOTATION = f"{DOMAIN}/replicas-managed-externally"
#: Holds a Deployment's replicas for a moment while the operator gives them up, so the
#: count stays as it is instead of falling back to the Deployment's default of 1.
HANDOVER_FIELD_MANAGER = f"{MANAGED_BY}-handover"

#: The image pools run unless spec.ray.image names another: the `kuberay` worker's
#: default too, so its contract spells it.
DEFAULT_IMAGE = contract.DEFAULT_IMAGE

HEAD_CONTAINER = "ray-head"
RAY_WORKER_CONTAINER = "ray-worker"
PREFECT_WORKER_CONTAINER = "prefect-worker"
RAY_TMP_VOLUME = "ray-tmp"
RAY_TMP_DIR = "/tmp/ray"

GCS_PORT = 6379
DASHBOARD_PORT = 8265
CLIENT_PORT = 10001
RAY_TOKEN_KEY = "token"


def ray_cluster(pool_name: str) -> str:
    return pool_name


def head_service(pool_name: str) -> str:
    """KubeRay's name for the head service of the pool's RayCluster."""
    return f"{ray_cluster(pool_name)}-head-svc"


def head_address(pool_name: str) -> str:
    return f"{head_service(pool_name)}:{GCS_PORT}"


def head_service_fqdn(pool_name: str, namespace: str) -> str:
    return f"{head_service(pool_name)}.{namespace}.svc"


def dashboard_url(pool_name: str, namespace: str) -> str:
    return f"http://{head_service_fqdn(pool_name, namespace)}:{DASHBOARD_PORT}"


def prefect_worker_deployment(pool_name: str) -> str:
    return f"{pool_name}-prefect-worker"


def kuberay_worker(pool_name: str) -> str:
    """The ServiceAccount and RoleBinding of an Ephemeral pool's `kuberay` worker."""
    return f"{pool_name}-kuberay-worker"


#: The ClusterRole holding the `kuberay` worker's rights (its contract's WORKER_RULES),
#: which each Ephemeral pool's RoleBinding grants in the pool's namespace. The operator
#: chart installs it as `<release>-kuberay-worker` and says so in
#: RAYPOOL_KUBERAY_WORKER_CLUSTER_ROLE; this name is for an operator run without the
#: chart (the test bed installs it).
KUBERAY_WORKER_CLUSTER_ROLE = "prefect-raypool-kuberay-worker"


def ray_token_secret(pool_name: str) -> str:
    return f"{pool_name}-ray-token"


def network_policy(pool_name: str) -> str:
    return f"{pool_name}-ray-head"


def head_disruption_budget(pool_name: str) -> str:
    return f"{pool_name}-ray-head"


def worker_disruption_budget(pool_name: str) -> str:
    return f"{pool_name}-prefect-worker"


#: The operator chart's pod label, which pools' NetworkPolicies admit.
OPERATOR_POD_LABELS = {COMPONENT_LABEL: "operator"}
#: What KubeRay's own manifests and Helm chart label its operator's pods with.
KUBERAY_OPERATOR_POD_LABELS = {"app.kubernetes.io/component": "kuberay-operator"}


def work_pool_name(pool_name: str, spec: PrefectRayPoolSpec) -> str:
    return spec.prefect.workPool.name or pool_name


def labels(pool_name: str, component: str) -> dict[str, str]:
    """Labels on every generated object; selectors use the first two."""
    return {
        POOL_LABEL: pool_name,
        COMPONENT_LABEL: component,
        MANAGED_BY_LABEL: MANAGED_BY,
        "app.kubernetes.io/name": "prefect-raypool",
        "app.kubernetes.io/instance": pool_name,
    }


def selector(pool_name: str, component: str) -> dict[str, str]:
    return {POOL_LABEL: pool_name, COMPONENT_LABEL: component}
