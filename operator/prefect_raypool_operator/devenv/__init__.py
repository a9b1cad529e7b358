"""The local test bed: a real Kubernetes control plane built from source.

etcd, kube-apiserver, kube-controller-manager and kube-scheduler, kwok as the node
simulator (pods are scheduled and reported Running without containers) and the real
KubeRay operator, all as local processes. `raypool dev up` (what `make up` runs) and
the pytest fixtures in tests/cluster.py both use `ControlPlane`.
"""

from prefect_raypool_operator.devenv.binaries import Binaries, ensure_binaries
from prefect_raypool_operator.devenv.controlplane import ControlPlane
from prefect_raypool_operator.devenv.processes import Supervisor, free_port, stop_recorded

__all__ = [
    "Binaries",
    "ControlPlane",
    "Supervisor",
    "ensure_binaries",
    "free_port",
    "stop_recorded",
]
