"""The PodDisruptionBudgets built pure (cluster/test_disruption_budget.py: on the API
server, evictions refused)."""

from __future__ import annotations

import pytest

from prefect_raypool_operator.builders import build_disruption_budgets, build_manifests
from prefect_raypool_operator.spec import PrefectRayPoolSpec

pytestmark = pytest.mark.unit


def _spec(**fields: object) -> PrefectRayPoolSpec:
    return PrefectRayPoolSpec.model_validate(
        {"prefect": {"apiUrl": "http://prefect:4200/api"}, **fields}
    )


def test_zero_capacity_pools_guard_the_head_and_the_prefect_workers() -> None:
    head, workers = build_disruption_budgets("p", "ns", _spec())
    assert head["metadata"]["name"] == "p-ray-head"
    # An integer minAvailable: a RayCluster has no scale subresource for maxUnavailable.
    assert head["spec"]["minAvailable"] == 1 and "maxUnavailable" not in head["spec"]
    assert head["spec"]["selector"]["matchLabels"] == {
        "prefectray.io/pool": "p",
        "prefectray.io/component": "ray-head",
    }
    assert workers["metadata"]["name"] == "p-prefect-worker"
    assert workers["spec"]["maxUnavailable"] == 0
    assert workers["spec"]["selector"]["matchLabels"]["prefectray.io/component"] == (
        "prefect-worker"
    )
    assert {b["spec"]["unhealthyPodEvictionPolicy"] for b in (head, workers)} == {"AlwaysAllow"}


def test_the_spec_sets_max_unavailable_or_turns_them_off() -> None:
    budgets = build_disruption_budgets("p", "ns", _spec(disruptionBudget={"maxUnavailable": 2}))
    assert budgets[1]["spec"]["maxUnavailable"] == 2
    assert build_disruption_budgets("p", "ns", _spec(disruptionBudget={"enabled": False})) == []
    kinds = [
        m["kind"] for m in build_manifests("p", "ns", _spec(disruptionBudget={"enabled": False}))
    ]
    assert "PodDisruptionBudget" not in kinds
    with pytest.raises(ValueError, match="maxUnavailable"):
        _spec(disruptionBudget={"maxUnavailable": -1})


def test_head_sidecar_has_the_head_budget_and_ephemeral_none() -> None:
    [head] = build_disruption_budgets("p", "ns", _spec(placement="HeadSidecar"))
    assert head["metadata"]["name"] == "p-ray-head"  # its Prefect worker is in the head pod
    assert build_disruption_budgets("p", "ns", _spec(placement="Ephemeral")) == []
