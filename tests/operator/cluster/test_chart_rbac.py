"""The operator chart's RBAC is enough for the operator to do its whole job, and no more.

The operator runs here as a process, but with nothing more than a token of the
ServiceAccount the chart creates: a rule missing from the chart (a watch on
Deployments, Secret creation, Events) shows up as a pool that never gets Ready and
a Forbidden in the operator's log, as it would in a real cluster.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from prefect_raypool_kuberay.contract import WORKER_RULES
from testbed import REPO
from testbed.binaries import Binaries
from testbed.cluster import Cluster
from testbed.operator_log import OwnOperators
from testbed.operator_process import OperatorProcess, allow_prefect
from testbed.pooldriver import PoolDriver
from testbed.prefect_server import PrefectServer
from testbed.processes import free_port
from testbed.waiting import eventually

pytestmark = pytest.mark.controlplane
CHART = REPO / "charts" / "prefect-raypool-operator"


def _namespace(core: client.CoreV1Api, name: str) -> None:
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    eventually(
        lambda: core.list_namespaced_service_account(name).items,
        what=f"the default ServiceAccount of {name}",
    )


def _token_kubeconfig(cluster: Cluster, token: str, path: Path) -> Path:
    """The cluster's kubeconfig (server, CA) with the user swapped for a bare token."""
    config: dict[str, Any] = yaml.safe_load(cluster.kubeconfig.read_text())
    context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
    config["users"] = [{"name": context["context"]["user"], "user": {"token": token}}]
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def chart_operator(
    kube_cluster: Cluster,
    pool_crd: None,
    prefect_server: PrefectServer,
    tmp_path: Path,
    own_operators: OwnOperators,
) -> Iterator[tuple[str, OperatorProcess]]:
    """The chart installed for one watched namespace, and the operator run as its SA."""
    suffix = uuid.uuid4().hex[:6]
    watched, system, release = f"rbac-{suffix}", f"rbac-ops-{suffix}", f"rbac-{suffix}"
    core = client.CoreV1Api(kube_cluster.api_client())
    _namespace(core, watched)
    _namespace(core, system)
    helm = [str(Binaries.from_cache().helm), "--kubeconfig", str(kube_cluster.kubeconfig)]
    install = [
        *helm,
        *("install", release, str(CHART), "-n", system, "--skip-crds", "--wait=false"),
        *("--set", f"watchNamespaces={{{watched}}}"),
    ]
    installed = subprocess.run(install, capture_output=True, text=True)
    assert installed.returncode == 0, installed.stderr
    account = f"{release}-prefect-raypool-operator"
    token = kube_cluster.kubectl("create", "token", account, "-n", system).strip()
    kubeconfig = _token_kubeconfig(kube_cluster, token, tmp_path / "kubeconfig")
    op = OperatorProcess(
        kubeconfig,
        tmp_path / "operator.log",
        free_port(),
        {
            "RAYPOOL_RESYNC_SECONDS": "3",
            # As the chart runs it: elected on a Lease in the release namespace.
            "RAYPOOL_LEADER_ELECTION": "true",
            "RAYPOOL_LEADER_ELECTION_NAMESPACE": system,
            "RAYPOOL_LEADER_ELECTION_NAME": account,
            **allow_prefect(prefect_server.api_url),
            "RAYPOOL_KUBERAY_WORKER_CLUSTER_ROLE": f"{account}-kuberay-worker",
        },
        scope=(f"--namespace={watched}",),
    )
    own_operators.add(op.log)
    try:
        op.start()
        yield watched, op
    finally:
        op.stop()
        subprocess.run([*helm, "uninstall", release, "-n", system], capture_output=True)
        for ns in (watched, system):
            core.delete_namespace(ns, propagation_policy="Background")


def test_operator_runs_with_only_the_charts_rbac(
    kube_cluster: Cluster,
    chart_operator: tuple[str, OperatorProcess],
    prefect_server: PrefectServer,
) -> None:
    watched, op = chart_operator
    env = PoolDriver.on(kube_cluster, watched, prefect_server.api_url, op)
    examples = {"zero-capacity.yaml": "analytics", "head-sidecar.yaml": "reports"}
    # Ephemeral: the operator binds the chart's kuberay worker ClusterRole, which it
    # may bind but holds none of.
    examples["ephemeral.yaml"] = "nightly"
    for example, name in examples.items():
        env.apply(env.example(example))
        env.wait_condition(name, "Ready", "True")
    env.wait_events(
        "analytics", lambda es: {e.reason for e in es} >= {"Created", "Ready"}, "Created, Ready"
    )
    networking = client.NetworkingV1Api(kube_cluster.api_client())
    assert networking.read_namespaced_network_policy("analytics-ray-head", watched)
    rbac = client.RbacAuthorizationV1Api(kube_cluster.api_client())
    binding = rbac.read_namespaced_role_binding("nightly-kuberay-worker", watched)
    assert (binding.role_ref.kind, binding.role_ref.name) == (
        "ClusterRole",
        f"{account_of(op)}-kuberay-worker",
    )
    ours = "app.kubernetes.io/managed-by=prefect-raypool-operator"
    assert not rbac.list_namespaced_role(watched, label_selector=ours).items  # no Role made
    log = op.tail(1_000_000)
    assert "Leading as" in log  # it took the Lease with the chart's Role
    log = op.tail()
    assert "Forbidden" not in log and " 403" not in log, log


