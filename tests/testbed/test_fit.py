"""Which example pools `make up` starts (testbed/fit.py): they fit the node with room
kept for `make demo` or a rolling update's surge pod."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from testbed import REPO
from testbed.demo import demo_pool_manifest
from testbed.fit import PoolNeeds, Room, choose, pod_request, pool_needs

pytestmark = pytest.mark.unit

GI = 2**30
EXAMPLES = sorted((REPO / "examples" / "pools").glob("*.yaml"))


def _examples() -> list[PoolNeeds]:
    return [pool_needs(yaml.safe_load(Path(p).read_text())) for p in EXAMPLES]


def test_a_two_cpu_node_gets_the_examples_that_fit_with_room_for_the_demo() -> None:
    # The real node: 2 CPUs, the operator's one replica (100m) already on it.
    free = Room(2000 - 100, 24 * GI - GI // 4)
    demo = pool_needs(demo_pool_manifest()).total
    choice = choose(_examples(), free, demo)

    started = [p.name for p in choice.started]
    assert started == ["analytics", "nightly"]  # the default placement first
    assert [p.name for p, _ in choice.left_out] == ["reports"]
    why = choice.left_out[0][1]
    assert "needs 750m CPU" in why and "800m CPU" in why and "`make demo`" in why

    used = sum((p.total for p in choice.started), Room())
    assert free.holds(used + choice.reserve)
    assert choice.free_after.holds(demo)
    # The reserve also holds the largest surge pod: analytics' Prefect worker.
    analytics = next(p for p in choice.started if p.name == "analytics")
    assert choice.reserve.holds(analytics.surge) and analytics.surge.cpu_m == 500


def test_a_large_node_gets_every_example() -> None:
    choice = choose(_examples(), Room(64_000, 256 * GI), pool_needs(demo_pool_manifest()).total)
    assert sorted(p.name for p in choice.started) == ["analytics", "nightly", "reports"]
    assert choice.left_out == []


def test_nothing_fits_a_node_smaller_than_the_demo() -> None:
    choice = choose(_examples(), Room(500, 4 * GI), pool_needs(demo_pool_manifest()).total)
    assert choice.started == []
    assert len(choice.left_out) == 3


def test_a_surge_pod_larger_than_the_demo_is_kept_room_for() -> None:
    big = copy.deepcopy(yaml.safe_load((REPO / "examples/pools/zero-capacity.yaml").read_text()))
    big["spec"]["prefect"]["resources"] = {"cpu": "1500m", "memory": "1Gi"}
    needs = pool_needs(big)
    assert needs.surge == Room(1500, GI)
    demo = Room(750, 3 * GI)
    # The pool (2 CPUs) fits in 3, but not with 1.5 CPUs kept for its surge pod.
    assert needs.total.cpu_m == 2000
    assert choose([needs], Room(3000, 16 * GI), demo).started == []
    assert choose([needs], Room(3500, 16 * GI), demo).started == [needs]


def test_a_pod_reserves_its_requests_or_limits_or_its_largest_init_container() -> None:
    spec = {
        "containers": [
            {"resources": {"requests": {"cpu": "250m", "memory": "1Gi"}}},
            {"resources": {"limits": {"cpu": "1", "memory": "512Mi"}}},  # requests default
            {},
        ],
        "initContainers": [{"resources": {"requests": {"cpu": "2", "memory": "64Mi"}}}],
    }
    assert pod_request(spec) == Room(2000, GI + GI // 2)
