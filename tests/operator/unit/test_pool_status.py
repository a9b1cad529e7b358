"""Status logic (pure): KubeRay's status read right, conditions, phase, Events, liveness."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from prefect_raypool_operator import config
from prefect_raypool_operator.memory import Memory
from prefect_raypool_operator.observe import (
    prefect_sidecar_check,
    prefect_worker_deployment_check,
    ray_cluster_check,
)
from prefect_raypool_operator.owned import keep_autoscaled_replicas
from prefect_raypool_operator.plan import plan
from prefect_raypool_operator.status import Check, Observed, build_status, transitions

pytestmark = pytest.mark.unit
T0 = datetime(2026, 1, 1, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


def _cluster(state: str | None = None, **conditions: str) -> dict[str, Any]:
    return {
        "status": {
            "state": state,
            "readyWorkerReplicas": 1,
            "conditions": [
                {"type": k, "status": v, "message": f"{k} is {v}"} for k, v in conditions.items()
            ],
        }
    }


@pytest.mark.parametrize(
    ("live", "ok", "reason"),
    [
        (None, False, "RayClusterMissing"),
        (
            _cluster("ready", HeadPodReady="True", RayClusterProvisioned="True"),
            True,
            "RayClusterReady",
        ),
        (
            _cluster(None, HeadPodReady="True", RayClusterProvisioned="True"),
            True,
            "RayClusterReady",
        ),
        (_cluster(None, HeadPodReady="False"), False, "HeadPodNotReady"),
        (
            _cluster(None, HeadPodReady="True", RayClusterProvisioned="False"),
            False,
            "RayClusterProvisioning",
        ),
        (_cluster("ready", ReplicaFailure="True"), False, "ReplicaFailure"),
    ],
)
def test_ray_cluster_ready_follows_kuberay(live: Any, ok: bool, reason: str) -> None:
    check = ray_cluster_check(live)
    assert (check.ok, check.reason) == (ok, reason)


def test_deployment_ready_needs_current_generation_and_ready_replicas() -> None:
    meta = {"generation": 2}
    stale = {
        "metadata": meta,
        "status": {"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 2},
    }
    fresh = {
        "metadata": meta,
        "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2},
    }
    assert prefect_worker_deployment_check(stale, 2).ok is False
    assert prefect_worker_deployment_check(fresh, 2).ok is True
    assert prefect_worker_deployment_check(fresh, 3).ok is False
    assert prefect_worker_deployment_check(None, 1).reason == "DeploymentMissing"
    assert (
        prefect_worker_deployment_check({"metadata": meta, "status": {}}, 0).reason
        == "ScaledToZero"
    )


def test_sidecar_ready_reads_the_prefect_container() -> None:
    pod = {
        "status": {
            "containerStatuses": [
                {"name": "ray-head", "ready": True},
                {"name": "prefect-worker", "ready": False},
            ]
        }
    }
    assert prefect_sidecar_check(pod).reason == "SidecarNotReady"
    pod["status"]["containerStatuses"][1]["ready"] = True
    assert prefect_sidecar_check(pod).ok is True
    assert prefect_sidecar_check(None).ok is False


def test_a_head_made_before_the_switch_to_head_sidecar_says_how_to_get_the_sidecar() -> None:
    pod = {
        "metadata": {"name": "p-head-abc", "namespace": "ns"},
        "spec": {"containers": [{"name": "ray-head"}]},
        "status": {"containerStatuses": [{"name": "ray-head", "ready": True}]},
    }
    check = prefect_sidecar_check(pod)
    assert (check.ok, check.reason) == (False, "SidecarMissing")
    assert "kubectl delete pod -n ns p-head-abc" in check.message
    pod["spec"]["containers"].append({"name": "prefect-worker"})  # starting: not missing
    assert prefect_sidecar_check(pod).reason == "SidecarNotReady"


def _obs(**kw: Any) -> Observed:
    return Observed("p", "ns", 3, "p", **kw)


def test_all_true_is_ready_and_addresses_are_reported() -> None:
    yes = Check(True, "OK")
    status = build_status(
        _obs(ray_cluster=yes, prefect_worker=yes, work_pool=yes, ready_ray_workers=2), None, T0
    )
    assert status["phase"] == "Ready" and status["observedGeneration"] == 3
    conds = {c["type"]: c for c in status["conditions"]}
    assert set(conds) == {"Ready", "RayClusterReady", "WorkerReady", "WorkPoolReady"}
    assert all(c["status"] == "True" for c in conds.values())
    assert status["headService"] == "p-head-svc.ns.svc"
    assert status["dashboardURL"] == "http://p-head-svc.ns.svc:8265"
    assert status["readyWorkerReplicas"] == 2


def test_unreachable_prefect_api_is_a_false_condition_not_ready() -> None:
    yes = Check(True, "OK")
    down = Check(False, "PrefectAPIUnreachable", "cannot reach the Prefect API")
    status = build_status(_obs(ray_cluster=yes, prefect_worker=yes, work_pool=down), None, T0)
    conds = {c["type"]: c for c in status["conditions"]}
    assert conds["WorkPoolReady"]["status"] == "False"
    assert conds["WorkPoolReady"]["reason"] == "PrefectAPIUnreachable"
    assert conds["Ready"]["status"] == "False" and status["phase"] == "Degraded"


def test_blocking_problem_phase() -> None:
    blocked = _obs(blocking=Check(False, "SecretNotFound", "create it"))
    assert build_status(blocked, None, T0)["phase"] == "Pending"
    failed = _obs(blocking=Check(False, "RayVersionMismatch", "x"), blocking_permanent=True)
    status = build_status(failed, None, T0)
    assert status["phase"] == "Failed"
    assert status["conditions"][0]["reason"] == "RayVersionMismatch"


def test_transition_times_and_events_only_on_change() -> None:
    yes, no = Check(True, "OK"), Check(False, "HeadPodNotReady", "starting")
    first = build_status(_obs(ray_cluster=no, prefect_worker=yes, work_pool=yes), None, T0)
    again = build_status(_obs(ray_cluster=no, prefect_worker=yes, work_pool=yes), first, T1)
    assert transitions(first, again) == []
    ray = next(c for c in again["conditions"] if c["type"] == "RayClusterReady")
    assert ray["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    ready = build_status(_obs(ray_cluster=yes, prefect_worker=yes, work_pool=yes), again, T1)
    changed = {(t.type, t.status) for t in transitions(again, ready)}
    assert changed == {("Ready", "True"), ("RayClusterReady", "True")}
    ray = next(c for c in ready["conditions"] if c["type"] == "RayClusterReady")
    assert ray["lastTransitionTime"] == "2026-01-01T00:05:00Z"
    first_events = transitions(None, first)
    assert {t.type for t in first_events} == {
        "Ready",
        "RayClusterReady",
        "WorkerReady",
        "WorkPoolReady",
    }
    assert [t.warning for t in first_events if t.type == "RayClusterReady"] == [True]


def test_autoscaler_owns_replicas_once_the_cluster_exists() -> None:
    desired = {
        "spec": {
            "enableInTreeAutoscaling": True,
            "workerGroupSpecs": [
                {"groupName": "cpu", "replicas": 1, "minReplicas": 0, "maxReplicas": 5}
            ],
        }
    }
    live = {"spec": {"workerGroupSpecs": [{"groupName": "cpu", "replicas": 4}]}}
    assert keep_autoscaled_replicas(desired, live)["spec"]["workerGroupSpecs"][0]["replicas"] == 4
    desired["spec"]["enableInTreeAutoscaling"] = False
    desired["spec"]["workerGroupSpecs"][0]["replicas"] = 1
    assert keep_autoscaled_replicas(desired, live)["spec"]["workerGroupSpecs"][0]["replicas"] == 1


def test_operator_refuses_a_spec_the_crd_would_have_refused() -> None:
    def body(name: str, api_url: str) -> dict[str, Any]:
        return {
            "apiVersion": "prefectray.io/v1alpha1",
            "kind": "PrefectRayPool",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"prefect": {"apiUrl": api_url}},
        }

    refused = plan(body("Bad_Name", "http://p/api"))
    assert refused.spec is None and refused.refusal is not None and refused.refusal.permanent
    assert not refused.desired
    refused = plan(body("ok", "ftp://p"))
    assert refused.refusal is not None and "spec.prefect.apiUrl" in refused.refusal.message


def test_liveness_fails_only_when_reconciles_stop_with_pools_known() -> None:
    memory = Memory()
    memory.liveness(now=10**9)  # no pools: healthy however old
    memory.reconciled(memory.of(("ns", "p"), "uid-1"))
    assert memory.liveness()["pools"] == 1
    with pytest.raises(RuntimeError, match="no reconcile"):
        memory.liveness(now=10**9)
    memory.forget(("ns", "p"))
    assert memory.liveness(now=10**9)["pools"] == 0


def test_prefect_url_map_rewrites_only_the_prefix() -> None:
    operator_config = config.Config(
        prefect_url_map=config._url_map("http://prefect.svc:4200=http://127.0.0.1:4200")
    )
    assert (
        operator_config.operator_prefect_url("http://prefect.svc:4200/api")
        == "http://127.0.0.1:4200/api"
    )
    assert operator_config.operator_prefect_url("http://other:4200/api") == "http://other:4200/api"
    with pytest.raises(ValueError):
        config._url_map("nonsense")


def _stale(observed: int | None, generation: int = 2, replicas: int = 2) -> dict[str, Any]:
    """A RayCluster whose spec last changed at T0 (a status write by KubeRay later):
    KubeRay's status counts 1 worker, the spec wants `replicas`."""
    cluster = _cluster("ready", HeadPodReady="True", RayClusterProvisioned="True")
    cluster["status"].update(observedGeneration=observed, desiredWorkerReplicas=1)
    cluster["status"]["maxWorkerReplicas"] = 1
    cluster["spec"] = {
        "workerGroupSpecs": [{"replicas": replicas, "minReplicas": 0, "maxReplicas": replicas}]
    }
    cluster["metadata"] = {
        "name": "p",
        "generation": generation,
        "creationTimestamp": "2025-12-31T00:00:00Z",
        "managedFields": [
            {"manager": "prefect-raypool", "operation": "Apply", "time": "2026-01-01T00:00:00Z"},
            {"manager": "kuberay", "subresource": "status", "time": "2026-01-01T00:04:00Z"},
        ],
    }
    return cluster


def test_kuberay_not_reconciling_is_said_once_the_grace_is_over() -> None:
    """KubeRay stopped: its last status stays (here: ready) but is of an older
    generation. Within the grace period that is a KubeRay at work; after it, the
    condition says KubeRay is not reconciling, however ready the stale status looks."""
    assert ray_cluster_check(_stale(1), T0, grace=60).ok is True  # just changed
    check = ray_cluster_check(_stale(1), T1, grace=60)  # 5 minutes later
    assert (check.ok, check.reason) == (False, "KubeRayNotReconciling")
    assert "generation 2 for 300s" in check.message and "of generation 1" in check.message
    assert "KubeRay operator is not running" in check.message
    assert ray_cluster_check(_stale(2), T1, grace=60).reason == "RayClusterReady"  # caught up


def test_a_change_kuberay_writes_no_status_for_is_not_kuberay_silent() -> None:
    """KubeRay writes its status only when a field it compares changes, not for a new
    generation alone: after a change of pod labels (its worker counts stay those of the
    spec) the old generation in its status says nothing about KubeRay."""
    label_change = _stale(1, replicas=1)
    assert ray_cluster_check(label_change, T1, grace=60).reason == "RayClusterReady"
    suspended = _stale(1, replicas=1)
    suspended["spec"]["workerGroupSpecs"][0]["suspend"] = True  # KubeRay would count 0
    assert ray_cluster_check(suspended, T1, grace=60).reason == "KubeRayNotReconciling"
    clamped = _stale(1, replicas=1)  # replicas above maxReplicas: KubeRay counts the max
    clamped["spec"]["workerGroupSpecs"][0].update(replicas=5, maxReplicas=1)
    assert ray_cluster_check(clamped, T1, grace=60).reason == "RayClusterReady"


def test_a_new_raycluster_kuberay_never_saw_counts_from_its_creation() -> None:
    fresh = {
        "metadata": {"name": "p", "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"}
    }
    check = ray_cluster_check(fresh, T1, grace=60)
    assert (check.ok, check.reason) == (False, "KubeRayNotReconciling")
    assert "of generation none" in check.message
    assert ray_cluster_check(fresh, T0, grace=60).reason == "HeadPodNotReady"
    # No time known (as in the in-memory cluster of test_controller): no verdict on KubeRay.
    assert ray_cluster_check({"metadata": {"generation": 3}}, T1, grace=0).reason != (
        "KubeRayNotReconciling"
    )