# --- What the chart's ServiceAccount may and may not do: a `kubectl auth can-i` matrix.

PRP, RC = "prefectraypools.prefectray.io", "rayclusters.ray.io"
CRDS = "customresourcedefinitions.apiextensions.k8s.io"
# (verb, resource, subresource): every call the operator makes in a watched namespace.
NEEDED = [
    *((verb, PRP, "") for verb in ("list", "watch", "patch")),
    ("patch", PRP, "status"),
    ("update", PRP, "finalizers"),  # blockOwnerDeletion on what it owns
    *(
        (verb, kind, "")
        for kind in (
            RC,
            "deployments.apps",
            "networkpolicies.networking.k8s.io",
            "poddisruptionbudgets.policy",
        )
        for verb in ("list", "watch", "create", "patch", "delete")
    ),
    ("get", "secrets", ""),
    ("create", "secrets", ""),
    ("list", "pods", ""),  # their status, from a watch selected by our label
    ("watch", "pods", ""),
    ("delete", "pods", ""),  # pods holding a Ray token their pool's Secret no longer has
    ("create", "events", ""),
    # An Ephemeral pool's kuberay worker: its account and its RoleBinding to the
    # chart's worker ClusterRole (bind, by name: a row per test, the release's name).
    *(
        (verb, kind, "")
        for kind in ("serviceaccounts", "rolebindings.rbac.authorization.k8s.io")
        for verb in ("list", "watch", "create", "patch", "delete")
    ),
    ("list", "rayjobs.ray.io", ""),  # the pool's count of flow-run clusters
]
# Never, in any namespace.
DENIED = [
    *((verb, "secrets", "") for verb in ("list", "watch", "update", "patch", "delete")),
    ("create", "pods", ""),
    ("create", "pods", "exec"),
    ("create", "serviceaccounts", "token"),
    ("update", PRP, ""),
    ("delete", PRP, ""),
    ("update", PRP, "status"),
    ("update", RC, ""),
    ("update", "deployments.apps", ""),
    ("update", "poddisruptionbudgets.policy", ""),
    ("create", "pods", "eviction"),  # its budgets guard pods; it evicts none
    ("patch", "rayjobs.ray.io", ""),
    ("patch", "events", ""),
    ("update", "rolebindings.rbac.authorization.k8s.io", ""),
    ("bind", "roles.rbac.authorization.k8s.io", ""),
    ("escalate", "roles.rbac.authorization.k8s.io", ""),
    # What the operator held only to pass on to the kuberay worker: the worker gets
    # them from the chart's ClusterRole, never from the operator.
    *((verb, "roles.rbac.authorization.k8s.io", "") for verb in ("create", "patch", "delete")),
    *((verb, "rayjobs.ray.io", "") for verb in ("create", "get", "delete", "patch")),
    ("get", "pods", "log"),
    # No other role to bind, and nothing to escalate.
    ("bind", "clusterroles.rbac.authorization.k8s.io/cluster-admin", ""),
    ("bind", "clusterroles.rbac.authorization.k8s.io/admin", ""),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", ""),
]
# The election's Lease: in the release namespace only, and nothing else on leases.
LEASES = "leases.coordination.k8s.io"
LEASE_NEEDED = [(verb, LEASES, "") for verb in ("get", "create", "update")]
LEASE_DENIED = [(verb, LEASES, "") for verb in ("list", "watch", "patch", "delete")]
CLUSTER_NEEDED = [("list", CRDS, ""), ("watch", CRDS, "")]
# kopf follows the watched namespaces when scoped; with --all-namespaces it never does.
SCOPED_NEEDED = [("list", "namespaces", ""), ("watch", "namespaces", "")]
CLUSTER_DENIED = [
    ("list", "secrets", "*"),
    ("watch", "secrets", "*"),
    *((verb, "namespaces", "") for verb in ("create", "update", "delete")),
    *((verb, CRDS, "") for verb in ("create", "update", "patch", "delete")),
    *((verb, "nodes", "") for verb in ("get", "list", "patch")),
    ("create", "clusterrolebindings.rbac.authorization.k8s.io", ""),
    ("bind", "clusterroles.rbac.authorization.k8s.io", ""),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", ""),
    ("impersonate", "users", ""),
    ("impersonate", "serviceaccounts", ""),
]
Check = tuple[str, str, str]


