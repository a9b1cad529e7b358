"""Kubernetes fixtures: a session-scoped cluster and a fresh namespace per test.

Ready: `kube_cluster` yields a `Cluster` (`.kubeconfig`, `.api_client()`,
`.kubectl(...)`); `namespace` yields the name of a namespace made for one test;
`eventually(fn, timeout, what)` polls, `get_or_none(read, name, ns)` reads or None.

The provider is chosen by PREFECT_RAYPOOL_CLUSTER:
- `kwok` (default): the local control plane built from source, with kwok and KubeRay
  (prefect_raypool_operator.devenv), started for the session and stopped after it;
- `kind`: a kind cluster from kind-config.yaml through pytest-kind (needs Docker);
- `existing`: the cluster of $KUBECONFIG, e.g. `make up`'s warm `.dev/kubeconfig`
  for a fast inner loop.
With `kind` and `existing`, when the cluster has no RayCluster CRD the locally built
KubeRay operator is run against it for the session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from pytest_kind import KindCluster

from prefect_raypool_operator.devenv import ControlPlane, ensure_binaries
from prefect_raypool_operator.devenv.processes import stop_recorded

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Cluster:
    kubeconfig: Path
    kubectl_bin: str

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


@pytest.fixture(scope="session")
def kube_cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    provider = os.environ.get("PREFECT_RAYPOOL_CLUSTER", "kwok")
    if provider == "existing":
        kubeconfig = os.environ.get("KUBECONFIG")
        if not kubeconfig:
            pytest.fail("PREFECT_RAYPOOL_CLUSTER=existing needs KUBECONFIG set")
        yield from _with_kuberay(Path(kubeconfig))
    elif provider == "kind":
        if not docker_available():
            pytest.skip("kind needs a running Docker engine; none here (use the kwok provider)")
        kind = KindCluster("prefect-raypool")
        kind.create(config_file=REPO / "kind-config.yaml")
        try:
            yield from _with_kuberay(Path(kind.kubeconfig_path))
        finally:
            kind.delete()
    elif provider == "kwok":
        state = Path(tempfile.mkdtemp(prefix="raypool-kube-"))
        cp = ControlPlane(binaries=ensure_binaries(), state_dir=state)
        try:
            cp.start()
            yield Cluster(cp.kubeconfig, str(cp.binaries.kubectl))
        finally:
            stop_recorded(state)
            shutil.rmtree(state, ignore_errors=True)
    else:
        pytest.fail(f"PREFECT_RAYPOOL_CLUSTER={provider!r}: use kwok, kind or existing")


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
        stop_recorded(state)
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def namespace(kube_cluster: Cluster) -> Iterator[str]:
    """A new namespace for one test, deleted (with everything in it) afterwards."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    api = client.CoreV1Api(kube_cluster.api_client())
    api.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are refused until the service-account controller made `default`.
    deadline = time.monotonic() + 60
    while True:
        try:
            api.read_namespaced_service_account("default", name)
            break
        except client.ApiException as e:
            if e.status != 404 or time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    yield name
    api.delete_namespace(name, propagation_policy="Background")


def eventually(fn: Callable[[], Any], timeout: float = 90, what: str = "") -> Any:
    """Poll fn until it returns something truthy and return that; fail after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or fn}")
        time.sleep(0.5)


def get_or_none(read: Callable[..., Any], name: str, namespace: str) -> Any:
    """Call a kubernetes-client read function; None when the object does not exist."""
    try:
        return read(name, namespace)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise
