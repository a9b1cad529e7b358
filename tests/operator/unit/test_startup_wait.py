"""Start-up waits while the API server initializes the storage of a CRD installed with
the operator (startup.py), so a first `helm install` logs no ERROR for kopf's retries.

The API server's answer itself is exercised for real where the chart installs CRD and
operator at once (tests/e2e, whose operator-log check fails on kopf's retry ERROR)."""

from __future__ import annotations

import pytest

from prefect_raypool_operator import startup

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _scope() -> object:
    before = startup.SCOPE
    yield
    startup.SCOPE = before


@pytest.mark.parametrize(
    "args, probes",
    [
        (["--all-namespaces", "--liveness=http://0.0.0.0:8080/healthz"], [None]),
        (["-A"], [None]),
        (["--namespace=team-a", "-n", "team-b"], ["team-a", "team-b"]),
        # Patterns and exclusions (kopf's) name no namespace the operator may list.
        (["--namespace=team-*", "--namespace=!kube-system", "-n", "ml"], ["ml"]),
    ],
)
def test_scope_is_read_as_kopf_reads_the_command_line(
    args: list[str], probes: list[str | None]
) -> None:
    assert startup.Scope.from_args(args).probes() == probes


class Server:
    """Answers 429 with a Retry-After for `busy` lists, then serves."""

    def __init__(self, busy: int, retry_after: float = 1.0):
        self.busy, self.retry_after = busy, retry_after
        self.lists: list[str | None] = []
        self.now = 0.0

    def list_once(self, namespace: str | None) -> float | None:
        self.lists.append(namespace)
        if self.busy:
            self.busy -= 1
            return self.retry_after
        return None

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def wait(server: Server, logs: list[str], timeout: float = 60.0) -> bool:
    return startup.wait_until_served(
        server.list_once, logs.append, timeout, sleep=server.sleep, clock=lambda: server.now
    )


def test_waits_out_the_servers_retry_after_and_says_so_once() -> None:
    startup.SCOPE = startup.Scope.from_args(["--namespace=a", "--namespace=b"])
    server, logs = Server(busy=3, retry_after=2.0), []
    assert wait(server, logs)
    assert server.lists == ["a", "a", "a", "a", "b"]
    assert server.now == 6.0
    assert len(logs) == 1 and "initializing its storage for PrefectRayPools" in logs[0]


def test_gives_up_at_the_timeout_and_leaves_the_rest_to_kopf() -> None:
    startup.SCOPE = startup.Scope.from_args(["-A"])
    server, logs = Server(busy=100), []
    assert not wait(server, logs, timeout=5)
    assert server.now <= 5 and len(server.lists) == 6


def test_no_wait_when_served_or_when_started_without_the_entry_point() -> None:
    startup.SCOPE = startup.Scope.from_args(["-A"])
    server, logs = Server(busy=0), []
    assert wait(server, logs) and server.lists == [None] and not logs
    startup.SCOPE = None  # a bare `kopf run -m prefect_raypool_operator.main`
    server = Server(busy=5)
    assert wait(server, logs) and server.lists == []
