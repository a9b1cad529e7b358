"""A pool's life on the real control plane with the real KubeRay operator: Ready,
roll-outs, drift, deletion, what blocks it, the operator killed mid-reconcile.

A session-wide operator process (tests/operator/conftest.py: all `t-*` namespaces,
3 s resync) and a real Prefect server; each test applies pools in its own namespace."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client

from prefect_raypool_operator import naming
from prefect_raypool_operator.kinds import GROUP, PLURAL, VERSION
from testbed import REPO
from testbed.cluster import Cluster, get_or_none
from testbed.operator_log import OwnOperators
from testbed.operator_process import OperatorProcess
from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually

pytestmark = pytest.mark.controlplane


def test_zero_capacity_pool_becomes_ready(env: PoolDriver) -> None:
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["ray"]["workerGroups"][0]["replicas"] = 2  # kwok's node has room
    env.apply(doc)
    rc = eventually(lambda: env.raycluster("analytics"), what="the RayCluster")
    pool = env.pool("analytics")
    assert pool is not None
    owner = rc["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "PrefectRayPool",
        "analytics",
        pool["metadata"]["uid"],
    )
    assert rc["spec"]["rayVersion"] == "2.60.0"
    [group] = rc["spec"]["workerGroupSpecs"]
    assert (group["groupName"], group["replicas"], group["maxReplicas"]) == ("cpu", 2, 4)
    # KubeRay did its part: head service and head pod.
    svc = eventually(
        lambda: get_or_none(env.core.read_namespaced_service, "analytics-head-svc", env.namespace),
        what="KubeRay's head service",
    )
    assert 6379 in {p.port for p in svc.spec.ports}
    head = env.head_pod("analytics")
    env_names = {e.name for e in head.spec.containers[0].env}
    assert {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"} <= env_names
    deployment = eventually(
        lambda: get_or_none(
            env.apps.read_namespaced_deployment, "analytics-prefect-worker", env.namespace
        ),
        what="the worker Deployment",
    )
    assert deployment.metadata.owner_references[0].name == "analytics"
    token = env.core.read_namespaced_secret("analytics-ray-token", env.namespace)
    assert token.metadata.owner_references[0].name == "analytics"

    env.wait_condition("analytics", "Ready", "True")
    pool = env.pool("analytics")
    assert pool is not None
    status = pool["status"]
    assert status["phase"] == "Ready"
    assert status["observedGeneration"] == pool["metadata"]["generation"]
    assert status["headService"] == f"analytics-head-svc.{env.namespace}.svc"
    assert status["readyWorkerReplicas"] == 2
    for kind in ("RayClusterReady", "WorkerReady", "WorkPoolReady"):
        assert env.condition("analytics", kind)["status"] == "True"
    work_pool = httpx.get(
        f"{env.prefect_api_url}/work_pools/{env.work_pool_name('analytics')}", timeout=10
    ).json()
    assert work_pool["concurrency_limit"] == 10 and work_pool["type"] == "process"
    env.wait_events(
        "analytics", lambda es: {e.reason for e in es} >= {"Created", "Ready"}, "Created, Ready"
    )
    printed = env.kubectl("get", "prp", "-n", env.namespace)
    assert "analytics" in printed and "Ready" in printed and "ZeroCapacityNode" in printed


def test_head_sidecar_pool(env: PoolDriver) -> None:
    env.apply(env.example("head-sidecar.yaml"))
    head = env.head_pod("reports")
    names = [c.name for c in head.spec.containers]
    assert names[0] == "ray-head" and "prefect-worker" in names
    sidecar = head.spec.containers[names.index("prefect-worker")]
    assert {"RAY_ADDRESS": "reports-head-svc:6379"}.items() <= {
        e.name: e.value for e in sidecar.env
    }.items()
    assert {m.mount_path for m in sidecar.volume_mounts} >= {"/tmp/ray"}
    env.wait_condition("reports", "Ready", "True")
    assert (
        get_or_none(env.apps.read_namespaced_deployment, "reports-prefect-worker", env.namespace)
        is None
    )
    limit = httpx.get(
        f"{env.prefect_api_url}/work_pools/{env.work_pool_name('reports-ray')}", timeout=10
    ).json()
    assert limit["concurrency_limit"] == 4


def test_spec_changes_roll_out(env: PoolDriver) -> None:
    doc = env.example("zero-capacity.yaml")
    env.apply(doc)
    env.wait_condition("analytics", "Ready", "True")
    doc["spec"]["ray"]["workerGroups"][0]["replicas"] = 3
    doc["spec"]["prefect"]["image"] = "team/flows:2.60.0-py311"
    doc["spec"]["prefect"]["workPool"]["concurrencyLimit"] = 7
    env.apply(doc)

    def rolled() -> bool:
        rc = env.raycluster("analytics") or {}
        dep = env.apps.read_namespaced_deployment("analytics-prefect-worker", env.namespace)
        return (
            rc["spec"]["workerGroupSpecs"][0]["replicas"] == 3
            and dep.spec.template.spec.containers[0].image == "team/flows:2.60.0-py311"
        )

    eventually(rolled, what="replicas and worker image rolled out")
    eventually(
        lambda: (
            httpx.get(
                f"{env.prefect_api_url}/work_pools/{env.work_pool_name('analytics')}", timeout=10
            ).json()["concurrency_limit"]
            == 7
        ),
        what="the work pool limit to follow the spec",
    )
    pool = env.pool("analytics")
    assert pool is not None
    eventually(
        lambda: (
            (env.pool("analytics") or {}).get("status", {}).get("observedGeneration")
            == pool["metadata"]["generation"]
        ),
        what="observedGeneration to catch up",
    )


def test_drift_is_repaired(env: PoolDriver) -> None:
    env.apply(env.example("zero-capacity.yaml"))
    env.wait_condition("analytics", "Ready", "True")
    env.apps.delete_namespaced_deployment("analytics-prefect-worker", env.namespace)
    eventually(
        lambda: get_or_none(
            env.apps.read_namespaced_deployment, "analytics-prefect-worker", env.namespace
        ),
        what="the deleted Deployment to be put back",
    )
    env.custom.patch_namespaced_custom_object(
        "ray.io",
        "v1",
        env.namespace,
        "rayclusters",
        "analytics",
        [{"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 3}],
        _content_type="application/json-patch+json",
    )
    eventually(  # the hand edit really landed (by another field manager) ...
        lambda: any(
            f.get("manager") != naming.FIELD_MANAGER
            for f in (env.raycluster("analytics") or {})["metadata"]["managedFields"]
        ),
        what="the hand edit",
    )
    eventually(
        lambda: (env.raycluster("analytics") or {})["spec"]["workerGroupSpecs"][0]["replicas"] == 0,
        what="the hand-edited replicas to be put back",
    )
    env.custom.delete_namespaced_custom_object(
        "ray.io", "v1", env.namespace, "rayclusters", "analytics"
    )
    eventually(
        lambda: (
            (env.raycluster("analytics") or {}).get("metadata", {}).get("deletionTimestamp") is None
            and env.raycluster("analytics")
        ),
        what="the deleted RayCluster to be put back",
    )
    env.wait_condition("analytics", "Ready", "True")


def test_deleting_the_pool_cascades(env: PoolDriver) -> None:
    env.apply(env.example("zero-capacity.yaml"))
    eventually(lambda: env.raycluster("analytics"), what="the RayCluster")
    eventually(
        lambda: get_or_none(
            env.apps.read_namespaced_deployment, "analytics-prefect-worker", env.namespace
        ),
        what="the Deployment",
    )
    env.custom.delete_namespaced_custom_object(GROUP, VERSION, env.namespace, PLURAL, "analytics")
    eventually(lambda: env.pool("analytics") is None, what="the pool to be deleted")
    eventually(
        lambda: (
            env.raycluster("analytics") is None
            and get_or_none(
                env.apps.read_namespaced_deployment, "analytics-prefect-worker", env.namespace
            )
            is None
            and get_or_none(env.core.read_namespaced_secret, "analytics-ray-token", env.namespace)
            is None
        ),
        what="owned objects garbage-collected",
    )


# The pool waits for its Secret: kopf logs each retry at ERROR.
@pytest.mark.operator_log_allows(r"SecretNotFound: spec.prefect.apiKey")
def test_missing_secret_blocks_until_created(env: PoolDriver) -> None:
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["prefect"]["apiKey"] = {"secretKeyRef": {"name": "prefect-api", "key": "key"}}
    env.apply(doc)
    cond = env.wait_condition("analytics", "Ready", "False", "SecretNotFound")
    assert "spec.prefect.apiKey" in cond["message"] and "prefect-api" in cond["message"]
    time.sleep(4)  # at least one resync later: still nothing half-created
    assert env.raycluster("analytics") is None
    assert (
        get_or_none(env.core.read_namespaced_secret, "analytics-ray-token", env.namespace) is None
    )
    assert (env.pool("analytics") or {})["status"]["phase"] == "Pending"
    env.wait_events(
        "analytics",
        lambda es: any(e.type == "Warning" and e.reason == "SecretNotFound" for e in es),
        "a SecretNotFound Warning",
    )
    env.core.create_namespaced_secret(
        env.namespace,
        client.V1Secret(metadata=client.V1ObjectMeta(name="prefect-api"), string_data={"key": "k"}),
    )
    env.wait_condition("analytics", "Ready", "True")


# Prefect is unreachable on purpose, also when the namespace's deletion releases the work pool.
@pytest.mark.operator_log_allows(r"PrefectAPIUnreachable")
def test_unreachable_prefect_api_is_a_false_condition(
    env: PoolDriver, raypool_operator: OperatorProcess, dead_prefect_url: str
) -> None:
    """The status says only that no usable answer came (a pool author must not map the
    cluster's network through it); the operator's log says why."""
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["prefect"]["apiUrl"] = dead_prefect_url
    env.apply(doc)
    cond = env.wait_condition("analytics", "WorkPoolReady", "False", "PrefectAPIUnreachable")
    assert "got no usable answer from the Prefect API" in cond["message"]
    assert "connect" not in cond["message"]
    log = raypool_operator.log.read_text(errors="replace")
    assert f"{env.namespace}/analytics: the Prefect API at {dead_prefect_url}: cannot reach" in log
    env.wait_condition("analytics", "RayClusterReady", "True")  # the rest still reconciles
    assert env.condition("analytics", "Ready")["status"] == "False"
    assert raypool_operator.proc is not None and raypool_operator.proc.poll() is None  # no crash


# A refused spec: kopf logs the permanent failure at ERROR.
@pytest.mark.operator_log_allows(r"RayVersionMismatch")
def test_ray_version_mismatch_fails_without_creating_anything(env: PoolDriver) -> None:
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["ray"]["image"] = "rayproject/ray:2.59.0-py311"
    env.apply(doc)
    cond = env.wait_condition("analytics", "Ready", "False", "RayVersionMismatch")
    assert "spec.ray.image" in cond["message"]
    assert (env.pool("analytics") or {})["status"]["phase"] == "Failed"
    assert env.raycluster("analytics") is None


def test_operator_killed_mid_reconcile_leaves_no_duplicates(
    env: PoolDriver, raypool_operator: OperatorProcess
) -> None:
    env.apply(env.example("zero-capacity.yaml"))
    eventually(lambda: env.raycluster("analytics"), timeout=30, what="the RayCluster")
    raypool_operator.kill()
    try:
        doc = env.example("zero-capacity.yaml")
        doc["spec"]["ray"]["workerGroups"][0]["replicas"] = 1
        env.apply(doc)  # a change made while no operator runs
    finally:
        raypool_operator.start()
    env.wait_condition("analytics", "Ready", "True")
    eventually(
        lambda: (env.raycluster("analytics") or {})["spec"]["workerGroupSpecs"][0]["replicas"] == 1,
        what="the change made during the outage to be applied",
    )
    selector = f"{naming.POOL_LABEL}=analytics"
    clusters = env.custom.list_namespaced_custom_object(
        "ray.io", "v1", env.namespace, "rayclusters", label_selector=selector
    )["items"]
    deployments = env.apps.list_namespaced_deployment(env.namespace, label_selector=selector).items
    secrets = env.core.list_namespaced_secret(env.namespace, label_selector=selector).items
    assert (len(clusters), len(deployments), len(secrets)) == (1, 1, 1)


def test_one_event_per_transition_across_resyncs(env: PoolDriver) -> None:
    """Reconciles read from the watch cache, which may lag behind our own status
    writes: Events must still be posted once per transition, and kopf's per-handler
    chatter not at all (the operator runs with a 3 s resync here)."""
    env.apply(env.example("zero-capacity.yaml"))
    env.wait_condition("analytics", "Ready", "True")
    time.sleep(8)  # two resyncs and the owned objects' status updates
    events = env.events("analytics")
    ready = [e for e in events if e.reason == "Ready"]
    assert len(ready) == 1 and sum(e.count or 1 for e in ready) == 1, ready
    created = sorted(
        name
        for e in events
        if e.reason == "Created"
        for name in (e.message or "").removeprefix("created ").split(", ")
    )
    assert created == [
        "Deployment/analytics-prefect-worker",
        "NetworkPolicy/analytics-ray-head",
        "PodDisruptionBudget/analytics-prefect-worker",
        "PodDisruptionBudget/analytics-ray-head",
        "RayCluster/analytics",
        "Secret/analytics-ray-token",
    ], created
    assert not [e for e in events if (e.message or "").startswith("Handler ")]


def test_liveness_endpoint_reports_reconciles(
    env: PoolDriver, raypool_operator: OperatorProcess
) -> None:
    env.apply(env.example("zero-capacity.yaml"))
    eventually(lambda: env.condition("analytics", "Ready"), what="a first status")
    time.sleep(11)  # kopf caches probe results for 10 s
    with urllib.request.urlopen(raypool_operator.health_url, timeout=5) as resp:
        body = json.load(resp)
    assert body["reconcile"]["pools"] >= 1
    assert body["reconcile"]["last_reconcile_age_s"] < 30


@pytest.mark.parametrize("strategy", ["DrainThenReplace", "OnDelete"])
def test_switching_placement_moves_the_worker_into_the_head_pod(
    env: PoolDriver, strategy: str
) -> None:
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["ray"]["updateStrategy"] = {"type": strategy}
    env.apply(doc)
    env.wait_condition("analytics", "Ready", "True")
    head = env.head_pod("analytics").metadata.name
    doc["spec"]["placement"] = "HeadSidecar"
    env.apply(doc)

    def moved() -> bool:
        rc = env.raycluster("analytics") or {}
        containers = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
        gone = (
            get_or_none(
                env.apps.read_namespaced_deployment, "analytics-prefect-worker", env.namespace
            )
            is None
        )
        return gone and [c["name"] for c in containers] == ["ray-head", "prefect-worker"]

    eventually(moved, what="the Deployment removed and the sidecar added")
    if strategy == "DrainThenReplace":
        # Once the old worker pods are gone, the pool replaces the head: it has the sidecar.
        env.wait_condition("analytics", "Ready", "True", timeout=120)
        containers = env.head_pod("analytics").spec.containers
        assert [c.name for c in containers] == ["ray-head", "prefect-worker"]
        assert env.head_pod("analytics").metadata.name != head
        assert "RayRolloutReplacing" in {e.reason for e in env.events("analytics")}
        return
    # KubeRay keeps the running head, without the sidecar: the pool says so, and the fix.
    assert env.head_pod("analytics").metadata.name == head
    missing = env.wait_condition("analytics", "WorkerReady", "False", "SidecarMissing")
    assert f"kubectl delete pod -n {env.namespace} {head}" in missing["message"]


def test_apply_returns_the_live_object(kube_cluster: Cluster, namespace: str) -> None:
    """kube.server_side_apply hands back what the server stored (the reconciler reads
    status from it) and whether this apply created it (the reconciler posts a Created
    Event then)."""
    from prefect_raypool_operator import kube
    from prefect_raypool_operator.builders import build_manifests
    from prefect_raypool_operator.spec import PrefectRayPoolSpec

    api = kube_cluster.api_client()
    pool = PrefectRayPoolSpec.model_validate({"prefect": {"apiUrl": "http://p:4200/api"}})
    for manifest in build_manifests("direct", namespace, pool):
        live, created = kube.server_side_apply(api, manifest)
        assert created and live["metadata"]["uid"] and live["metadata"]["generation"] == 1
        assert live["kind"] == manifest["kind"]
        again, created = kube.server_side_apply(api, manifest)  # idempotent: no new generation
        assert not created and again["metadata"]["generation"] == 1


def test_status_of_a_pool_gone_meanwhile_is_no_error(
    kube_cluster: Cluster, namespace: str, pool_crd: None
) -> None:
    """A reconcile may read a pool from the watch cache just before its finalizer is
    released: writing its status then finds nothing (404), which is not a failure."""
    from prefect_raypool_operator import kube

    api = kube_cluster.api_client()
    kube.write_status(api, namespace, "gone", {"phase": "Ready"})


def test_make_up_path_starts_the_operator_and_the_examples_become_ready(
    kube_cluster: Cluster, pool_crd: None, tmp_path: Path, own_operators: OwnOperators
) -> None:
    """What `make up` runs (testbed.devenv.start_operator) on the test cluster, in `default`.

    With its own Prefect server, as `make up` has: the session's server holds work
    pools of the same names that other tests' pools keep at other settings. Watching
    `default` only: the session operator's pools are not its to reconcile.
    """
    from testbed.devenv import PoolWatch, start_operator
    from testbed.prefect_server import start_prefect_server
    from testbed.processes import Supervisor, stop_recorded

    sup = Supervisor(tmp_path)
    own_operators.add(sup.log_path("prefect-raypool-operator"))
    try:
        server = start_prefect_server(tmp_path / "prefect", supervisor=sup)
        choice = start_operator(
            sup,
            Path(kube_cluster.kubectl_bin),
            kube_cluster.kubeconfig,
            server.api_url,
            scope=("--namespace=default",),
        )
        # kwok's node has room for all of them (testbed/fit.py).
        assert sorted(p.name for p in choice.started) == ["analytics", "nightly", "reports"]
        printed = kube_cluster.kubectl("get", "prp", "-n", "default")
        assert printed.count("True") == 3, printed

        # A pool whose pods no node can take ends `make up`'s wait with the scheduler's
        # own words, once they have stood for the grace period, not at the timeout.
        big = yaml.safe_load((REPO / "examples/pools/zero-capacity.yaml").read_text())
        big["metadata"]["name"] = "toobig"
        big["spec"]["prefect"]["apiUrl"] = server.api_url
        big["spec"]["ray"]["head"]["resources"] = {"cpu": "500", "memory": "2Gi"}
        kube_cluster.kubectl("apply", "-n", "default", "-f", "-", stdin=yaml.safe_dump(big))
        watch = PoolWatch(kube_cluster.kubectl, ["toobig"], grace=3)
        t0 = time.monotonic()
        with pytest.raises(RuntimeError) as refused:
            eventually(watch.all_ready, timeout=120, what="toobig refused")
        assert time.monotonic() - t0 < 100
        said = str(refused.value)
        assert said.startswith("pool toobig cannot become Ready: ") and "Unschedulable" in said
        assert "Insufficient cpu" in said, said
    finally:
        stop_recorded(tmp_path)
        kube_cluster.kubectl("delete", "prp", "--all", "-n", "default", "--wait=false")
