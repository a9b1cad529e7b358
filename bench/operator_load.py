"""The operator under load, on the local control plane with kwok's simulated nodes.

    .venv/bin/python -m bench.operator_load [--pools 500] [--namespaces 20]
        [--unrelated 5000] [--steady 180] [--compare-unfiltered]

1. `--unrelated` Deployments (not ours, paused, 0 replicas) spread over the namespaces, made
   and synced by the controller-manager before the operator starts, as in a cluster
   where they have long existed: the operator's memory with them present (and, with
   --compare-unfiltered, of the operator with the owned kinds' watches not filtered
   by the API server: kopf's client-side filter only).
2. `--pools` PrefectRayPools across `--namespaces` namespaces, applied at once: the
   time until every pool's RayCluster and worker Deployment exist and its status is
   written for the current generation, and until every pool is Ready (each poll
   prints what the others wait for: their first condition not True); the operator's
   peak RSS (VmHWM, its process and children) and CPU seconds (user+system) meanwhile;
   its API requests per pool.
3. Steady state, nothing changing, for `--steady` seconds: its requests per minute.

Requests are counted by the API server, not the operator: the operator has an
identity of its own and the API server an audit log (testbed/audit.py). The pools
have no Ray worker pods (replicas 0): a head pod and a Prefect worker pod each, so
500 pools fit a few simulated nodes.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

from prefect_raypool_operator import kinds, naming
from prefect_raypool_operator.config import MANAGED_SELECTOR, Config
from prefect_raypool_operator.status import RAY_PODS_UP_TO_DATE, READY
from testbed import audit
from testbed.binaries import ensure_binaries
from testbed.controlplane import KWOK_NODE_ANNOTATION, NODE_NAME, ControlPlane
from testbed.operator_process import OperatorProcess, allow_prefect, apply_pool_crd
from testbed.prefect_server import start_prefect_server
from testbed.processes import free_port, stop_recorded

OPERATOR_USER = "raypool-operator"
POOL = kinds.POOL
TINY = {"cpu": "10m", "memory": "64Mi"}
CM_QPS = 200  # kube-controller-manager's client rate (see Bench)
PODS_PER_NODE = 480  # of the simulated node's 500, some slack
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _pool(name: str, api_url: str) -> dict[str, Any]:
    return {
        "apiVersion": POOL.api_version,
        "kind": POOL.kind,
        "metadata": {"name": name},
        "spec": {
            "ray": {
                "head": {"resources": TINY},
                "workerGroups": [{"name": "cpu", "replicas": 0, "minReplicas": 0}],
            },
            "prefect": {"apiUrl": api_url, "resources": TINY},
        },
    }


UNRELATED_LABEL = {"raypool-load-bench": "unrelated"}


def _unrelated(name: str) -> client.V1Deployment:
    """A Deployment that is not ours. Paused: the controller-manager makes no ReplicaSet
    for it, so 5,000 of them do not keep the test bed's one controller-manager busy
    (and the pools' own Deployments waiting) for many minutes; the operator is sent
    them (or not) the same."""
    labels = {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels={**labels, **UNRELATED_LABEL}),
        spec=client.V1DeploymentSpec(
            paused=True,
            replicas=0,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(
                    containers=[client.V1Container(name="app", image="example/app:1")]
                ),
            ),
        ),
    )


@dataclass(frozen=True)
class Usage:
    rss_mib: float  # now
    hwm_mib: float  # peak so far
    cpu_s: float  # user + system, reaped children included


def usage(session: int) -> Usage:
    """Of every process in the operator's session (it starts its own: spawn_logged)."""
    rss = hwm = cpu = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            if int(fields[3]) != session:  # field 6 of stat: the session id
                continue
            cpu += sum(int(f) for f in fields[11:15]) / CLK_TCK  # utime stime cutime cstime
            for line in (entry / "status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    kib = int(value.split()[0])
                    if key == "VmRSS":
                        rss += kib / 1024
                    else:
                        hwm += kib / 1024
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return Usage(rss, hwm, cpu)


class Bench:
    def __init__(self, args: argparse.Namespace, state: Path):
        self.args, self.state = args, state
        self.audit_log = state / "audit.log"
        self.cp = ControlPlane(
            ensure_binaries(),
            state,
            audit_log=self.audit_log,
            users=(OPERATOR_USER,),
            kuberay_args=(f"--reconcile-concurrency={args.kuberay_concurrency}",),
            # Its default 20 requests/s, shared by all its controllers, syncs 5,000
            # fresh Deployments in tens of minutes here (409 conflicts retried under
            # the same limit); clusters of that size raise it.
            controller_manager_args=(f"--kube-api-qps={CM_QPS}", f"--kube-api-burst={2 * CM_QPS}"),
        )
        self.rows: list[tuple[str, str]] = []

    def row(self, label: str, value: str) -> None:
        self.rows.append((label, value))
        print(f"  {label:<58} {value}", flush=True)

    # ---- set-up ----------------------------------------------------------------

    def start(self) -> None:
        self.cp.start()
        self.prefect = start_prefect_server(self.state / "prefect")
        apply_pool_crd(self.cp.binaries.kubectl, self.cp.kubeconfig)
        api = config.new_client_from_config(config_file=str(self.cp.kubeconfig))
        self.core, self.apps = client.CoreV1Api(api), client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.namespaces = [f"load-{i}" for i in range(self.args.namespaces)]
        for ns in self.namespaces:
            self.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=ns)))
        self._add_nodes(math.ceil(2 * self.args.pools / PODS_PER_NODE))

    def _add_nodes(self, wanted: int) -> None:
        """More simulated nodes like the control plane's own, for the pools' pods."""
        node = self.core.read_node(NODE_NAME)
        for i in range(1, wanted):
            name = f"kwok-node-{i}"
            labels = {**node.metadata.labels, "kubernetes.io/hostname": name}
            body = {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": labels,
                    "annotations": {KWOK_NODE_ANNOTATION: "fake"},
                },
                "status": {
                    "allocatable": node.status.allocatable,
                    "capacity": node.status.capacity,
                },
            }
            self.core.create_node(body)

    def _at_once(self, count: int, make: Callable[[int], Any]) -> None:
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(make, range(count)))

    def operator(self, log: str, extra_args: tuple[str, ...] = ()) -> OperatorProcess:
        op = OperatorProcess(
            self.cp.user_kubeconfig(OPERATOR_USER),
            self.state / log,
            free_port(),
            allow_prefect(self.prefect.api_url),
            extra_args=extra_args,
        )
        op.start(timeout=300)
        return op

    # ---- phases ----------------------------------------------------------------

    def unrelated(self) -> None:
        n, spaces = self.args.unrelated, self.namespaces
        if not n:
            return
        print(f"== {n} unrelated Deployments present", flush=True)
        t0 = time.monotonic()
        self._at_once(
            n,
            lambda i: self.apps.create_namespaced_deployment(
                spaces[i % len(spaces)], _unrelated(f"other-{i}")
            ),
        )
        print(f"  (made in {time.monotonic() - t0:.0f}s)", flush=True)
        self._wait_unrelated_observed(n)
        variants = [("filtered by the API server", ())]
        if self.args.compare_unfiltered:
            variants.append(("unfiltered (kopf's client-side filter only)", UNFILTERED))
        for label, extra in variants:
            op = self.operator(f"operator-idle-{len(self.rows)}.log", extra)
            assert op.proc is not None
            time.sleep(self.args.settle)  # lists done, watches open
            use = usage(op.proc.pid)
            self.row(f"idle RSS, {label}", f"{use.rss_mib:.0f} MiB (peak {use.hwm_mib:.0f})")
            op.stop()

    def _wait_unrelated_observed(self, n: int) -> None:
        """Until the controller-manager has synced every unrelated Deployment, as in a
        cluster where they have long existed. Otherwise the pools' own Deployments
        queue behind them in its deployment controller for many minutes, and the
        pools' Ready measures that backlog."""
        t0 = time.monotonic()
        selector = ",".join(f"{k}={v}" for k, v in UNRELATED_LABEL.items())
        while time.monotonic() - t0 < self.args.timeout:
            items = self.apps.list_deployment_for_all_namespaces(label_selector=selector).items
            synced = sum(
                1
                for d in items
                if d.status and d.status.observed_generation == d.metadata.generation
            )
            print(f"  {time.monotonic() - t0:5.0f}s: {synced}/{n} synced", flush=True)
            if synced == n:
                return
            time.sleep(self.args.poll * 2)
        raise TimeoutError(f"the controller-manager had not synced the {n} Deployments")

    def converge(self) -> OperatorProcess:
        n, spaces = self.args.pools, self.namespaces
        print(f"== {n} pools across {len(spaces)} namespaces, applied at once", flush=True)
        op = self.operator("operator.log")
        assert op.proc is not None
        time.sleep(self.args.settle)
        before, offset = usage(op.proc.pid), self._audit_end()
        t0 = time.monotonic()
        self._at_once(
            n,
            lambda i: self.custom.create_namespaced_custom_object(
                POOL.group,
                POOL.version,
                spaces[i % len(spaces)],
                POOL.plural,
                _pool(f"p{i}", self.prefect.api_url),
            ),
        )
        applied = time.monotonic() - t0
        made_at = ready_at = None
        until_made: list[audit.Request] = []
        cpu_made = 0.0
        peak_rss = 0.0
        deadline = t0 + self.args.timeout
        while ready_at is None and time.monotonic() < deadline:
            peak_rss = max(peak_rss, usage(op.proc.pid).rss_mib)
            made, ready, waiting = self._progress()
            now = time.monotonic() - t0
            if made_at is None and made == n:
                made_at = now
                until_made = audit.requests(self.audit_log, OPERATOR_USER, offset)[0]
                cpu_made = usage(op.proc.pid).cpu_s - before.cpu_s
            if ready == n:
                ready_at = now
            else:
                print(
                    f"  {now:5.0f}s: {made}/{n} made and observed, {ready}/{n} Ready; "
                    f"not Ready: {_top(waiting)}",
                    flush=True,
                )
                time.sleep(self.args.poll)
        after = usage(op.proc.pid)
        self.row("pools applied (by the bench, 16 threads)", f"{applied:.1f}s")
        self.row("until every RayCluster + worker Deployment + status", _secs(made_at))
        self.row("until every pool Ready", _secs(ready_at))
        self.row("operator peak RSS (VmHWM, its processes)", f"{after.hwm_mib:.0f} MiB")
        self.row("operator RSS sampled during convergence (max)", f"{peak_rss:.0f} MiB")
        # Until every pool was made and observed; later, resyncs add up (see steady()).
        self.row("operator CPU until then (user+system)", f"{cpu_made:.1f}s")
        self.row("operator API requests until then", f"{len(until_made)}")
        self.row("  per pool", f"{len(until_made) / n:.1f}")
        _breakdown(until_made, n)
        return op

    def steady(self, op: OperatorProcess) -> None:
        assert op.proc is not None
        seconds = self.args.steady
        print(f"== steady state, nothing changing, {seconds:.0f}s", flush=True)
        time.sleep(self.args.settle)
        before, offset = usage(op.proc.pid), self._audit_end()
        time.sleep(seconds)
        after = usage(op.proc.pid)
        found, _ = audit.requests(self.audit_log, OPERATOR_USER, offset)
        minutes = seconds / 60
        self.row("steady requests per minute", f"{len(found) / minutes:.0f}")
        self.row("  per pool per minute", f"{len(found) / minutes / self.args.pools:.2f}")
        self.row(
            "steady CPU (user+system) per minute", f"{(after.cpu_s - before.cpu_s) / minutes:.1f}s"
        )
        self.row("steady RSS", f"{after.rss_mib:.0f} MiB")
        _breakdown(found, self.args.pools * minutes, "per pool per minute")

    # ---- helpers ---------------------------------------------------------------

    def _audit_end(self) -> int:
        return audit.requests(self.audit_log, OPERATOR_USER)[1]

    def _progress(self) -> tuple[int, int, Counter[str]]:
        """Pools whose RayCluster and worker Deployment exist and whose status is
        written for their generation; pools Ready; what the others wait for (their
        first condition not True, with its reason)."""
        pools = self.custom.list_cluster_custom_object(POOL.group, POOL.version, POOL.plural)
        clusters = {
            (c["metadata"]["namespace"], c["metadata"]["name"])
            for c in self.custom.list_cluster_custom_object(
                "ray.io", "v1", "rayclusters", label_selector=MANAGED_SELECTOR
            )["items"]
        }
        workers = {
            (d.metadata.namespace, d.metadata.name)
            for d in self.apps.list_deployment_for_all_namespaces(
                label_selector=MANAGED_SELECTOR
            ).items
        }
        made = ready = 0
        waiting: Counter[str] = Counter()
        for pool in pools["items"]:
            meta, status = pool["metadata"], pool.get("status") or {}
            ns, name = meta["namespace"], meta["name"]
            if (
                (ns, naming.ray_cluster(name)) in clusters
                and (ns, naming.prefect_worker_deployment(name)) in workers
                and status.get("observedGeneration") == meta["generation"]
            ):
                made += 1
            conditions = status.get("conditions") or []
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                ready += 1
            else:
                waiting[_waiting_for(conditions)] += 1
        return made, ready, waiting

    def stop(self) -> None:
        if hasattr(self, "prefect"):
            self.prefect.stop()
        stop_recorded(self.state)


