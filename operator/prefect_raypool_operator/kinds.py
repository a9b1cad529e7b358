"""API coordinates, named once: the PrefectRayPool's own and those of the kinds it owns."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def resource(self) -> tuple[str, str, str]:
        """(group, version, plural): what kopf's decorators and the API paths take."""
        return (self.group, self.version, self.plural)


GROUP = "prefectray.io"
VERSION = "v1alpha1"
PLURAL = "prefectraypools"
SINGULAR = "prefectraypool"
SHORT_NAME = "prp"

POOL = Kind(GROUP, VERSION, PLURAL, "PrefectRayPool")
RAY_CLUSTER = Kind("ray.io", "v1", "rayclusters", "RayCluster")
DEPLOYMENT = Kind("apps", "v1", "deployments", "Deployment")
NETWORK_POLICY = Kind("networking.k8s.io", "v1", "networkpolicies", "NetworkPolicy")
POD_DISRUPTION_BUDGET = Kind("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget")
SERVICE_ACCOUNT = Kind("", "v1", "serviceaccounts", "ServiceAccount")
CLUSTER_ROLE = Kind("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole")
ROLE_BINDING = Kind("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding")
RAY_JOB = Kind("ray.io", "v1", "rayjobs", "RayJob")
POD = Kind("", "v1", "pods", "Pod")
