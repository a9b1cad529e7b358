"""Bad input refused by the API server itself (CRD schema and CEL), naming the field."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import yaml
from kubernetes import client

from prefect_raypool_operator.kinds import GROUP, PLURAL, VERSION
from testbed.cluster import Cluster

pytestmark = pytest.mark.controlplane


GOOD: dict[str, Any] = {
    "apiVersion": "prefectray.io/v1alpha1",
    "kind": "PrefectRayPool",
    "metadata": {"name": "bad"},
    "spec": {"prefect": {"apiUrl": "http://prefect:4200/api"}},
}


def _bad(mutate: Any) -> dict[str, Any]:
    doc = copy.deepcopy(GOOD)
    mutate(doc)
    return doc


GROUP_OK = {"name": "cpu", "replicas": 1}
BAD = {
    "unknown placement": (
        _bad(lambda d: d["spec"].update(placement="Laptop")),
        'spec.placement: Unsupported value: "Laptop"',
    ),
    "negative replicas": (
        _bad(lambda d: d["spec"].update(ray={"workerGroups": [{**GROUP_OK, "replicas": -1}]})),
        "spec.ray.workerGroups[0].replicas",
    ),
    "min above max": (
        _bad(
            lambda d: d["spec"].update(
                ray={"workerGroups": [{**GROUP_OK, "minReplicas": 3, "maxReplicas": 2}]}
            )
        ),
        "minReplicas must not exceed maxReplicas",
    ),
    "missing Prefect API URL": (
        _bad(lambda d: d["spec"].update(prefect={"replicas": 1})),
        "spec.prefect.apiUrl: Required value",
    ),
    "API key as a literal string": (
        _bad(lambda d: d["spec"]["prefect"].update(apiKey="pnu_literal_key")),
        "spec.prefect.apiKey",
    ),
    "GPU request no group can hold": (
        _bad(lambda d: d["spec"].update(ray={"taskResources": {"gpu": 2}})),
        "spec.ray.taskResources.gpu",
    ),
    "name starting with a digit": (
        _bad(lambda d: d["metadata"].update(name="1pool")),
        "metadata.name must be a DNS-1035 label",
    ),
    "name too long": (
        _bad(lambda d: d["metadata"].update(name="p" * 45)),
        "metadata.name must be a DNS-1035 label",
    ),
    "sidecar with two workers": (
        _bad(
            lambda d: d["spec"].update(
                placement="HeadSidecar", prefect={"apiUrl": "http://p/api", "replicas": 2}
            )
        ),
        "spec.prefect.replicas",
    ),
    "sidecar with externally managed replicas": (
        _bad(
            lambda d: d["spec"].update(
                placement="HeadSidecar",
                prefect={"apiUrl": "http://p/api", "replicasManagedExternally": True},
            )
        ),
        "spec.prefect.replicasManagedExternally: Invalid value",
    ),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_api_server_rejects_bad_input_naming_the_field(
    kube_cluster: Cluster, pool_crd: None, namespace: str, case: str
) -> None:
    doc, expected = BAD[case]
    out = kube_cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", stdin=yaml.safe_dump(doc), check=False
    )
    assert expected in out, out
    assert "created" not in out


def test_api_server_accepts_the_minimal_pool_and_fills_defaults(
    kube_cluster: Cluster, pool_crd: None, namespace: str
) -> None:
    # A server-side dry run: the API server defaults the pool as it would store it, and
    # no pool is left for the session's operator to reconcile, then fail to release
    # against a Prefect URL nothing serves (an ERROR blamed on a later test).
    custom = client.CustomObjectsApi(kube_cluster.api_client())
    pool = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, copy.deepcopy(GOOD), dry_run="All"
    )
    assert not custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"]
    spec = pool["spec"]
    assert spec["placement"] == "ZeroCapacityNode"
    assert spec["ray"]["version"] == "2.60.0" and spec["ray"]["auth"]["mode"] == "token"
    assert spec["ray"]["workerGroups"][0] == {
        "name": "workers",
        "replicas": 1,
        "minReplicas": 0,
        "podsPerFlowRun": 1,
        "resources": {"cpu": 1, "memory": "2Gi", "gpu": 0},
    }
    assert spec["prefect"]["resources"]["cpu"] == "500m"
