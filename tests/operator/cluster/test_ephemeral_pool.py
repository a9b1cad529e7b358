"""An Ephemeral pool on the real API server, KubeRay and Prefect server (kwok node):
a `kuberay` worker under a namespaced Role, a `kuberay` work pool whose template
defaults follow the spec, and its flow-run clusters counted in status."""

from __future__ import annotations

import subprocess
from typing import Any

import httpx
import pytest
from kubernetes import client

from prefect_raypool_kuberay.contract import WORKER_RULES
from prefect_raypool_operator.naming import KUBERAY_WORKER_CLUSTER_ROLE
from testbed.cluster import Cluster
from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually

pytestmark = pytest.mark.controlplane


def _can_i(cluster: Cluster, account: str, *args: str) -> bool:
    out = subprocess.run(
        [cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", "auth", "can-i"]
        + [*args, f"--as={account}"],
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


def _rayjob(name: str, work_pool: str) -> dict[str, Any]:
    """A RayJob as the worker labels it; suspended, so KubeRay makes no cluster."""
    container = {"name": "ray-head", "image": "rayproject/ray:2.60.0"}
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name, "labels": {"prefect.io/work-pool-name": work_pool}},
        "spec": {
            "entrypoint": "python -c 'print(1)'",
            "suspend": True,
            "rayClusterSpec": {
                "headGroupSpec": {
                    "rayStartParams": {},
                    "template": {"spec": {"containers": [container]}},
                }
            },
        },
    }


def _printed(env: PoolDriver, pool: str, column: str) -> str:
    """One column of `kubectl get prp POOL` (by position: empty cells print as blanks)."""
    header, row = env.kubectl("get", "prp", pool, "-n", env.namespace).splitlines()[:2]
    start = header.index(column)
    return row[start:].split()[0]


