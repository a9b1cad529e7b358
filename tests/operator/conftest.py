"""Fixtures shared by the operator's cluster tests."""

from __future__ import annotations

import pytest

from testbed.cluster import Cluster
from testbed.operator_process import apply_pool_crd


@pytest.fixture(scope="session")
def pool_crd(kube_cluster: Cluster) -> None:
    apply_pool_crd(kube_cluster.kubectl_bin, kube_cluster.kubeconfig)