UNFILTERED = ("-m", "bench.unfiltered_watches")


def _waiting_for(conditions: list[dict[str, Any]]) -> str:
    """The first condition of a pool that is not True, as `Type=Status/Reason`."""
    for c in conditions:
        if c["type"] not in (READY, RAY_PODS_UP_TO_DATE) and c["status"] != "True":
            return f"{c['type']}={c['status']}/{c.get('reason', '')}"
    return "no status yet" if not conditions else "Ready not yet True"


def _top(counts: Counter[str], k: int = 3) -> str:
    return ", ".join(f"{count} {what}" for what, count in counts.most_common(k)) or "-"


def _secs(value: float | None) -> str:
    return f"{value:.1f}s" if value is not None else "not within the timeout"


def _breakdown(found: list[audit.Request], per: float, unit: str = "per pool") -> None:
    for key, count in audit.by_verb_and_kind(found).most_common(12):
        print(f"      {count / per:8.2f} {unit}  {key}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pools", type=int, default=500)
    parser.add_argument("--namespaces", type=int, default=20)
    parser.add_argument("--unrelated", type=int, default=5000)
    parser.add_argument("--compare-unfiltered", action="store_true")
    parser.add_argument("--steady", type=float, default=180, help="seconds at steady state")
    parser.add_argument("--settle", type=float, default=20, help="seconds before each measure")
    parser.add_argument("--timeout", type=float, default=900, help="seconds to converge")
    parser.add_argument("--poll", type=float, default=3)
    parser.add_argument(
        "--kuberay-concurrency",
        type=int,
        default=1,
        help="the KubeRay operator's --reconcile-concurrency (its chart's default: 1)",
    )
    args = parser.parse_args()
    state = Path(tempfile.mkdtemp(prefix="raypool-load-"))
    bench = Bench(args, state)
    print(
        f"resync every {Config.from_env().resync_seconds:.0f}s, {os.cpu_count()} cores, "
        f"kwok simulated nodes, KubeRay --reconcile-concurrency={args.kuberay_concurrency}, "
        f"kube-controller-manager --kube-api-qps={CM_QPS}; "
        f"state in {state}",
        flush=True,
    )
    op = None
    try:
        bench.start()
        bench.unrelated()
        op = bench.converge()
        bench.steady(op)
    finally:
        if op:
            op.stop()
        bench.stop()
    print("\n| measure | value |\n|---|---|")
    for label, value in bench.rows:
        print(f"| {label.strip()} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
