"""The operator chart's RBAC is enough for the operator to do its whole job.

The operator runs here as a process, but with nothing more than a token of the
ServiceAccount the chart creates: a rule missing from the chart (a watch on
Deployments, Secret creation, Events) shows up as a pool that never gets Ready and
a Forbidden in the operator's log, as it would in a real cluster.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from testbed import REPO
from testbed.binaries import Binaries
from testbed.cluster import Cluster
from testbed.operator_process import OperatorProcess
from testbed.prefect_server import PrefectServer
from testbed.processes import free_port
from testbed.waiting import eventually
from tests.operator.pool_env import Env

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
    kube_cluster: Cluster, pool_crd: None, tmp_path: Path
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
        {"RAYPOOL_RESYNC_SECONDS": "3"},
        scope=(f"--namespace={watched}",),
    )
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
    env = Env(kube_cluster, watched, op, prefect_server)
    for example, name in (("zero-capacity.yaml", "analytics"), ("head-sidecar.yaml", "reports")):
        env.apply(env.example(example))
        env.wait_condition(name, "Ready", "True")
    assert {e.reason for e in env.events("analytics")} >= {"Created", "Ready"}
    log = op.tail()
    assert "Forbidden" not in log and " 403" not in log, log
