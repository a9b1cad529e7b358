"""Attacks on a pool's network from another namespace, on the real node, which enforces
NetworkPolicy (kube-router's firewall, testbed/node.py).

An outsider pod in a namespace of its own opens TCP connections to the pool's Ray
pods: the head's GCS (6379) and dashboard (8265), a Ray worker's listening port, and
the head through its Service. Every one must fail, while the same address and port
answer the pool's own pods and the flow run completes. A control proves the probe can
succeed: the outsider reaches a pod that no policy selects, in the pool's namespace.
The same holds for an Ephemeral pool's per-run cluster (a KubeRay RayJob), probed
while its flow run goes on.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from prefect_raypool_operator import naming
from testbed.ephemeral import start_ephemeral_pool
from testbed.pooldriver import FLOW_IMAGE, PoolDriver, pool_manifest
from testbed.realstack import RealStack
from testbed.waiting import eventually

pytestmark = pytest.mark.e2e

GCS, DASHBOARD = naming.GCS_PORT, naming.DASHBOARD_PORT
#: How long kube-router may take to guard a pod it just saw (a full sync per change).
ENFORCED_WITHIN = 30
#: Prints "open", or the error's class (ConnectionRefusedError: kube-router REJECTs).
PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()\n"
    "    print('open')\n"
    "except OSError as e:\n"
    "    print(type(e).__name__)\n"
)
#: Prints a TCP port the pod listens on, on every address (not loopback only).
LISTENING = (
    "ports = set()\n"
    "for line in open('/proc/net/tcp').read().splitlines()[1:]:\n"
    "    local, state = line.split()[1], line.split()[3]\n"
    "    ip, port = local.split(':')\n"
    "    if state == '0A' and ip == '00000000':\n"
    "        ports.add(int(port, 16))\n"
    "print(min(ports))\n"
)


@dataclass
class Pod:
    """A pod to probe from: `probe(host, port)` is "open" or why the connection failed."""

    kubectl: Any
    namespace: str
    name: str
    container: str | None = None

    def python(self, code: str, *args: str) -> str:
        container = ["-c", self.container] if self.container else []
        out = self.kubectl(
            "exec", "-n", self.namespace, self.name, *container, "--", "python", "-c", code, *args
        )
        return str(out).strip().splitlines()[-1]

    def probe(self, host: str, port: int) -> str:
        return self.python(PROBE, host, str(port))


def _pod_of(pools: PoolDriver, pod: Any) -> Pod:
    return Pod(pools.kubectl, pools.namespace, pod.metadata.name, pod.spec.containers[0].name)


def _run_pod(pools: PoolDriver, name: str, command: list[str], labels: dict[str, str]) -> Pod:
    """A pod of the flow image (loaded on the node, never pulled) running `command`;
    no requests: a best-effort pod fits beside the pools."""
    manifest = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": pools.namespace, "labels": labels},
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "containers": [
                {
                    "name": "main",
                    "image": FLOW_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": command,
                },
            ],  # fmt: skip
        },
    }
    pools.apply(manifest)
    return Pod(pools.kubectl, pools.namespace, name)


def _wait_running(pools: PoolDriver, name: str, timeout: float = 120) -> str:
    """The pod's IP once it runs."""

    def running() -> str | None:
        pod = pools.core.read_namespaced_pod(name, pools.namespace)
        return pod.status.pod_ip if pod.status.phase == "Running" else None

    return str(eventually(running, timeout, f"pod {pools.namespace}/{name} running"))


@pytest.fixture
def outsider(real_stack: RealStack, pools: PoolDriver) -> Iterator[Pod]:
    """The attacker: a pod in a namespace of its own, of the same cluster."""
    other = PoolDriver(
        real_stack.kubeconfig,
        real_stack.kubectl,
        real_stack.prefect.api_url,
        f"outsider-{uuid.uuid4().hex[:6]}",
    )
    other.create_namespace()
    try:
        pod = _run_pod(other, "outsider", ["sleep", "infinity"], {"app": "outsider"})
        _wait_running(other, "outsider")
        yield pod
    finally:
        other.delete()


@pytest.fixture
def bystander(pools: PoolDriver) -> str:
    """A pod in the pool's namespace that no policy selects, listening on GCS's port:
    the control. Returns its IP."""
    server = (
        "import socketserver as s\n"
        f"s.TCPServer(('', {GCS}), s.BaseRequestHandler).serve_forever()\n"
    )
    _run_pod(pools, "bystander", ["python", "-c", server], {"app": "bystander"})
    return _wait_running(pools, "bystander")


def _blocked(outsider: Pod, targets: dict[str, tuple[str, int]]) -> dict[str, str]:
    """What the outsider gets from each target, once none answers it (kube-router may
    take a moment to guard a new pod); the last answers when some still do."""
    last: dict[str, str] = {}

    def all_refused() -> bool:
        last.update({what: outsider.probe(*target) for what, target in targets.items()})
        return "open" not in last.values()

    t0 = time.monotonic()
    try:
        eventually(all_refused, ENFORCED_WITHIN, "the policy to block the outsider", 1)
    except TimeoutError:
        pass
    print(f"the outsider got, after {time.monotonic() - t0:.1f}s: {last}")
    return last