def test_an_ephemeral_pool_runs_a_kuberay_worker_with_only_its_rights(
    env: PoolDriver, kube_cluster: Cluster
) -> None:
    doc = env.example("ephemeral.yaml")
    doc["spec"]["pod"] = {"serviceAccountName": "ray-pods"}
    work_pool = doc["spec"]["prefect"]["workPool"]["name"]
    env.apply(doc)
    env.wait_condition("nightly", "Ready", "True")
    pool = env.pool("nightly") or {}
    status = pool["status"]
    assert status["phase"] == "Ready" and status["flowRunClusters"] == 0
    assert "RayClusterReady" not in {c["type"] for c in status["conditions"]}
    assert env.raycluster("nightly") is None

    # The work pool, as the real Prefect server holds it.
    answer = httpx.get(f"{env.prefect_api_url}/work_pools/{work_pool}", timeout=10)
    answer.raise_for_status()
    found = answer.json()
    assert found["type"] == "kuberay"
    props = found["base_job_template"]["variables"]["properties"]
    defaults = {k: props[k].get("default") for k in props}
    assert {
        "image": defaults["image"],
        "namespace": defaults["namespace"],
        "service_account_name": defaults["service_account_name"],
        "ray_version": defaults["ray_version"],
        "head_cpu": defaults["head_cpu"],
        "head_memory": defaults["head_memory"],
        "worker_cpu": defaults["worker_cpu"],
        "worker_memory": defaults["worker_memory"],
        "worker_replicas": defaults["worker_replicas"],
        "env": defaults["env"],
    } == {
        "image": env.apps.read_namespaced_deployment("nightly-prefect-worker", env.namespace)
        .spec.template.spec.containers[0]
        .image,
        "namespace": env.namespace,
        "service_account_name": "ray-pods",
        "ray_version": "2.60.0",
        "head_cpu": "500m",
        "head_memory": "2Gi",
        "worker_cpu": "500m",
        "worker_memory": "2Gi",
        "worker_replicas": 1,
        "env": {"PREFECT_LOGGING_LEVEL": "INFO"},
    }
    assert "rayjob_manifest" in found["base_job_template"]["job_configuration"]

    # The worker's account and exactly its rights, in this namespace only.
    api = env.api
    rbac = client.RbacAuthorizationV1Api(api)
    binding = rbac.read_namespaced_role_binding("nightly-kuberay-worker", env.namespace)
    role_ref = (binding.role_ref.kind, binding.role_ref.name)
    assert role_ref == (
        "ClusterRole",
        KUBERAY_WORKER_CLUSTER_ROLE,
    )  # the test bed's, as the chart's
    role = rbac.read_cluster_role(KUBERAY_WORKER_CLUSTER_ROLE)
    assert api.sanitize_for_serialization(role.rules) == WORKER_RULES
    assert env.core.read_namespaced_service_account("nightly-kuberay-worker", env.namespace)
    deployment = env.apps.read_namespaced_deployment("nightly-prefect-worker", env.namespace)
    pod = deployment.spec.template.spec
    assert pod.service_account_name == "nightly-kuberay-worker"
    assert pod.containers[0].command[-3:] == ["--type", "kuberay", "--with-healthcheck"]
    account = f"system:serviceaccount:{env.namespace}:nightly-kuberay-worker"
    assert _can_i(kube_cluster, account, "create", "rayjobs.ray.io", "-n", env.namespace)
    assert _can_i(kube_cluster, account, "delete", "rayjobs.ray.io", "-n", env.namespace)
    assert _can_i(kube_cluster, account, "get", "pods", "--subresource=log", "-n", env.namespace)
    assert not _can_i(kube_cluster, account, "list", "secrets", "-n", env.namespace)
    assert not _can_i(kube_cluster, account, "patch", "rayjobs.ray.io", "-n", env.namespace)
    assert not _can_i(kube_cluster, account, "create", "rayclusters.ray.io", "-n", env.namespace)
    assert not _can_i(kube_cluster, account, "create", "rayjobs.ray.io", "-n", "default")
    assert not _can_i(kube_cluster, account, "list", "rayjobs.ray.io", "--all-namespaces")

    # A flow-run cluster (the worker's RayJob, made by hand here) is counted.
    custom = client.CustomObjectsApi(api)
    custom.create_namespaced_custom_object(
        "ray.io", "v1", env.namespace, "rayjobs", _rayjob("flow-run-a1b2c", work_pool)
    )
    custom.create_namespaced_custom_object(
        "ray.io", "v1", env.namespace, "rayjobs", _rayjob("other-pool-run", "someone-else")
    )
    eventually(
        lambda: ((env.pool("nightly") or {}).get("status") or {}).get("flowRunClusters") == 1,
        timeout=30,
        what="flowRunClusters 1",
    )
    assert _printed(env, "nightly", "CLUSTERS") == "1"


# The process work pool cannot become a kuberay one, until the test renames it.
@pytest.mark.operator_log_allows(r"WorkPoolTypeMismatch")
def test_switching_a_pool_to_ephemeral_deletes_its_ray_cluster(env: PoolDriver) -> None:
    doc = env.example("zero-capacity.yaml")
    env.apply(doc)
    eventually(lambda: env.raycluster("analytics"), what="the RayCluster")
    doc["spec"]["placement"] = "Ephemeral"
    env.apply(doc)
    eventually(lambda: env.raycluster("analytics") is None, timeout=60, what="no RayCluster")
    # The process work pool cannot become a kuberay one: the status names the fix.
    message = env.wait_condition("analytics", "WorkPoolReady", "False", "WorkPoolTypeMismatch")
    assert "spec.prefect.workPool.name" in message["message"]
    doc["spec"]["prefect"]["workPool"]["name"] = env.work_pool_name("analytics-ephemeral")
    env.apply(doc)
    env.wait_condition("analytics", "Ready", "True")
    status = (env.pool("analytics") or {})["status"]
    assert status.get("rayCluster") is None and status["flowRunClusters"] == 0
    deployment = env.apps.read_namespaced_deployment("analytics-prefect-worker", env.namespace)
    command = deployment.spec.template.spec.containers[0].command
    assert command[-5:] == ["--type", "kuberay", "--work-queue", "default", "--with-healthcheck"]
