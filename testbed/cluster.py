"""A Kubernetes cluster for the tests, from one of three providers.

PREFECT_RAYPOOL_CLUSTER picks it:
- `kwok` (default): the local control plane built from source (controlplane.py),
  with kwok's simulated node and KubeRay, started for the session, stopped after it;
- `kind`: a kind cluster from kind-config.yaml through pytest-kind (needs Docker);
- `existing`: the cluster of $KUBECONFIG, e.g. `make up`'s warm `.dev/kubeconfig`.
With `kind` and `existing`, when the cluster has no RayCluster CRD the locally built
KubeRay operator is run against it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config

from testbed import REPO
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane, stop_control_plane

PROVIDERS = ("kwok", "kind", "existing")


class ProviderUnavailable(Exception):
    """The chosen provider cannot run on this machine (the message says why)."""


@dataclass
class Cluster:
    kubeconfig: Path
    kubectl_bin: str
    control_plane: ControlPlane | None = None  # set when the test bed runs it

    def api_client(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        out = subprocess.run(
            [self.kubectl_bin, f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
        )
        if check and out.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout + out.stderr if not check else out.stdout


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


@contextlib.contextmanager
def provide_cluster(provider: str | None = None) -> Iterator[Cluster]:
    provider = provider or os.environ.get("PREFECT_RAYPOOL_CLUSTER", "kwok")
    if provider == "existing":
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig:
            raise ProviderUnavailable("PREFECT_RAYPOOL_CLUSTER=existing needs KUBECONFIG set")
        with _with_kuberay(Path(kubeconfig)) as cluster:
            yield cluster
    elif provider == "kind":
        if not docker_available():
            raise ProviderUnavailable(
                "kind needs a running Docker engine; none here (use the kwok provider)"
            )
        from pytest_kind import KindCluster

        kind = KindCluster("prefect-raypool")
        kind.create(config_file=REPO / "kind-config.yaml")
        try:
            with _with_kuberay(Path(kind.kubeconfig_path)) as cluster:
                yield cluster
        finally:
            kind.delete()
    elif provider == "kwok":
        state = Path(tempfile.mkdtemp(prefix="raypool-kube-"))
        cp = ControlPlane(binaries=ensure_binaries(), state_dir=state)
        try:
            cp.start()
            yield Cluster(cp.kubeconfig, str(cp.binaries.kubectl), cp)
        finally:
            stop_control_plane(state)
            shutil.rmtree(state, ignore_errors=True)
    else:
        raise ValueError(f"PREFECT_RAYPOOL_CLUSTER={provider!r}: use one of {PROVIDERS}")


@contextlib.contextmanager
def _with_kuberay(kubeconfig: Path) -> Iterator[Cluster]:
    """Yield the cluster, running the local KubeRay operator there if it has none."""
    bins = ensure_binaries()
    cluster = Cluster(kubeconfig, str(bins.kubectl))
    crd = cluster.kubectl("get", "crd", "rayclusters.ray.io", "--ignore-not-found")
    if crd.strip():
        yield cluster
        return
    state = Path(tempfile.mkdtemp(prefix="raypool-kuberay-"))
    cp = ControlPlane(binaries=bins, state_dir=state, external_kubeconfig=kubeconfig)
    try:
        cp.start()
        yield cluster
    finally:
        stop_control_plane(state)
        shutil.rmtree(state, ignore_errors=True)


def get_or_none(read: Callable[..., Any], name: str, namespace: str) -> Any:
    """Call a kubernetes-client read function; None when the object does not exist."""
    try:
        return read(name, namespace)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise
