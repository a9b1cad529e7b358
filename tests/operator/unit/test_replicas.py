"""Who sets the worker Deployment's replicas (replicas.py), on managedFields shaped as
the API server writes them; the same paths on a real API server are in
cluster/test_worker_replicas.py."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from kubernetes.client import ApiException

from prefect_raypool_operator import naming, replicas
from prefect_raypool_operator.builders.prefect_worker import build_prefect_worker_deployment
from prefect_raypool_operator.kube import apply_conflicts
from prefect_raypool_operator.observe import desired_workers, prefect_worker_deployment_check
from prefect_raypool_operator.owned import PREFECT_WORKER_DEPLOYMENT
from prefect_raypool_operator.spec import PrefectRayPoolSpec

pytestmark = pytest.mark.unit
Obj = dict[str, Any]
REPLICAS = {"f:spec": {"f:replicas": {}}}
RESYNC = 30.0  # the operator's default resync interval, seconds


def _desired(external: bool = False, count: int = 1) -> Obj:
    spec = PrefectRayPoolSpec.model_validate(
        {
            "prefect": {
                "apiUrl": "http://prefect:4200/api",
                "replicas": count,
                "replicasManagedExternally": external,
            }
        }
    )
    return build_prefect_worker_deployment("analytics", "team", spec)


def _live(desired: Obj, replicas_now: int, *owners: tuple[str, str | None]) -> Obj:
    """The live Deployment: `owners` (manager, subresource) own spec.replicas."""
    live = copy.deepcopy(desired)
    live["spec"]["replicas"] = replicas_now
    live["metadata"]["generation"] = 2
    live["metadata"]["managedFields"] = [
        {"manager": naming.FIELD_MANAGER, "operation": "Apply", "fieldsV1": {"f:metadata": {}}},
        {"manager": "kube-controller-manager", "subresource": "status", "fieldsV1": {}},
    ] + [
        {"manager": m, "operation": "Update", "subresource": sub, "fieldsV1": REPLICAS}
        for m, sub in owners
    ]
    return live


def test_kubectl_scale_is_an_override_naming_the_manager_and_the_switch() -> None:
    desired = _desired()
    live = _live(desired, 3, ("kubectl", "scale"))
    conflicts = {".spec.replicas": "kubectl (scale)"}
    found = PREFECT_WORKER_DEPLOYMENT.overridden(desired, live, conflicts)  # type: ignore[misc]
    assert found == replicas.Override("analytics-prefect-worker", "kubectl (scale)", 3, 1)
    assert "kubectl (scale) scaled Deployment analytics-prefect-worker to 3;" in found.event()
    assert "replicasManagedExternally: true" in found.event()
    assert "replicas" not in found.leave(desired)["spec"]
    assert desired["spec"]["replicas"] == 1  # leave() copies
    # The watch's copy lags behind: the API server's conflict still names the manager.
    stale = replicas.override(desired, _live(desired, 1), conflicts)
    assert stale is not None and "kubectl (scale) scaled Deployment" in stale.event()


@pytest.mark.parametrize(
    "conflicts",
    [
        {},
        {".spec.template.spec.containers": "kubectl-edit"},  # a hand edit: repaired as ever
        {".spec.replicas": naming.HANDOVER_FIELD_MANAGER},  # the switch was just turned off
    ],
)
def test_no_override(conflicts: dict[str, str]) -> None:
    desired = _desired()
    assert replicas.override(desired, _live(desired, 3), conflicts) is None


def test_conflicts_are_read_from_the_api_servers_answer() -> None:
    body = {
        "kind": "Status",
        "reason": "Conflict",
        "code": 409,
        "details": {
            "causes": [
                {
                    "reason": "FieldManagerConflict",
                    "message": 'conflict with "kubectl" with subresource "scale" using apps/v1',
                    "field": ".spec.replicas",
                },
                {
                    "reason": "FieldManagerConflict",
                    "message": 'conflict with "kubectl-edit" using apps/v1',
                    "field": ".spec.template.spec.terminationGracePeriodSeconds",
                },
            ]
        },
    }
    exc = ApiException(status=409, reason="Conflict")
    exc.body = json.dumps(body)
    assert apply_conflicts(exc) == {
        ".spec.replicas": "kubectl (scale)",
        ".spec.template.spec.terminationGracePeriodSeconds": "kubectl-edit",
    }
    exc.status = 422
    assert apply_conflicts(exc) == {}


def test_switch_on_sends_replicas_only_to_create() -> None:
    desired = _desired(external=True, count=2)
    assert desired["metadata"]["annotations"] == {naming.EXTERNAL_REPLICAS_ANNOTATION: "true"}
    merge = PREFECT_WORKER_DEPLOYMENT.merge_live
    assert merge(desired, None)["spec"]["replicas"] == 2
    applied = merge(desired, _live(desired, 5, ("kubectl", "scale")))
    assert "replicas" not in applied["spec"]
    assert replicas.override(applied, None, {".spec.replicas": "kubectl (scale)"}) is None
    # Switch off: replicas are always sent.
    assert merge(_desired(), _live(desired, 5))["spec"]["replicas"] == 1


def test_hand_over_only_what_the_operator_still_owns() -> None:
    desired = _desired(external=True, count=2)
    applied = replicas.leave_external_replicas(desired, {})
    owned_by_us = _live(desired, 2, (naming.FIELD_MANAGER, None))
    assert PREFECT_WORKER_DEPLOYMENT.hand_over(applied, owned_by_us) == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "analytics-prefect-worker", "namespace": "team"},
        "spec": {"replicas": 2},
    }
    assert replicas.hand_over(applied, _live(desired, 4, ("kubectl", "scale"))) is None
    assert replicas.hand_over(desired, owned_by_us) is None  # still sending replicas


def test_contest_restores_at_once_then_backs_off() -> None:
    seen = replicas.Override("d", "hpa", 3, 1)
    contest = replicas.Contest()
    contest.start(1, 0.0, RESYNC)
    restored = [t for t in range(0, 120) if contest.restore_now(seen, float(t))]
    free = list(range(replicas.FREE_RESTORES))
    # One restore a second while free, then 10 s, 20 s, 40 s, 80 s apart.
    assert restored == [*free, free[-1] + 10, free[-1] + 30, free[-1] + 70]
    assert contest.contested() == seen.contested()
    assert "replicasManagedExternally: true" in (contest.contested() or "")
    contest.start(1, 150.0, RESYNC)  # still fighting: the hold (until 152) stays
    assert not contest.restore_now(seen, 150.0)
    contest.start(2, 201.0, RESYNC)  # a new pool generation starts over
    assert contest.contested() is None and contest.restore_now(seen, 201.0)


def test_contest_ends_after_a_quiet_spell() -> None:
    seen = replicas.Override("d", "hpa", 3, 1)
    contest = replicas.Contest()
    for t in range(replicas.FREE_RESTORES):
        contest.start(1, float(t), RESYNC)
        contest.restore_now(seen, float(t))
    assert contest.contested()
    contest.start(1, replicas.FREE_RESTORES + replicas.quiet_after(RESYNC) + 1, RESYNC)
    assert contest.contested() is None


def test_status_counts_against_the_live_replicas_when_external() -> None:
    external, managed = _desired(external=True, count=2), _desired(count=2)
    live = _live(external, 3, ("kubectl", "scale"))
    live["status"] = {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 3}
    spec = PrefectRayPoolSpec.model_validate(
        {
            "prefect": {
                "apiUrl": "http://p:4200/api",
                "replicas": 2,
                "replicasManagedExternally": True,
            }
        }
    )
    check = prefect_worker_deployment_check(live, desired_workers(spec.prefect, live))
    assert (check.ok, check.message) == (False, "2/3 Prefect workers ready")
    assert desired_workers(spec.prefect, None) == 2  # not created yet: the spec's count
    spec.prefect.replicasManagedExternally = False
    assert desired_workers(spec.prefect, _live(managed, 3)) == 2
