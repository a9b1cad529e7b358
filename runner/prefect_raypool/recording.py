"""Recording in Prefect the task runs whose Ray task ended without reporting a state.

A task run normally records its own states from the Ray worker process. When the
Ray task itself fails (the process died, the task was cancelled) nobody else
will, so the driver writes the Crashed or Cancelled state to the Prefect API.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import TYPE_CHECKING, Any
from uuid import UUID

from prefect._internal.states import exception_to_crashed_state_sync
from prefect.context import FlowRunContext
from prefect.states import Cancelled, State

from prefect_raypool.futures import CrashHook

if TYPE_CHECKING:
    from prefect.tasks import Task

    from prefect_raypool.inflight import InFlightRayTasks

#: The message of the Cancelled state of a task run cancelled with its flow run.
CANCELLED_MESSAGE = "Cancelled with its flow run"
#: Tries to record a state a Ray worker process could not report (see record_state).
_RECORD_ATTEMPTS = 4
#: Task runs read from the Prefect API per call (the server's default page limit).
_API_PAGE = 200

logger = logging.getLogger(__name__)


def crash_hook(task: Task[Any, Any], in_flight: InFlightRayTasks) -> CrashHook:
    """What a future of this task calls when its Ray task failed: the run's final
    state (Cancelled if the runner cancelled it, else Crashed), recorded in Prefect.

    Made at submit time: it records under the submitter's flow run and settings.
    """
    flow_ctx = FlowRunContext.get()
    flow_run_id = flow_ctx.flow_run.id if flow_ctx and flow_ctx.flow_run else None
    # The submitter's context carries the Prefect settings (API URL) to use.
    context = contextvars.copy_context()

    def record(task_run_id: UUID, exc: BaseException) -> State[Any]:
        if in_flight.was_cancelled(task_run_id):
            state: State[Any] = Cancelled(message=CANCELLED_MESSAGE)
            if in_flight.cancel_was_recorded(task_run_id):  # cancel_all wrote it already
                return state
        else:
            state = exception_to_crashed_state_sync(exc)
        # Off Ray's callback thread: this talks to the Prefect API.
        threading.Thread(
            target=context.run,
            args=(record_state, task, flow_run_id, task_run_id, state),
            daemon=True,
        ).start()
        return state

    return record


def record_state(
    task: Task[Any, Any], flow_run_id: UUID | None, task_run_id: UUID, state: State[Any]
) -> None:
    """Record the final state of a task run whose Ray task returned none.

    The Ray worker process may have died before its events reached the server,
    so the task run may not exist there yet: create it then. Its events may also
    still be on their way, and create the run meanwhile: so a failed create is
    followed by another try to set the state.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    for attempt in range(_RECORD_ATTEMPTS):
        try:
            with get_client(sync_client=True) as client:
                try:
                    client.read_task_run(task_run_id)
                    client.set_task_run_state(task_run_id, state, force=True)
                except ObjectNotFound:
                    client.create_task_run(
                        task, flow_run_id, dynamic_key=str(task_run_id), id=task_run_id, state=state
                    )
            return
        except Exception:
            logger.debug(
                "Could not record the state of task run %s (try %d)",
                task_run_id,
                attempt + 1,
                exc_info=True,
            )
            time.sleep(0.5 * (attempt + 1))


def record_cancelled(task_run_ids: list[UUID], recorded: set[UUID]) -> None:
    """Set the task runs among these that Prefect knows, and that have not ended on
    their own, to Cancelled; add each to `recorded` at once (a crash hook running
    meanwhile then does not write it again).

    Queued task runs never reached a Ray worker process, so Prefect has no record
    of them. One that was running either reported Running (then was killed), or
    reported Crashed on the interrupt: both mean cancelled with the flow run.
    """
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterId

    try:
        with get_client(sync_client=True) as client:
            for start in range(0, len(task_run_ids), _API_PAGE):
                ids = task_run_ids[start : start + _API_PAGE]
                runs = client.read_task_runs(
                    task_run_filter=TaskRunFilter(id=TaskRunFilterId(any_=ids)), limit=len(ids)
                )
                for run in runs:
                    if run.state and (
                        run.state.is_completed()
                        or run.state.is_failed()
                        or run.state.is_cancelled()
                    ):
                        continue
                    client.set_task_run_state(
                        run.id, Cancelled(message=CANCELLED_MESSAGE), force=True
                    )
                    recorded.add(run.id)
    except Exception:  # the API may be gone too; the futures still settle Cancelled
        logger.warning("Could not record cancelled task runs in Prefect", exc_info=True)
