"""Scale to zero on the real control plane with the real KubeRay and a real Prefect
server (the session's operator: 3 s resync, 5 s idle poll): an idle pool stops its
workers and suspends its RayCluster (no pod left, head included); a flow run due
within wakeAheadSeconds wakes it, a running one keeps it awake, and arrivals while
awake do not make it flap. A wake whose head cannot be scheduled says so and loses no
flow run; a suspended pool stays so across an operator restart and a leader failover
(operators of the test's own). (Wake to a completed run on a real node:
tests/e2e/test_idle.py.)"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prefect.states import Completed, Pending, Running, Scheduled

from prefect_raypool_operator import naming
from testbed.cluster import Cluster
from testbed.elected import SHORT, Replica, unwatched_namespace
from testbed.operator_log import OwnOperators
from testbed.operator_process import allow_prefect
from testbed.pooldriver import PoolDriver
from testbed.prefect_server import PrefectServer
from testbed.waiting import eventually

pytestmark = [pytest.mark.controlplane, pytest.mark.prefect]
POOL = "analytics"
IDLE = {"suspendAfterSeconds": 10, "minAwakeSeconds": 0, "wakeAheadSeconds": 120}


def _run(env: PoolDriver, work_pool: str, state: Any) -> Any:
    with env.prefect() as c:
        flow_id = c.create_flow_from_name("waiting")
        deployment = c.create_deployment(
            flow_id=flow_id, name=f"d-{uuid.uuid4().hex[:6]}", work_pool_name=work_pool
        )
        return c.create_flow_run_from_deployment(deployment, state=state).id


def _pool_pods(env: PoolDriver) -> list[Any]:
    return env.pods(f"{naming.POOL_LABEL}={POOL}")


def _suspended(env: PoolDriver, timeout: float = 120) -> float:
    t0 = time.monotonic()
    cond = env.wait_condition(POOL, "Ready", "False", "Suspended", timeout=timeout)
    assert "spec.idle.suspendAfterSeconds: 10" in cond["message"], cond["message"]
    assert (env.pool(POOL) or {})["status"]["phase"] == "Suspended"
    cluster = env.raycluster(POOL) or {}
    assert cluster["spec"].get("suspend") is True
    workers = env.apps.read_namespaced_deployment(f"{POOL}-prefect-worker", env.namespace)
    assert workers.spec.replicas == 0
    eventually(lambda: not _pool_pods(env), 60, "no pod of the pool left, head included")
    # Prefect shows the work pool Not Ready (no worker polls); its description says why.
    note = eventually(lambda: "prefectray.io/idle: suspended" in _description(env), 30, "a note")
    assert note
    return time.monotonic() - t0


def _description(env: PoolDriver) -> str:
    with env.prefect() as c:
        return c.read_work_pool(env.work_pool_name(POOL)).description or ""


def _wakes(env: PoolDriver) -> list[Any]:
    return [e for e in env.events(POOL) if e.reason == "Waking"]


def test_an_idle_pool_suspends_and_a_due_flow_run_wakes_it(env: PoolDriver) -> None:
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["idle"] = IDLE
    env.apply(doc)
    work_pool = env.work_pool_name(POOL)
    env.wait_condition(POOL, "Ready", "True", timeout=120)
    _suspended(env)
    suspended = [e for e in env.events(POOL) if e.reason == "Suspended"]
    assert suspended and all(e.type == "Normal" for e in suspended)

    # Due in 60 s, inside wakeAheadSeconds (120): the pool wakes ahead of it.
    due = datetime.now(UTC) + timedelta(seconds=60)
    t0 = time.monotonic()
    scheduled = _run(env, work_pool, Scheduled(scheduled_time=due))
    env.wait_events(POOL, lambda es: any(e.reason == "Waking" for e in es), "a Waking Event")
    print(f"waking {time.monotonic() - t0:.1f}s after the run was scheduled")
    assert "1 flow runs want a worker" in _wakes(env)[0].message
    assert not (env.raycluster(POOL) or {})["spec"].get("suspend")
    env.wait_condition(POOL, "Ready", "True", timeout=120)
    print(f"ready {time.monotonic() - t0:.1f}s after the run was scheduled")
    eventually(lambda: "prefectray.io/idle" not in _description(env), 30, "the note gone")
    assert "prefectray.io/owner=" in _description(env)  # the claim stays
    time.sleep(15)  # longer than suspendAfterSeconds: the waiting run keeps it awake
    assert env.condition(POOL, "Ready")["status"] == "True"

    # The run goes; idle again, suspended again.
    with env.prefect() as c:
        c.delete_flow_run(scheduled)
    _suspended(env)

    # A running run (started elsewhere, say) wakes it and keeps it awake while it runs.
    running = _run(env, work_pool, Pending())
    with env.prefect() as c:
        c.set_flow_run_state(running, Running())
    env.wait_condition(POOL, "Ready", "True", timeout=120)
    time.sleep(15)
    assert env.condition(POOL, "Ready")["status"] == "True"
    with env.prefect() as c:
        c.set_flow_run_state(running, Completed())
    _suspended(env)
    assert len(_wakes(env)) == 2, [e.message for e in _wakes(env)]  # no flapping


def test_a_run_far_ahead_does_not_wake_it_and_the_pool_survives_a_spec_change(
    env: PoolDriver,
) -> None:
    """Scheduled beyond wakeAheadSeconds: still suspended. A spec change while
    suspended (a label) starts nothing; turning idle off wakes it."""
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["idle"] = IDLE
    env.apply(doc)
    _suspended(env, timeout=180)
    _run(
        env,
        env.work_pool_name(POOL),
        Scheduled(scheduled_time=datetime.now(UTC) + timedelta(hours=2)),
    )
    doc["spec"]["pod"] = {"labels": {"team": "data"}}
    env.apply(doc)
    time.sleep(15)  # 3 idle polls and more resyncs
    assert env.condition(POOL, "Ready")["reason"] == "Suspended"
    assert not _pool_pods(env) and not _wakes(env)

    doc["spec"]["idle"] = {"suspendAfterSeconds": 0}
    env.apply(doc)
    env.wait_condition(POOL, "Ready", "True", timeout=120)
    assert "spec.idle.suspendAfterSeconds is 0" in _wakes(env)[0].message
    assert (env.pool(POOL) or {})["status"].get("idle") is None


def test_a_wake_whose_head_cannot_be_scheduled_says_so_and_keeps_the_flow_run(
    env: PoolDriver,
) -> None:
    """While suspended the head is made too big for any node; a due run wakes the pool:
    Ready stays False and names the unschedulable head, the run stays SCHEDULED (not
    Crashed, not Failed), nothing crashes; the spec fixed, the pool is Ready."""
    doc = env.example("zero-capacity.yaml")
    doc["spec"]["idle"] = IDLE
    env.apply(doc)
    _suspended(env, timeout=180)
    cpu = doc["spec"]["ray"]["head"]["resources"]["cpu"]
    doc["spec"]["ray"]["head"]["resources"]["cpu"] = "1000"  # no node has that
    env.apply(doc)
    run = _run(env, env.work_pool_name(POOL), Scheduled())  # due now
    env.wait_events(POOL, lambda es: any(e.reason == "Waking" for e in es), "a Waking Event")

    def unschedulable() -> dict[str, Any] | None:
        cond = env.condition(POOL, "RayClusterReady")
        return cond if cond.get("reason") == "Unschedulable" else None

    ray = eventually(unschedulable, 90, "RayClusterReady False: Unschedulable")
    ready = env.condition(POOL, "Ready")
    print(f"Ready={ready['status']} {ready['reason']}: {ready['message']}")
    (head,) = [p.metadata.name for p in _pool_pods(env) if "-head-" in p.metadata.name]
    for cond in (ray, ready):  # the pending head, and why
        assert cond["status"] == "False", cond
        assert f"pod {head}: " in cond["message"] and "Insufficient cpu" in cond["message"]
    assert ready["reason"] == "RayClusterReadyFalse", ready
    assert (env.pool(POOL) or {})["status"]["phase"] == "Degraded"
    assert (env.pool(POOL) or {})["status"]["idle"]["state"] == "Awake"
    time.sleep(12)  # resyncs and orphan sweeps: the run waits, the pool says the same
    with env.prefect() as c:
        assert c.read_flow_run(run).state.type.value == "SCHEDULED"
    assert env.condition(POOL, "Ready")["status"] == "False"
    assert len(_wakes(env)) == 1, [e.message for e in _wakes(env)]

    doc["spec"]["ray"]["head"]["resources"]["cpu"] = cpu
    env.apply(doc)
    env.wait_condition(POOL, "Ready", "True", timeout=120)
    with env.prefect() as c:
        assert c.read_flow_run(run).state.type.value == "SCHEDULED"  # a worker may take it


# --- An operator of the test's own: restarted, then failed over.


@pytest.fixture
def own_namespace(kube_cluster: Cluster, pool_crd: None) -> Iterator[str]:
    """A namespace the session operator does not watch."""
    with unwatched_namespace(kube_cluster, "idle") as name:
        yield name


def _stays_suspended(env: PoolDriver, seconds: float) -> None:
    """No wake, no pod for `seconds` (idle polls and resyncs of the new operator)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert env.condition(POOL, "Ready")["reason"] == "Suspended"
        assert (env.pool(POOL) or {})["status"]["idle"]["state"] == "Suspended"
        assert not _pool_pods(env) and not _wakes(env)
        time.sleep(1)


