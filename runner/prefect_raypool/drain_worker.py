"""A Prefect process worker that drains on SIGTERM instead of taking its flow runs down.

`prefect worker start --type process` ends its flow runs' subprocesses when its pod is
replaced (a rollout after any change of the pod template, a deleted pod, a placement
switch), leaving them RUNNING in Prefect with nothing running them. This worker, run
as `python -m prefect_raypool.drain_worker` by a pool's worker pods, on SIGTERM:

- stops polling for flow runs at once (the Deployment's new pod takes them), while it
  keeps heartbeating and serving cancellations of the runs it has;
- waits for its running flow runs to finish, at most `--drain-timeout` seconds;
- past that, stops the runs still going and marks them by `--on-drain-timeout`:
  `Crash` (Crashed, so the user's retries or automations apply) or `Reschedule`
  (AwaitingRetry, a Scheduled state: a new worker runs them again from the start).

Each flow run's `infrastructure_pid` is `<pod>:<pid>`, so the operator can tell a run
whose pod is gone (operator's orphans.py) and mark it Crashed.
The work pool type stays `process`: the class is used only in this process.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.schemas.objects import FlowRun, State
from prefect.states import AwaitingRetry, Crashed
from prefect.workers.process import ProcessJobConfiguration, ProcessWorker, ProcessWorkerResult

CRASH, RESCHEDULE = "Crash", "Reschedule"
POLICIES = (CRASH, RESCHEDULE)
#: The pod's name (the downward API); the host name where it is not set.
POD_NAME_ENV = "RAYPOOL_POD_NAME"
STOP_GRACE_SECONDS = 20.0  # a flow run process that ignores SIGTERM this long is killed
PROGRESS_SECONDS = 60.0  # how often a draining worker says what it still waits for


def pod_name() -> str:
    return os.environ.get(POD_NAME_ENV) or socket.gethostname()


def infrastructure_pid(pod: str, pid: int) -> str:
    return f"{pod}:{pid}"


def parse_infrastructure_pid(value: str | None) -> tuple[str, int] | None:
    """(pod, pid) from `<pod>:<pid>`; None for anything else (a plain PID, another
    worker's identifier)."""
    pod, sep, pid = (value or "").rpartition(":")
    if not sep or not pod or not pid.isdigit():
        return None
    return pod, int(pid)


def timeout_message(pod: str, timeout: float, policy: str) -> str:
    then = (
        "set back to Scheduled, to run again from the start on another worker"
        if policy == RESCHEDULE
        else "marked Crashed"
    )
    return (
        f"the Prefect worker pod {pod} was replaced and this flow run did not finish "
        f"within its drain timeout ({timeout:g}s, spec.prefect.drain.timeoutSeconds): "
        f"stopped and {then} (spec.prefect.drain.onTimeout: {policy})"
    )


class _ReportPid:
    """Hands the worker `<pod>:<pid>` as the flow run's infrastructure_pid and keeps
    the PID for a stop at the drain timeout."""

    def __init__(self, status: anyio.abc.TaskStatus[Any], on_pid: Any, pod: str) -> None:
        self._status, self._on_pid, self._pod = status, on_pid, pod

    def started(self, value: Any = None) -> None:
        if isinstance(value, int):
            self._on_pid(value)
            value = infrastructure_pid(self._pod, value)
        self._status.started(value)


with warnings.catch_warnings():
    # Same type as ProcessWorker (the work pool's type): the dispatch registry of this
    # process, and only of it, gets this class for "process".
    warnings.simplefilter("ignore")

    class DrainingProcessWorker(ProcessWorker):
        type = "process"

        def __init__(self, *args: Any, pod: str | None = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.pod = pod or pod_name()
            self.draining = False
            self.active: set[UUID] = set()  # submitted, until the worker is done with it
            self.pids: dict[UUID, int] = {}
            self.names: dict[UUID, str] = {}

        async def get_and_submit_flow_runs(self) -> list[FlowRun]:
            if self.draining:  # the replacing pod takes them; still "polling" for health
                self._last_polled_time = _now()
                return []
            return await super().get_and_submit_flow_runs()

        async def _submit_run_and_capture_errors(  # type: ignore[override]
            self, flow_run: FlowRun, task_status: Any = None
        ) -> Any:
            self.active.add(flow_run.id)
            self.names[flow_run.id] = flow_run.name
            try:
                return await super()._submit_run_and_capture_errors(flow_run, task_status)
            finally:
                self.active.discard(flow_run.id)
                self.pids.pop(flow_run.id, None)

        async def run(
            self,
            flow_run: FlowRun,
            configuration: ProcessJobConfiguration,
            task_status: anyio.abc.TaskStatus[int] | None = None,
        ) -> ProcessWorkerResult:
            status = task_status or anyio.TASK_STATUS_IGNORED

            def keep(pid: int) -> None:
                self.pids[flow_run.id] = pid

            reporter: Any = _ReportPid(status, keep, self.pod)
            return await super().run(flow_run, configuration, task_status=reporter)

        def busy(self) -> set[UUID]:
            """Flow runs this worker still has: running, or being submitted."""
            return self.active | set(self._submitting_flow_run_ids)

        async def drain(self, timeout: float, policy: str) -> None:
            """Take no new flow runs; wait for these to finish, then apply `policy`."""
            self.draining = True
            runs = self.busy()
            self._logger.info(
                "Draining: pod %s is being replaced; taking no new flow runs and waiting "
                "for %d running (at most %gs, then %s)",
                self.pod,
                len(runs),
                timeout,
                policy,
            )
            deadline = time.monotonic() + timeout
            said = time.monotonic()
            while self.busy() and time.monotonic() < deadline:
                if time.monotonic() - said >= PROGRESS_SECONDS:
                    said = time.monotonic()
                    self._logger.info(
                        "Draining: still waiting for %s (%.0fs left)",
                        self._named(self.busy()),
                        deadline - time.monotonic(),
                    )
                await anyio.sleep(0.5)
            left = self.busy()
            if not left:
                self._logger.info("Drained: no flow run left; stopping")
                return
            self._logger.warning(
                "Drain timeout (%gs): stopping %s (%s)", timeout, self._named(left), policy
            )
            await self._stop(left, timeout, policy)

        async def _stop(self, runs: set[UUID], timeout: float, policy: str) -> None:
            self._signal(runs, signal.SIGTERM)
            with anyio.move_on_after(STOP_GRACE_SECONDS):
                while self.active & runs:
                    await anyio.sleep(0.2)
            self._signal(self.active & runs, signal.SIGKILL)
            with anyio.move_on_after(10):
                while self.active & runs:  # the worker's own Crashed proposal comes first
                    await anyio.sleep(0.2)
            message = timeout_message(self.pod, timeout, policy)
            for run_id in runs:
                state: State[Any] = (
                    AwaitingRetry(scheduled_time=_now(), message=message)
                    if policy == RESCHEDULE
                    else Crashed(message=message)
                )
                try:
                    await self.client.set_flow_run_state(run_id, state, force=True)
                    self._logger.warning("Flow run %s: %s", self._named({run_id}), message)
                except Exception:
                    self._logger.exception("Could not set the state of flow run %s", run_id)

        def _signal(self, runs: set[UUID], sig: signal.Signals) -> None:
            for run_id in runs:
                pid = self.pids.get(run_id)
                if pid is not None:
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass

        def _named(self, runs: set[UUID]) -> str:
            return ", ".join(sorted(f"'{self.names.get(r, '?')}' ({r})" for r in runs))


def _now() -> Any:
    from prefect.types._datetime import now

    return now("UTC")


@dataclass(frozen=True)
class Args:
    pool: str
    work_queues: list[str]
    drain_timeout: float
    on_drain_timeout: str


def parse_args(argv: Sequence[str]) -> Args:
    parser = argparse.ArgumentParser(prog="python -m prefect_raypool.drain_worker")
    parser.add_argument("--pool", required=True, help="the Prefect work pool (type process)")
    parser.add_argument("--work-queue", action="append", default=[], dest="work_queues")
    parser.add_argument("--drain-timeout", type=float, default=3600.0)
    parser.add_argument("--on-drain-timeout", choices=POLICIES, default=CRASH)
    ns = parser.parse_args(list(argv))
    if ns.drain_timeout < 0:
        parser.error("--drain-timeout: must be 0 or more seconds")
    return Args(ns.pool, ns.work_queues, ns.drain_timeout, ns.on_drain_timeout)


async def serve(args: Args) -> None:
    """Run the worker until SIGTERM or SIGINT, then drain and return."""
    worker = DrainingProcessWorker(
        name=pod_name(), work_pool_name=args.pool, work_queues=args.work_queues or None
    )
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with anyio.create_task_group() as group:
            group.start_soon(worker.start)
            async for received in signals:
                print(
                    f"raypool: {signal.Signals(received).name}: the Prefect worker drains",
                    file=sys.stderr,
                    flush=True,
                )
                break
            await worker.drain(args.drain_timeout, args.on_drain_timeout)
            group.cancel_scope.cancel()


def main(argv: Sequence[str] | None = None) -> None:
    logging.captureWarnings(True)
    anyio.run(serve, parse_args(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