def account_of(op: OperatorProcess) -> str:
    """The chart's ServiceAccount (and fullname) the operator runs as."""
    return op.extra_env["RAYPOOL_LEADER_ELECTION_NAME"]


def _can_i(cluster: Cluster, account: str, check: Check, namespace: str | None) -> bool:
    """`kubectl auth can-i` as the account; namespace None: cluster-scoped, subresource
    "*" (no subresource): across all namespaces."""
    verb, resource, sub = check
    args = ["auth", "can-i", verb, resource, f"--as={account}"]
    if sub == "*":
        args.append("--all-namespaces")
    elif sub:
        args.append(f"--subresource={sub}")
    if namespace and sub != "*":
        args += ["-n", namespace]
    out = subprocess.run(
        [cluster.kubectl_bin, f"--kubeconfig={cluster.kubeconfig}", *args],
        capture_output=True,
        text=True,
    )
    assert out.stdout.strip() in ("yes", "no"), out.stderr
    return out.stdout.strip() == "yes"


def _matrix(
    cluster: Cluster, account: str, rows: list[tuple[Check, str | None]]
) -> dict[tuple[Check, str | None], bool]:
    with ThreadPoolExecutor(8) as pool:
        answers = pool.map(lambda row: _can_i(cluster, account, *row), rows)
        return dict(zip(rows, answers, strict=True))


@pytest.mark.parametrize("scope", ["scoped", "all-namespaces"])
def test_the_charts_service_account_may_do_what_the_operator_does_and_nothing_more(
    kube_cluster: Cluster, pool_crd: None, scope: str
) -> None:
    suffix = uuid.uuid4().hex[:6]
    watched, other, system = f"can-a-{suffix}", f"can-b-{suffix}", f"can-ops-{suffix}"
    release = f"can-{suffix}"
    core = client.CoreV1Api(kube_cluster.api_client())
    for ns in (watched, other, system):
        _namespace(core, ns)
    helm = [str(Binaries.from_cache().helm), "--kubeconfig", str(kube_cluster.kubeconfig)]
    values = ["--set", f"watchNamespaces={{{watched}}}"] if scope == "scoped" else []
    try:
        installed = subprocess.run(
            [*helm, "install", release, str(CHART), "-n", system, "--skip-crds", *values],
            capture_output=True,
            text=True,
        )
        assert installed.returncode == 0, installed.stderr
        assert "kubectl -n <namespace> get prp -w" in installed.stdout  # NOTES.txt
        fullname = f"{release}-prefect-raypool-operator"
        account = f"system:serviceaccount:{system}:{fullname}"
        # The worker's ClusterRole: exactly its contract's rules; the operator may bind it.
        rbac = client.RbacAuthorizationV1Api(kube_cluster.api_client())
        worker_role = rbac.read_cluster_role(f"{fullname}-kuberay-worker")
        assert kube_cluster.api_client().sanitize_for_serialization(worker_role.rules) == (
            WORKER_RULES
        )
        needed = [
            *NEEDED,
            ("bind", f"clusterroles.rbac.authorization.k8s.io/{fullname}-kuberay-worker", ""),
        ]
        # Where the operator works: its own namespace's pools when scoped, any otherwise.
        working = [watched] if scope == "scoped" else [watched, other, "kube-system"]
        idle = [other, "kube-system", system] if scope == "scoped" else []
        rows: list[tuple[Check, str | None]] = [
            *((c, ns) for c in needed for ns in working),
            *((c, ns) for c in needed for ns in idle),
            *((c, ns) for c in DENIED for ns in (watched, other, system)),
            *((c, None) for c in CLUSTER_NEEDED + SCOPED_NEEDED + CLUSTER_DENIED),
            *((c, ns) for c in LEASE_NEEDED + LEASE_DENIED for ns in (watched, other, system)),
        ]
        answers = _matrix(kube_cluster, account, rows)
        cluster_needed = CLUSTER_NEEDED + (SCOPED_NEEDED if scope == "scoped" else [])
        expected = {
            (check, ns): (check in needed and ns in working)
            or check in cluster_needed
            or (check in LEASE_NEEDED and ns == system)
            for check, ns in rows
        }
        wrong = {row: answer for row, answer in answers.items() if answer != expected[row]}
        assert not wrong, f"allowed (True) / denied (False) against expectation: {wrong}"
    finally:
        subprocess.run([*helm, "uninstall", release, "-n", system], capture_output=True)
        for ns in (watched, other, system):
            core.delete_namespace(ns, propagation_policy="Background")
