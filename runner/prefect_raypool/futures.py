"""PrefectRayFuture: a Prefect 3 future backed by a Ray ObjectRef."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from uuid import UUID

import ray
from prefect._internal.states import exception_to_crashed_state_sync
from prefect.futures import PrefectFuture, PrefectFutureList, PrefectWrappedFuture
from prefect.results import ResultRecord
from prefect.states import State

R = TypeVar("R")

#: Called with (task_run_id, exception) when the Ray task itself failed (not the
#: Prefect task run): the worker died, the task was cancelled, an upstream Ray
#: task failed. Returns the final state to report (and records it in Prefect).
CrashHook = Callable[[UUID, BaseException], State[Any]]


@contextlib.contextmanager
def unwrap_signal_errors() -> Iterator[None]:
    """Let what a signal handler raised during a blocking Ray call out as itself.

    Ray's `get` and `wait` run Python signal handlers from inside their C++ wait
    loop, and an exception the handler raises comes out as a SystemError wrapping
    it. Prefect's SIGTERM handler raises TerminationSignal, which is how a flow
    run cancelled from Prefect ends as Cancelled (and Ctrl-C raises
    KeyboardInterrupt): as a SystemError, the flow would merely fail, and the
    runner would wait for its outstanding Ray tasks instead of cancelling them.
    """
    try:
        yield
    except SystemError as exc:
        cause = exc.__cause__
        if isinstance(cause, BaseException) and not isinstance(cause, Exception):
            raise cause from None
        raise


class PrefectRayFuture(PrefectWrappedFuture[R, "ray.ObjectRef"]):
    """The future of a task run submitted to Ray.

    The Ray task returns the run's final State. If the Ray task itself fails
    (crashed worker, cancellation), the future resolves to a Crashed state.
    """

    def __init__(
        self, task_run_id: UUID, wrapped_future: ray.ObjectRef, on_crash: CrashHook | None = None
    ) -> None:
        super().__init__(task_run_id, wrapped_future)
        self._on_crash = on_crash
        self._state_lock = threading.Lock()

    def _settle(self, value: Any) -> None:
        with self._state_lock:
            if self._final_state is not None:
                return
            if isinstance(value, BaseException):
                if self._on_crash is not None:
                    self._final_state = self._on_crash(self.task_run_id, value)
                else:
                    self._final_state = exception_to_crashed_state_sync(value)
            elif isinstance(value, State):
                self._final_state = value

    def _fetch(self, timeout: float | None) -> bool:
        """Wait for the Ray task; True once the final state is known."""
        if self._final_state is not None:
            return True
        try:
            with unwrap_signal_errors():
                value = ray.get(self._wrapped_future, timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            return False
        except Exception as exc:  # the Ray task failed: crashed or cancelled
            value = exc
        self._settle(value)
        return True

    def wait(self, timeout: float | None = None) -> None:
        self._fetch(timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> R:
        if not self._fetch(timeout):
            raise TimeoutError(
                f"Task run {self.task_run_id} did not complete within {timeout} seconds"
            )
        state = self._final_state
        assert state is not None
        if state.is_completed() and isinstance(state.data, ResultRecord):
            # The value came back in memory: skip Prefect's async result dispatch,
            # which costs the driver about a millisecond per call.
            return state.data.result  # type: ignore[no-any-return]
        return state.result(raise_on_failure=raise_on_failure, _sync=True)  # type: ignore[call-overload,no-any-return]

    def add_done_callback(self, fn: Callable[[PrefectFuture[R]], None]) -> None:
        if self._final_state is not None:
            fn(self)
            return

        def on_ray_done(value: Any) -> None:
            self._settle(value)
            fn(self)

        self._wrapped_future._on_completed(on_ray_done)

    def __repr__(self) -> str:
        return f"PrefectRayFuture(task_run_id={self.task_run_id})"


class PrefectRayFutureList(PrefectFutureList[R]):
    """The futures of a map: waits on all of them in bulk through Ray.

    Prefect's list waits future by future through callbacks; one `ray.wait`
    over all the ObjectRefs costs the driver far less on a large map.
    """

    def _ray_futures(self) -> list[PrefectRayFuture[R]]:
        return [f for f in self if isinstance(f, PrefectRayFuture)]

    def _settle_ready(self, timeout: float | None) -> list[PrefectRayFuture[R]]:
        """Settle whatever finishes within `timeout`; return the newly settled futures."""
        pending = {f.wrapped_future: f for f in self._ray_futures() if f._final_state is None}
        if not pending:
            return []
        with unwrap_signal_errors():
            ready, _ = ray.wait(
                list(pending), num_returns=len(pending), timeout=timeout, fetch_local=True
            )
            if not ready:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=0)
        try:
            with unwrap_signal_errors():
                values = ray.get(ready)
        except Exception:  # some Ray task failed: settle one by one
            for ref in ready:
                pending[ref]._fetch(None)
        else:
            for ref, value in zip(ready, values, strict=True):
                pending[ref]._settle(value)
        return [pending[ref] for ref in ready]

    def wait(self, timeout: float | None = None) -> None:
        if len(self._ray_futures()) != len(self):
            super().wait(timeout)
            return
        self._settle_ready(timeout)

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> list[R]:
        if len(self._ray_futures()) != len(self):  # mixed futures: Prefect's way
            return super().result(timeout=timeout, raise_on_failure=raise_on_failure)
        deadline = None if timeout is None else time.monotonic() + timeout
        while any(f._final_state is None for f in self):
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0)
            # Short waits, so a failure raises as soon as it is known.
            step = 0.5 if remaining is None else min(remaining, 0.5)
            for future in self._settle_ready(step):
                if raise_on_failure:
                    future.result(raise_on_failure=True)
            if deadline is not None and time.monotonic() >= deadline:
                if any(f._final_state is None for f in self):
                    raise TimeoutError(
                        f"Timed out waiting for all futures to complete within {timeout} seconds"
                    )
        return [f.result(raise_on_failure=raise_on_failure) for f in self]