def test_a_suspended_pool_stays_so_across_a_restart_and_a_failover(
    kube_cluster: Cluster,
    own_namespace: str,
    prefect_server: PrefectServer,
    tmp_path: Path,
    own_operators: OwnOperators,
) -> None:
    """status.idle carries the state: a restarted operator (SIGTERM, a new process) and
    a new leader (the old one SIGKILLed) leave the pool suspended, then wake it for a
    due flow run."""

    def replica(name: str) -> Replica:
        return Replica(
            kube_cluster.kubeconfig,
            tmp_path / f"{name}.log",
            lease="prefect-raypool-operator",
            lease_namespace=own_namespace,
            scope=(f"--namespace={own_namespace}",),
            timing=SHORT,
            extra_env=allow_prefect(prefect_server.api_url),
        )

    first, restarted, standby = replica("first"), replica("restarted"), replica("standby")
    own_operators.add(first.log, restarted.log, standby.log)
    env = PoolDriver.on(kube_cluster, own_namespace, prefect_server.api_url)
    try:
        first.start()
        first.wait_leading(timeout=30)
        doc = env.example("zero-capacity.yaml")
        doc["spec"]["idle"] = IDLE
        env.apply(doc)
        _suspended(env, timeout=180)

        first.stop()  # SIGTERM: the Lease is released; a new process takes it at once
        restarted.start()
        restarted.wait_leading(timeout=30)
        _stays_suspended(env, 12)

        standby.start()
        restarted.kill()  # SIGKILL: the standby leads once the Lease expires
        standby.wait_leading(timeout=SHORT.lease + 30)
        _stays_suspended(env, 12)

        t0 = time.monotonic()
        _run(env, env.work_pool_name(POOL), Scheduled())  # due now
        env.wait_events(POOL, lambda es: any(e.reason == "Waking" for e in es), "a Waking Event")
        env.wait_condition(POOL, "Ready", "True", timeout=120)
        print(f"woken by the new leader, Ready {time.monotonic() - t0:.1f}s after the run")
        assert len(_wakes(env)) == 1
        env.kubectl("delete", "prp", POOL, "-n", own_namespace, "--timeout=60s")
    finally:
        for r in (first, restarted, standby):
            r.kill()
