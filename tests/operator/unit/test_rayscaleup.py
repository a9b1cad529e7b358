"""Autoscaled Ray worker groups raised from the Prefect queue (rayscaleup.py)."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_raypool_operator.builders.raycluster import build_raycluster
from prefect_raypool_operator.rayscaleup import following, raise_groups
from prefect_raypool_operator.spec import PrefectRayPoolSpec

pytestmark = pytest.mark.unit


def _spec(*groups: dict[str, Any], autoscaling: bool = True) -> PrefectRayPoolSpec:
    return PrefectRayPoolSpec.model_validate(
        {
            "prefect": {"apiUrl": "http://prefect:4200/api"},
            "ray": {"autoscaling": {"enabled": autoscaling}, "workerGroups": list(groups)},
        }
    )


def _replicas(cluster: dict[str, Any]) -> dict[str, int]:
    return {g["groupName"]: g["replicas"] for g in cluster["spec"]["workerGroupSpecs"]}


CPU = {"name": "cpu", "replicas": 0, "minReplicas": 0, "maxReplicas": 3}
GPU = {"name": "gpu", "replicas": 0, "minReplicas": 0, "maxReplicas": 2, "podsPerFlowRun": 0}


def test_each_following_group_is_raised_per_flow_run_within_its_bounds() -> None:
    spec = _spec(CPU, {**GPU, "podsPerFlowRun": 2})
    cluster = build_raycluster("p", "ns", spec)
    raised, mark = raise_groups(spec, cluster, 2, 0)
    assert raised is not None and mark == 2
    assert _replicas(cluster) == {"cpu": 2, "gpu": 2}  # gpu: 2 x 2, bounded by maxReplicas
    assert raised.groups == {"cpu": (0, 2), "gpu": (0, 2)}
    assert "2 flow runs want a worker in work pool wp" in raised.message("wp")
    assert "cpu 0 -> 2, gpu 0 -> 2" in raised.message("wp")
    cluster = build_raycluster("p", "ns", spec)
    raise_groups(spec, cluster, 9, 0)
    assert _replicas(cluster) == {"cpu": 3, "gpu": 2}


def test_a_group_with_zero_per_run_is_left_to_the_autoscaler() -> None:
    spec = _spec(CPU, GPU)
    cluster = build_raycluster("p", "ns", spec)
    raise_groups(spec, cluster, 2, 0)
    assert _replicas(cluster) == {"cpu": 2, "gpu": 0}


def test_never_lowered_and_raised_once_per_rise_of_the_queue() -> None:
    spec = _spec(CPU)
    cluster = build_raycluster("p", "ns", spec)
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = 3  # the autoscaler's, live
    raised, mark = raise_groups(spec, cluster, 1, 0)
    assert raised is None and mark == 1 and _replicas(cluster) == {"cpu": 3}

    # Raised for 2; the autoscaler then takes an idle pod away while they still wait.
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = 1
    raised, mark = raise_groups(spec, cluster, 2, mark)
    assert raised is not None and _replicas(cluster) == {"cpu": 2}
    cluster["spec"]["workerGroupSpecs"][0]["replicas"] = 0
    raised, mark = raise_groups(spec, cluster, 2, mark)
    assert raised is None and _replicas(cluster) == {"cpu": 0}  # no fight

    # The queue falls, then rises again: a new arrival raises again.
    raised, mark = raise_groups(spec, cluster, 1, mark)
    assert raised is None and mark == 1
    raised, mark = raise_groups(spec, cluster, 2, mark)
    assert raised is not None and _replicas(cluster) == {"cpu": 2}


def test_nothing_without_the_autoscaler_or_an_answer_from_prefect() -> None:
    for spec, wanting in ((_spec(CPU, autoscaling=False), 2), (_spec(CPU), None)):
        cluster = build_raycluster("p", "ns", spec)
        assert raise_groups(spec, cluster, wanting, 0) == (None, 0)
        assert _replicas(cluster) == {"cpu": 0}
    assert following(_spec(CPU)) and not following(_spec(GPU))
