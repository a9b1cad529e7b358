"""Scale to zero on a real node: an idle pool ends with no pod at all, head included;
a flow run submitted to the suspended pool wakes it and COMPLETES, every task once.
Prints the wake's figures (run created -> pool awake -> first task done -> done)."""

from __future__ import annotations

import time

import pytest

from testbed.pooldriver import PoolDriver
from testbed.waiting import eventually
from tests.e2e.test_worker_drain import _completed_once, _pool, _running_on, _start

pytestmark = pytest.mark.e2e


@pytest.mark.timeout(1500)
def test_a_suspended_pool_wakes_for_a_flow_run_and_completes_it(pools: PoolDriver) -> None:
    manifest = _pool("zz", pools.prefect_api_url)
    manifest["spec"]["idle"] = {"suspendAfterSeconds": 20, "minAwakeSeconds": 0}
    pools.apply(manifest)
    # Idle from the first look: it may suspend before its first start is over.
    pools.wait_condition("zz", "Ready", "False", "Suspended", timeout=600)
    eventually(
        lambda: not pools.pods("prefectray.io/pool=zz"), 180, "no pod of the pool, head included"
    )

    t0 = time.monotonic()
    run_id = _start(pools, "zz", 20)
    pools.wait_events("zz", lambda es: any(e.reason == "Waking" for e in es), "a Waking Event")
    woke = time.monotonic() - t0
    _running_on(pools, run_id)  # a task run of it completed
    first_task = time.monotonic() - t0
    _completed_once(pools, "zz", run_id, 20)
    print(
        f"wake on the real node: Waking after {woke:.1f}s, first task done after "
        f"{first_task:.1f}s, run COMPLETED after {time.monotonic() - t0:.1f}s"
    )
