"""The NetworkPolicy `<pool>-ray-head`: who may reach the pool's pods.

It selects every pod of the pool: the Ray head, the Ray workers (whose raylets and
object managers take connections from every other node) and the Prefect workers
(zero-capacity Ray nodes). The pool's own pods reach each other on every port. The
operator's pods reach GCS, the Ray client and the dashboard. For an Ephemeral pool,
KubeRay's operator reaches the dashboard, where it reads each RayJob's status (where
the installer names KubeRay's namespace). Nothing else does,
whatever the cluster's default; other policies can add to this one. (The name is the
one it had when it selected the head only: renaming would delete and re-create it.)
"""

from __future__ import annotations

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders.common import Obj, object_metadata

COMPONENT = "network-policy"
OPERATOR_PORTS = (naming.GCS_PORT, naming.CLIENT_PORT, naming.DASHBOARD_PORT)
KUBERAY_PORTS = (naming.DASHBOARD_PORT,)


def build_network_policy(
    pool_name: str,
    namespace: str,
    operator_namespace: str | None,
    kuberay_namespace: str | None = None,
) -> Obj:
    """`operator_namespace` None (an operator outside the cluster): no operator rule.
    `kuberay_namespace` None (a warm pool, or KubeRay's namespace unknown): no KubeRay
    rule."""
    ingress: list[Obj] = [{"from": [{"podSelector": {"matchLabels": pool_pods(pool_name)}}]}]
    if operator_namespace:
        ingress.append(_pods_of(operator_namespace, naming.OPERATOR_POD_LABELS, OPERATOR_PORTS))
    if kuberay_namespace:
        ingress.append(
            _pods_of(kuberay_namespace, naming.KUBERAY_OPERATOR_POD_LABELS, KUBERAY_PORTS)
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": object_metadata(
            naming.network_policy(pool_name), namespace, pool_name, COMPONENT
        ),
        "spec": {
            "podSelector": {"matchLabels": pool_pods(pool_name)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }


def _pods_of(namespace: str, labels: dict[str, str], ports: tuple[int, ...]) -> Obj:
    """Pods with `labels` in `namespace` only (a namespace's name label is set by the API
    server: a pod author elsewhere cannot pass for it), on `ports`."""
    return {
        "from": [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "podSelector": {"matchLabels": dict(labels)},
            }
        ],
        "ports": [{"protocol": "TCP", "port": port} for port in ports],
    }


def pool_pods(pool_name: str) -> dict[str, str]:
    """Every pod of the pool carries its pool label (builders.common.pod_metadata)."""
    return {naming.POOL_LABEL: pool_name}
