"""Fixtures shared by the operator's cluster tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testbed.cluster import Cluster
from testbed.operator_process import OperatorProcess, apply_pool_crd
from testbed.prefect_server import PrefectServer
from testbed.processes import free_port
from tests.operator.pool_env import Env


@pytest.fixture(scope="session")
def pool_crd(kube_cluster: Cluster) -> None:
    apply_pool_crd(kube_cluster.kubectl_bin, kube_cluster.kubeconfig)


@pytest.fixture(scope="session")
def raypool_operator(
    kube_cluster: Cluster,
    pool_crd: None,
    prefect_server: PrefectServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(
        kube_cluster.kubeconfig,
        log,
        free_port(),
        {"RAYPOOL_RESYNC_SECONDS": "3"},
        # Namespace scoping by pattern: the per-test namespaces only (not `default`,
        # where the `make up` test runs its own operator).
        scope=("--namespace=t-*",),
    )
    op.start()
    try:
        yield op
    finally:
        op.stop()


@pytest.fixture
def env(
    kube_cluster: Cluster,
    namespace: str,
    raypool_operator: OperatorProcess,
    prefect_server: PrefectServer,
) -> Env:
    return Env(kube_cluster, namespace, raypool_operator, prefect_server)
