"""The controller's safety net, against the in-memory `ClusterIO` of test_controller:
an exception in a reconcile becomes a status and one Warning Event, retried with a
growing delay, not at every trigger. The same against the real API server is in
cluster/test_bad_manifests.py (an object Kubernetes refuses)."""

from __future__ import annotations

import json
from typing import Any

import kopf
import pytest
from kubernetes import client

from prefect_raypool_operator import controller as controller_module
from prefect_raypool_operator.controller import Controller
from prefect_raypool_operator.refusals import reconcile_error
from tests.operator.unit.test_controller import LOG, NS, POOL, FakeIO

pytestmark = pytest.mark.unit
Obj = dict[str, Any]


class RefusingIO(FakeIO):
    """The API server refuses every RayCluster (say, an annotation too large)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = True
        self.applies = 0

    def apply_manifest(self, manifest: Obj, force: bool = True) -> tuple[Obj, bool]:
        self.applies += 1
        if self.refuse and manifest["kind"] == "RayCluster":
            exc = client.ApiException(status=422, reason="Unprocessable Entity")
            exc.body = json.dumps(
                {
                    "message": 'RayCluster.ray.io "analytics" is invalid: '
                    "metadata.annotations: Too long: must have at most 262144 bytes"
                }
            )
            raise exc
        return super().apply_manifest(manifest, force)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(controller_module.time, "monotonic", clock)
    return clock


def _ready(io: FakeIO) -> Obj:
    status = io.pools[(NS, POOL)]["status"]
    return next(c for c in status["conditions"] if c["type"] == "Ready")


def test_an_exception_becomes_a_status_an_event_and_a_growing_delay(clock: Clock) -> None:
    io = RefusingIO()
    controller = Controller(lambda _kwargs: io)
    io.add_pool({}, generation=3)
    with pytest.raises(kopf.TemporaryError) as first:
        controller.on_spec(NS, POOL, LOG, {})
    assert first.value.delay == 5.0
    ready = _ready(io)
    assert (ready["status"], ready["reason"]) == ("False", "ReconcileError")
    assert "metadata.annotations: Too long" in ready["message"]
    assert "reconcile failed in reconcile._apply_one" in ready["message"]
    status = io.pools[(NS, POOL)]["status"]
    assert status["observedGeneration"] == 3 and status["phase"] == "Failed"
    errors = [m.split(":")[0] for r, m in io.events if r == "ReconcileError"]
    assert errors == ["Ready=False"]

    # Triggers within the delay do not reconcile; the next after it does, and doubles it.
    applies = io.applies
    for _ in range(5):
        clock.now += 0.9
        controller.on_resync(NS, POOL, LOG, {})
    assert io.applies == applies
    clock.now += 1
    with pytest.raises(kopf.TemporaryError) as second:
        controller.on_spec(NS, POOL, LOG, {})
    assert second.value.delay == 10.0 and io.applies == applies + 1
    delays = []
    for _ in range(8):
        clock.now += 1000
        with pytest.raises(kopf.TemporaryError) as again:
            controller.on_spec(NS, POOL, LOG, {})
        delays.append(again.value.delay)
    assert delays == [20.0, 40.0, 80.0, 160.0, 300.0, 300.0, 300.0, 300.0]
    # One Warning Event for the whole episode.
    assert [r for r, _ in io.events].count("ReconcileError") == 1

    # A spec change retries at once; fixed, the pool goes on and the delay is forgotten.
    io.refuse = False
    io.pools[(NS, POOL)]["metadata"]["generation"] = 4
    controller.on_resync(NS, POOL, LOG, {})
    assert _ready(io)["reason"] != "ReconcileError"
    assert io.pools[(NS, POOL)]["status"]["observedGeneration"] == 4


def test_the_message_names_the_step_and_never_a_request() -> None:
    try:
        {}["spec"]  # noqa: B018 - an operator bug stands in
    except KeyError as exc:
        problem = reconcile_error(exc)
    assert problem.reason == "ReconcileError" and not problem.permanent
    assert "KeyError: 'spec'" in problem.message
    exc = client.ApiException(status=500, reason="Internal Server Error")
    exc.body = "not json"
    exc.headers = {"Authorization": "Bearer sekrit"}
    problem = reconcile_error(exc)
    assert "500 Internal Server Error" in problem.message and "sekrit" not in problem.message
