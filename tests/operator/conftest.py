"""Fixtures shared by the operator's cluster tests."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from testbed import operator_log
from testbed.cluster import Cluster
from testbed.operator_process import OperatorProcess, allow_prefect, apply_pool_crd
from testbed.pooldriver import PoolDriver
from testbed.prefect_server import PrefectServer
from testbed.processes import free_port
from tests.operator.stub_http import StubServer, stub_server

# Which test owned each namespace the session operator may log about.
_NAMESPACE_OWNERS = pytest.StashKey[dict[str, tuple[str, list[str]]]]()


@pytest.fixture(scope="session")
def pool_crd(kube_cluster: Cluster) -> None:
    apply_pool_crd(kube_cluster.kubectl_bin, kube_cluster.kubeconfig)


@pytest.fixture(scope="session")
def prefect_stub() -> Iterator[StubServer]:
    """A stand-in Prefect API on the session operator's allow-list (`answering`)."""
    with stub_server() as stub:
        yield stub


@pytest.fixture(scope="session")
def dead_prefect_url() -> Iterator[str]:
    """A Prefect API URL on the session operator's allow-list where nothing listens:
    its port is held (bound, never listening) for the session, so connecting is
    refused and no other process can take it."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{held.getsockname()[1]}/api"


@pytest.fixture(scope="session")
def raypool_operator(
    kube_cluster: Cluster,
    pool_crd: None,
    prefect_server: PrefectServer,
    prefect_stub: StubServer,
    dead_prefect_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    """One operator for the session; its log is checked after each test that uses it.
    Pools may name the session's Prefect server, the stub and the dead URL."""
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    op = OperatorProcess(
        kube_cluster.kubeconfig,
        log,
        free_port(),
        {
            "RAYPOOL_RESYNC_SECONDS": "3",
            **allow_prefect(prefect_server.api_url, prefect_stub.url, dead_prefect_url),
        },
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
) -> PoolDriver:
    """Pools in this test's namespace, on the session's operator and Prefect server."""
    return PoolDriver.on(kube_cluster, namespace, prefect_server.api_url, raypool_operator)


@pytest.fixture(autouse=True)
def raypool_operator_log_clean(request: pytest.FixtureRequest) -> Iterator[None]:
    """Tests on the session operator fail if it logged an error they did not declare
    (testbed/operator_log.py). Set up before `env`, torn down after its namespace."""
    if "raypool_operator" not in request.fixturenames:
        if "namespace" in request.fixturenames:
            # The session operator watches this test's `t-*` namespace too (it may
            # start only later): what it logs about it is judged by this test's marks.
            allowed = [*operator_log.ALWAYS, *operator_log.allowed_patterns(request)]
            owners = request.config.stash.setdefault(_NAMESPACE_OWNERS, {})
            owners[request.getfixturevalue("namespace")] = (request.node.nodeid, allowed)
        yield
        return
    check: operator_log.LogCheck = request.getfixturevalue("raypool_operator_log")
    namespace = (
        request.getfixturevalue("namespace") if "namespace" in request.fixturenames else None
    )
    yield from check.around(request, namespace)


@pytest.fixture(scope="session")
def own_operators() -> operator_log.OwnOperators:
    """Where a test or fixture that starts an operator of its own registers its log."""
    return operator_log.OwnOperators()


@pytest.fixture(autouse=True)
def own_operators_log_clean(
    request: pytest.FixtureRequest, own_operators: operator_log.OwnOperators
) -> Iterator[None]:
    """Tests fail if an operator of their own (or their module's) logged an error they
    did not declare. Set up first, so torn down after the fixtures that stop those."""
    yield
    own_operators.check(request)


@pytest.fixture(scope="module", autouse=True)
def own_operators_log_clean_module(
    request: pytest.FixtureRequest, own_operators: operator_log.OwnOperators
) -> Iterator[None]:
    """What a module's own operator logged after its last test (while its fixture
    stopped it), judged by the module's allowances (`pytestmark`)."""
    yield
    own_operators.check(request)


@pytest.fixture(scope="session")
def raypool_operator_log(
    request: pytest.FixtureRequest, raypool_operator: OperatorProcess
) -> operator_log.LogCheck:
    owners = request.config.stash.setdefault(_NAMESPACE_OWNERS, {})
    return operator_log.LogCheck(raypool_operator.log, operator_log.ALWAYS, owners=owners)
