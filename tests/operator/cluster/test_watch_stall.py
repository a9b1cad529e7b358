"""A stalled watch fails the liveness probe, on the real control plane.

The operator here is its own process (not the session one), scoped to a namespace
of its own and reaching the API server through a loopback proxy that the test
freezes: connections stay open, bytes stop (kopf #1276, dask-kubernetes #620).
Short settings: the API server ends each watch after 4 s (what a quiet stream hears),
kopf re-opens a silent stream after 6 s, the probe fails after 12 s of silence.
"""

from __future__ import annotations

import json
import re
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from testbed.cluster import Cluster
from testbed.operator_log import OwnOperators
from testbed.operator_process import OperatorProcess, allow_prefect
from testbed.pooldriver import PoolDriver
from testbed.prefect_server import PrefectServer
from testbed.processes import free_port
from testbed.tcp_proxy import FreezableProxy, freezable
from testbed.waiting import eventually

pytestmark = pytest.mark.controlplane

STALE_AFTER = 12.0
PROBE_CACHE = 10.0  # kopf answers from its last probe results for 10 s


def probe(op: OperatorProcess) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(op.health_url, timeout=5) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, {}


@pytest.fixture
def stall_env(
    kube_cluster: Cluster,
    prefect_server: PrefectServer,
    pool_crd: None,
    tmp_path: Path,
    own_operators: OwnOperators,
) -> Iterator[tuple[PoolDriver, OperatorProcess, FreezableProxy]]:
    # Not a `t-*` namespace: the session operator must not reconcile these pools.
    ns = f"stall-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube_cluster.api_client())
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
    with freezable(kube_cluster.kubeconfig, tmp_path / "kubeconfig") as (proxy, kubeconfig):
        op = OperatorProcess(
            kubeconfig,
            tmp_path / "operator.log",
            free_port(),
            {
                "RAYPOOL_RESYNC_SECONDS": "3",
                "RAYPOOL_WATCH_SERVER_TIMEOUT": "4",
                "RAYPOOL_WATCH_INACTIVITY_TIMEOUT": "6",
                "RAYPOOL_WATCH_STALE_SECONDS": str(STALE_AFTER),
                "RAYPOOL_KUBE_REQUEST_TIMEOUT": "5",
                **allow_prefect(prefect_server.api_url),
            },
            scope=(f"--namespace={ns}",),
        )
        own_operators.add(op.log)
        op.start()
        try:
            yield PoolDriver.on(kube_cluster, ns, prefect_server.api_url, op), op, proxy
        finally:
            proxy.thaw()
            op.stop()
            core.delete_namespace(ns, propagation_policy="Background")


@pytest.mark.operator_log_allows(
    # The point of the test: the watch probe fails; kopf logs the activity's failure and
    # aiohttp the exception that turns it into the probe's 500, at each probe.
    r"Activity 'watch' failed permanently: watch streams silent longer than 12s",
    r"(?s)Error handling request from 127\.0\.0\.1\n.*"
    r"PermanentError: watch streams silent longer than 12s",
    # While frozen, the API requests of a reconcile (the resync timer), its status write
    # and kopf's status patches time out (RAYPOOL_KUBE_REQUEST_TIMEOUT); each is retried
    # after the thaw, and said in one line: `\Z` lets no traceback follow.
    r"\[stall-[0-9a-f]+/analytics\] [^\n]*ReadTimeoutError: "
    r"HTTPSConnectionPool\(host='127\.0\.0\.1', port=\d+\): Read timed out[^\n]*\Z",
    r"Request attempt #\d+/\d+ failed; will retry: "
    r"\w+ https://127\.0\.0\.1:\d+/\S+ -> TimeoutError\(\)",
)
def test_a_stalled_watch_fails_the_probe_until_it_flows_again(
    stall_env: tuple[PoolDriver, OperatorProcess, FreezableProxy],
) -> None:
    env, op, proxy = stall_env
    doc = env.example("zero-capacity.yaml")
    env.apply(doc)
    eventually(lambda: env.raycluster("analytics"), timeout=30, what="the RayCluster")

    def watching() -> bool:
        status, body = probe(op)  # the first answers are from start-up (cached 10 s)
        return status == 200 and body["watch"]["streams"] >= 2  # pools and what they own

    eventually(watching, timeout=30, what="a green probe with the streams open")

    proxy.freeze()
    frozen_at = time.monotonic()
    doc["spec"]["ray"]["workerGroups"][0]["replicas"] = 1
    env.apply(doc)  # straight to the API server: the operator cannot see it
    eventually(
        lambda: probe(op)[0] == 500,
        timeout=STALE_AFTER + PROBE_CACHE + 10,
        what="the probe to fail while the watch is frozen",
    )
    failed_after = time.monotonic() - frozen_at
    assert failed_after > STALE_AFTER - PROBE_CACHE, failed_after

    def names_the_pools_stream() -> bool:
        # The pools' stream heard our own status write last: it may go stale a little
        # after the owned kinds' streams that failed the probe first.
        probe(op)
        stale = re.findall(r"watch streams silent longer than 12s: (.*)", op.log.read_text())
        return any(f"prefectraypools.v1alpha1.prefectray.io in {env.namespace}" in s for s in stale)

    eventually(names_the_pools_stream, timeout=PROBE_CACHE + 15, what="the pools' stream named")
    log = op.log.read_text(errors="replace")
    # The reconcile-freshness probe (the old /healthz) held: timers kept reconciling
    # the cached bodies, so only the watch probe noticed.
    assert "Activity 'reconcile' failed" not in log, log[-3000:]
    replicas = env.raycluster("analytics")["spec"]["workerGroupSpecs"][0]["replicas"]  # type: ignore[index]
    assert replicas == 0, "the operator saw a change through a frozen watch?"

    proxy.thaw()
    thawed_at = time.monotonic()
    eventually(lambda: probe(op)[0] == 200, timeout=45, what="the probe green again")
    eventually(
        lambda: (env.raycluster("analytics") or {})["spec"]["workerGroupSpecs"][0]["replicas"] == 1,
        timeout=30,
        what="the change made during the stall to be applied",
    )
    green_after = time.monotonic() - thawed_at
    print(f"probe failed {failed_after:.0f}s into the freeze, green {green_after:.0f}s after")
