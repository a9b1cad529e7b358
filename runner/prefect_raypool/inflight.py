"""The Ray tasks a runner has submitted and not yet seen finish.

One place for what submitting, backpressure, waiting at exit and cancelling all
need to know: which task run each outstanding ObjectRef belongs to, which task
runs were cancelled, and whose Cancelled state is already in Prefect.
"""

from __future__ import annotations

import contextlib
import threading
from uuid import UUID

import ray

from prefect_raypool.futures import unwrap_signal_errors

#: How long cancel_all lets running tasks react to the interrupt before killing them.
CANCEL_GRACE_SECONDS = 2.0


class InFlightRayTasks:
    """ObjectRefs of unfinished Ray task return values, each with its task run id.

    A batch is one Ray task with one ObjectRef per task run: each is tracked on
    its own, so the in-flight count is a count of task runs. Thread-safe: Ray
    reports completions on its own thread.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._task_run_of: dict[ray.ObjectRef, UUID] = {}
        self._cancelled: set[UUID] = set()
        #: Task runs whose Cancelled state cancel_all already wrote to the API.
        self.cancel_recorded: set[UUID] = set()
        #: Ray tasks sent (a batch counts once): the log flush at exit needs no
        #: more calls than this.
        self.ray_tasks_sent = 0

    def track(self, ref: ray.ObjectRef, task_run_id: UUID, new_ray_task: bool) -> None:
        """Count `ref` in flight until Ray reports it done."""
        with self._lock:
            self._task_run_of[ref] = task_run_id
            self.ray_tasks_sent += new_ray_task
        ref._on_completed(lambda _value: self._forget([ref]))

    def _forget(self, refs: list[ray.ObjectRef]) -> None:
        with self._lock:
            for ref in refs:
                self._task_run_of.pop(ref, None)

    def _refs(self) -> list[ray.ObjectRef]:
        with self._lock:
            return list(self._task_run_of)

    def wait_for_room(self, room: int, max_in_flight: int | None) -> None:
        """Block until `room` more task runs fit under `max_in_flight` (None: no limit)."""
        if max_in_flight is None:
            return
        room = min(room, max_in_flight)
        while True:
            with self._lock:
                if len(self._task_run_of) + room <= max_in_flight:
                    return
                refs = list(self._task_run_of)
            with unwrap_signal_errors():
                ready, _ = ray.wait(refs, num_returns=1, timeout=1.0, fetch_local=False)
            self._forget(ready)

    def wait_all(self) -> None:
        """Block until every Ray task in flight now has finished."""
        refs = self._refs()
        if refs:
            with unwrap_signal_errors():
                ray.wait(refs, num_returns=len(refs), fetch_local=False)
        self._forget(refs)

    def cancel_all(self) -> list[UUID]:
        """Cancel every Ray task in flight; return the task run ids they carried.

        Queued tasks are dropped; running ones get an interrupt, and those still
        running after a short grace (a blocking call does not see the interrupt)
        are killed.
        """
        with self._lock:
            pending = dict(self._task_run_of)
            self._cancelled.update(pending.values())
        if not pending:
            return []
        refs = list(pending)
        # Newest first: the queued ones, so a Ray worker process freed by an
        # interrupt cannot pick one of them up in between.
        for ref in reversed(refs):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=False, recursive=True)
        with unwrap_signal_errors():
            _, still_running = ray.wait(
                refs, num_returns=len(refs), timeout=CANCEL_GRACE_SECONDS, fetch_local=False
            )
        for ref in still_running:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        self._forget(refs)
        return list(pending.values())

    def was_cancelled(self, task_run_id: UUID) -> bool:
        return task_run_id in self._cancelled

    def cancel_was_recorded(self, task_run_id: UUID) -> bool:
        return task_run_id in self.cancel_recorded
