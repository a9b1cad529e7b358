"""The `kuberay` worker's I/O rules without a server: timeouts, the watch's retries,
what cancellation may delete."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import anyio
import pytest
from kubernetes import client as k8s
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import InfrastructureNotAvailable, InfrastructureNotFound

from prefect_raypool_kuberay.worker import (
    WATCH_BACKOFF_MAX_SECONDS,
    KubeRayJobConfiguration,
    KubeRayWorker,
    _Watching,
    watch_delay,
)
from tests.kuberay.templates import configuration

pytestmark = pytest.mark.unit

RUN_ID = str(uuid.UUID(int=1))


class _Worker(KubeRayWorker):
    """The worker with its Kubernetes reads and its rounds scripted."""

    type = "kuberay-rules-test"  # registered apart: the real `kuberay` type stays

    def __init__(self, rounds: list[Any] | None = None, rayjob: Any = None) -> None:
        super().__init__(work_pool_name="p", kube_api_client=k8s.ApiClient())
        self.rounds = list(rounds or [])
        self.rayjob = rayjob
        self.deleted: list[tuple[str, str]] = []
        self.logger = logging.getLogger("test.flow_run")

    def get_flow_run_logger(self, flow_run: FlowRun) -> Any:
        return self.logger

    async def _watch_round(self, *args: Any) -> int | None:
        step = self.rounds.pop(0)
        if isinstance(step, Exception):
            raise step
        return step  # type: ignore[no-any-return]

    async def _get_rayjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.rayjob  # type: ignore[no-any-return]

    async def _delete_rayjob(self, namespace: str, name: str) -> bool:
        self.deleted.append((namespace, name))
        return True


def _config(**values: Any) -> KubeRayJobConfiguration:
    cfg = configuration(namespace="pool-ns", **values)
    return cfg.model_copy(update={"labels": {"prefect.io/flow-run-id": RUN_ID}})


def test_the_watch_survives_transient_errors(caplog: pytest.LogCaptureFixture) -> None:
    """An API server restarting, a Prefect server timing out: the round is retried,
    backing off, and the watch goes on to its verdict; the API's body stays out."""
    body = '{"message": "rayjobs \\"secret-manifest\\" is forbidden"}'
    worker = _Worker(
        [k8s.ApiException(status=503, reason="Service Unavailable"), TimeoutError(), None, 0]
    )
    worker.rounds[0].body = body
    flow_run = FlowRun(flow_id=uuid.uuid4(), name="r")
    watching = _Watching("ns", "r-abcde", None)
    cfg = _config(watch_interval_seconds=0.01)
    with caplog.at_level("WARNING", logger="test.flow_run"):
        code = anyio.run(worker._watch, flow_run, cfg, watching)
    assert code == 0 and worker.rounds == []
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "Watching RayJob ns/r-abcde failed (Kubernetes API 503 Service Unavailable); "
        "retrying (failure 1 in a row)",
        "Watching RayJob ns/r-abcde failed (TimeoutError: ); retrying (failure 2 in a row)",
    ]
    assert "secret-manifest" not in repr(warnings)
    assert watching.failures == 0  # reset by the round that worked


def test_the_watch_backs_off_up_to_a_minute() -> None:
    assert [watch_delay(5, n) for n in range(5)] == [5, 10, 20, 40, 60]
    assert watch_delay(5, 1000) == WATCH_BACKOFF_MAX_SECONDS
    assert watch_delay(120, 3) == 120  # a longer interval than the cap is kept


def test_every_kubernetes_call_has_a_timeout() -> None:
    seen: dict[str, Any] = {}

    def call(*args: Any, **kwargs: Any) -> None:
        seen.update(kwargs)

    anyio.run(lambda: _Worker()._kube(call, "ns", label_selector="x"))
    assert seen == {"label_selector": "x", "_request_timeout": (10, 30)}


def _rayjob(run_id: str) -> dict[str, Any]:
    return {"metadata": {"name": "r-abcde", "labels": {"prefect.io/flow-run-id": run_id}}}


def test_cancellation_deletes_the_rayjob_its_id_names() -> None:
    worker = _Worker(rayjob=_rayjob(RUN_ID))
    anyio.run(worker.kill_infrastructure, "data/r-abcde", _config())
    assert worker.deleted == [("data", "r-abcde")]
    # An older worker's id, a name alone: the run's namespace.
    anyio.run(worker.kill_infrastructure, "r-abcde", _config())
    assert worker.deleted[-1] == ("pool-ns", "r-abcde")


def test_cancellation_leaves_another_runs_rayjob_alone() -> None:
    worker = _Worker(rayjob=_rayjob(str(uuid.UUID(int=2))))
    with pytest.raises(InfrastructureNotAvailable, match="not flow run .*'s: left alone"):
        anyio.run(worker.kill_infrastructure, "data/r-abcde", _config())
    assert worker.deleted == []
    with pytest.raises(InfrastructureNotFound, match="RayJob data/r-abcde not found"):
        anyio.run(_Worker(rayjob=None).kill_infrastructure, "data/r-abcde", _config())
