"""Proof that the test bed is a real Kubernetes with a real KubeRay operator."""

from __future__ import annotations

import os

import pytest
from kubernetes import client

from testbed.binaries import VERSIONS
from testbed.cluster import Cluster, get_or_none
from testbed.waiting import eventually

pytestmark = pytest.mark.controlplane


RAYCLUSTER = {
    "apiVersion": "ray.io/v1",
    "kind": "RayCluster",
    "metadata": {"name": "bed"},
    "spec": {
        "rayVersion": "2.60.0",
        "headGroupSpec": {
            "rayStartParams": {},
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "ray-head",
                            "image": "rayproject/ray:2.60.0",
                            "resources": {"limits": {"cpu": "1", "memory": "2Gi"}},
                        }
                    ]
                }
            },
        },
        "workerGroupSpecs": [
            {
                "groupName": "cpu",
                "replicas": 1,
                "minReplicas": 0,
                "maxReplicas": 2,
                "rayStartParams": {},
                "template": {
                    "spec": {
                        "containers": [
                            {
                                "name": "ray-worker",
                                "image": "rayproject/ray:2.60.0",
                                "resources": {"limits": {"cpu": "1", "memory": "2Gi"}},
                            }
                        ]
                    }
                },
            }
        ],
    },
}


def test_kuberay_reconciles_a_raycluster_to_ready(kube_cluster: Cluster, namespace: str) -> None:
    api = kube_cluster.api_client()
    custom = client.CustomObjectsApi(api)
    core = client.CoreV1Api(api)
    custom.create_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", RAYCLUSTER)

    # The real KubeRay operator creates the head service and the pods ...
    svc = eventually(
        lambda: get_or_none(core.read_namespaced_service, "bed-head-svc", namespace),
        what="KubeRay to create bed-head-svc",
    )
    assert {p.port for p in svc.spec.ports} >= {6379, 8265, 10001}

    def running_pods() -> list[client.V1Pod]:
        pods = core.list_namespaced_pod(namespace, label_selector="ray.io/cluster=bed").items
        return pods if len(pods) == 2 and all(p.status.phase == "Running" for p in pods) else []

    pods = eventually(running_pods, what="head and worker pods Running")
    # ... the scheduler binds them to the simulated node, which kwok reports Running.
    assert {p.spec.node_name for p in pods} == {"kwok-node-0"}
    head = next(p for p in pods if p.metadata.labels["ray.io/node-type"] == "head")
    assert head.spec.containers[0].name == "ray-head"

    def state() -> str | None:
        rc = custom.get_namespaced_custom_object("ray.io", "v1", namespace, "rayclusters", "bed")
        return rc.get("status", {}).get("state") == "ready" and rc

    rc = eventually(state, what="RayCluster status.state == ready")
    conditions = {c["type"]: c["status"] for c in rc["status"].get("conditions", [])}
    assert conditions.get("HeadPodReady") == "True"
    assert rc["status"]["readyWorkerReplicas"] == 1


def test_deployment_gets_replicaset_and_pods(kube_cluster: Cluster, namespace: str) -> None:
    api = kube_cluster.api_client()
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    labels = {"app": "web"}
    apps.create_namespaced_deployment(
        namespace,
        client.V1Deployment(
            metadata=client.V1ObjectMeta(name="web"),
            spec=client.V1DeploymentSpec(
                replicas=3,
                selector=client.V1LabelSelector(match_labels=labels),
                template=client.V1PodTemplateSpec(
                    metadata=client.V1ObjectMeta(labels=labels),
                    spec=client.V1PodSpec(
                        containers=[client.V1Container(name="web", image="nginx:1.27")]
                    ),
                ),
            ),
        ),
    )
    rs = eventually(
        lambda: apps.list_namespaced_replica_set(namespace, label_selector="app=web").items,
        what="the deployment controller to create a ReplicaSet",
    )
    assert rs[0].metadata.owner_references[0].name == "web"
    eventually(
        lambda: (apps.read_namespaced_deployment("web", namespace).status.ready_replicas or 0) == 3,
        what="3 ready replicas",
    )
    pods = core.list_namespaced_pod(namespace, label_selector="app=web").items
    assert len(pods) == 3 and all(p.status.phase == "Running" for p in pods)


def test_deleting_an_owner_garbage_collects_dependents(
    kube_cluster: Cluster, namespace: str
) -> None:
    core = client.CoreV1Api(kube_cluster.api_client())
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"))
    )
    ref = client.V1OwnerReference(
        api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid
    )
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[ref])),
    )
    core.delete_namespaced_config_map("owner", namespace, propagation_policy="Background")
    eventually(
        lambda: get_or_none(core.read_namespaced_config_map, "dependent", namespace) is None,
        what="the garbage collector to delete the dependent",
    )


def test_api_server_reports_its_release_version(kube_cluster: Cluster) -> None:
    """Charts gate on it (`kubeVersion: >=1.30`): a build without the version stamped
    reports v0.0.0 and `helm install` refuses every chart."""
    if os.environ.get("PREFECT_RAYPOOL_CLUSTER", "kwok") != "kwok":
        pytest.skip("checks the locally built kube-apiserver")
    info = client.VersionApi(kube_cluster.api_client()).get_code()
    assert info.git_version == VERSIONS["K8S_VERSION"]
    assert (info.major, info.minor) == ("1", VERSIONS["K8S_VERSION"].split(".")[1])
