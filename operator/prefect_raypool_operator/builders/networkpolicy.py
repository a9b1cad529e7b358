"""The NetworkPolicy `<pool>-ray-head`: who may reach the pool's pods.

It selects every pod of the pool: the Ray head, the Ray workers (whose raylets and
object managers take connections from every other node) and the Prefect workers
(zero-capacity Ray nodes). The pool's own pods reach each other on every port. The
operator's pods reach GCS, the Ray client and the dashboard. Nothing else does,
whatever the cluster's default; other policies can add to this one. (The name is the
one it had when it selected the head only: renaming would delete and re-create it.)
"""

from __future__ import annotations

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders.common import Obj, object_metadata

COMPONENT = "network-policy"
OPERATOR_PORTS = (naming.GCS_PORT, naming.CLIENT_PORT, naming.DASHBOARD_PORT)


def build_network_policy(pool_name: str, namespace: str, operator_namespace: str | None) -> Obj:
    """`operator_namespace` None (an operator outside the cluster): no operator rule."""
    ingress: list[Obj] = [{"from": [{"podSelector": {"matchLabels": pool_pods(pool_name)}}]}]
    if operator_namespace:
        ingress.append(
            {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchLabels": {"kubernetes.io/metadata.name": operator_namespace}
                        },
                        "podSelector": {"matchLabels": dict(naming.OPERATOR_POD_LABELS)},
                    }
                ],
                "ports": [{"protocol": "TCP", "port": port} for port in OPERATOR_PORTS],
            }
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


def pool_pods(pool_name: str) -> dict[str, str]:
    """Every pod of the pool carries its pool label (builders.common.pod_metadata)."""
    return {naming.POOL_LABEL: pool_name}
