"""The pytest plugin of the test bed (tests/conftest.py loads it).

Fixtures: `kube_cluster` (a `Cluster` for the session), `namespace` (a fresh one per
test), `prefect_server` (a real server; PREFECT_API_URL points at it), `ray_head` (a
real `ray start --head` with token auth), `ray_multinode` (plus a zero-capacity
node) and `ray_jobs_head` (a head with its dashboard and job server).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from kubernetes import client

from testbed.cluster import Cluster, ProviderUnavailable, provide_cluster
from testbed.dataplane import (
    RayCluster,
    add_zero_capacity_node,
    patched_environ,
    start_ray_head,
    stop_ray,
)
from testbed.prefect_server import PrefectServer, start_prefect_server


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[Cluster]:
    try:
        with provide_cluster() as cluster:
            yield cluster
    except ProviderUnavailable as e:
        pytest.skip(str(e))


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


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrefectServer]:
    """A real Prefect server (SQLite) on loopback; PREFECT_API_URL points at it."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME, temporary_settings

    server = start_prefect_server(tmp_path_factory.mktemp("prefect"))
    try:
        # Prefect read its settings at import; the environment alone is not enough.
        with (
            patched_environ(server.env()),
            temporary_settings({PREFECT_API_URL: server.api_url, PREFECT_HOME: server.home}),
        ):
            yield server
            # Send what this process buffered while the server is still up.
            from prefect.events.worker import EventsWorker
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)
            EventsWorker.drain_all(timeout=10)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayCluster]:
    """A real `ray start --head` with token auth; yields address and token."""
    cluster = start_ray_head(num_cpus=2, auth_mode="token")
    try:
        yield cluster
    finally:
        stop_ray(cluster)


@pytest.fixture(scope="module")
def ray_multinode() -> Iterator[RayCluster]:
    """A head plus a zero-capacity node (`--num-cpus=0 --num-gpus=0`)."""
    cluster = start_ray_head(num_cpus=2, auth_mode="token")
    try:
        add_zero_capacity_node(cluster)
        yield cluster
    finally:
        stop_ray(cluster)


@pytest.fixture(scope="module")
def ray_jobs_head() -> Iterator[RayCluster]:
    """A head with token auth plus its dashboard and job server (Ray Job submission)."""
    cluster = start_ray_head(num_cpus=2, auth_mode="token", dashboard=True)
    try:
        yield cluster
    finally:
        stop_ray(cluster)
