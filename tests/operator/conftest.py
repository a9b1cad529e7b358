"""Fixtures shared by the operator's cluster tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from pool_env import REPO

from cluster import Cluster
from prefect_raypool_operator import crd
from prefect_raypool_operator.devenv.operator_run import wait_established


@pytest.fixture(scope="session")
def pool_crd(kube_cluster: Cluster) -> None:
    kube_cluster.kubectl("apply", "--server-side", "-f", str(REPO / "crds" / crd.CRD_FILE))
    wait_established(Path(kube_cluster.kubectl_bin), kube_cluster.kubeconfig)