@pytest.mark.parametrize("placement", ["ZeroCapacityNode", "HeadSidecar"])
def test_outsider_cannot_reach_a_warm_pools_ray_pods(
    pools: PoolDriver, outsider: Pod, bystander: str, placement: str
) -> None:
    # One name per placement: the other's work pool may still be released as this starts.
    name = {"ZeroCapacityNode": "npz", "HeadSidecar": "nps"}[placement]
    pools.apply(pool_manifest(name, pools.prefect_api_url, placement))
    pools.wait_ready(name)
    head = pools.head_pod(name)
    (worker,) = pools.pods(f"ray.io/cluster={name},ray.io/node-type=worker")
    head_ip, worker_ip = head.status.pod_ip, worker.status.pod_ip
    worker_port = int(_pod_of(pools, worker).python(LISTENING))
    service = f"{naming.head_service_fqdn(name, pools.namespace)}.cluster.local"

    # The control: the probe succeeds where no policy applies, across namespaces.
    eventually(lambda: outsider.probe(bystander, GCS) == "open", 60, "the bystander open")

    # The pool's own pods reach each other on the very ports the outsider is denied.
    own = {
        "worker -> head GCS": _pod_of(pools, worker).probe(head_ip, GCS),
        "worker -> head dashboard": _pod_of(pools, worker).probe(head_ip, DASHBOARD),
        "head -> worker": _pod_of(pools, head).probe(worker_ip, worker_port),
        "worker -> head Service GCS": _pod_of(pools, worker).probe(service, GCS),
    }
    assert set(own.values()) == {"open"}, own

    targets = {
        "head GCS": (head_ip, GCS),
        "head dashboard": (head_ip, DASHBOARD),
        f"worker port {worker_port}": (worker_ip, worker_port),
        "head Service GCS": (service, GCS),
        "head Service dashboard": (service, DASHBOARD),
    }
    got = _blocked(outsider, targets)
    assert "open" not in got.values(), f"the outsider reached the pool's pods: {got}"
    # Still open to it: the bystander (the block is the policy's, not the probe's).
    assert outsider.probe(bystander, GCS) == "open"

    # The pool works behind its policy: a flow run on its Ray workers completes.
    run_id = pools.run_deployment(name, "count_to.py:count_to", "count-to", {"highest_number": 4})
    run = pools.wait_final(run_id)
    assert run.state.type.value == "COMPLETED", f"{run.state}\n{pools.logs(name)}"


#: Tasks of 0.5 s on a Ray worker of 2 CPUs: the run lasts long enough to probe it.
EPHEMERAL_COUNT = 120


def test_outsider_cannot_reach_a_flow_runs_own_ray_cluster(
    pools: PoolDriver, outsider: Pod, bystander: str
) -> None:
    start_ephemeral_pool(pools, "eph")
    eventually(lambda: outsider.probe(bystander, GCS) == "open", 60, "the bystander open")
    run_id = pools.run_deployment(
        "eph", "count_to.py:count_to", "count-to", {"highest_number": EPHEMERAL_COUNT}
    )
    of_run = f"prefect.io/flow-run-id={run_id}"

    def cluster_up() -> tuple[Any, Any] | None:
        """The run's head and Ray worker, once both run and the worker reaches the
        head's GCS and dashboard (the dashboard starts last)."""
        heads = pools.pods(f"{of_run},ray.io/node-type=head")
        workers = pools.pods(f"{of_run},ray.io/node-type=worker")
        if not heads or not workers or not heads[0].status.pod_ip:
            return None
        if {heads[0].status.phase, workers[0].status.phase} != {"Running"}:
            return None
        worker = _pod_of(pools, workers[0])
        ip = heads[0].status.pod_ip
        up = worker.probe(ip, GCS) == "open" and worker.probe(ip, DASHBOARD) == "open"
        return (heads[0], workers[0]) if up else None

    head, worker = eventually(cluster_up, 300, "the run's Ray cluster up", 2)
    labels = head.metadata.labels
    assert labels["prefectray.io/pool"] == "eph", labels  # what the policy selects
    got = _blocked(
        outsider,
        {"RayJob head GCS": (head.status.pod_ip, GCS),
         "RayJob head dashboard": (head.status.pod_ip, DASHBOARD)},
    )  # fmt: skip
    # Probed while the run went on: its cluster was still there.
    still = [p.metadata.name for p in pools.pods(f"{of_run},ray.io/node-type=head")]
    assert head.metadata.name in still, "the run ended before the probes: raise EPHEMERAL_COUNT"
    assert "open" not in got.values(), f"the outsider reached the run's cluster: {got}"
    assert outsider.probe(bystander, GCS) == "open"

    run = pools.wait_final(run_id, 480)
    rayjobs = pools.kubectl("get", "rayjobs", "-n", pools.namespace, "-o", "json")
    assert run.state.type.value == "COMPLETED", (
        f"{run.state}\n{json.dumps(json.loads(rayjobs)['items'], indent=1)[:3000]}"
    )
