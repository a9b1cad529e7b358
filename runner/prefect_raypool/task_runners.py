"""RayTaskRunner: Prefect task runs as Ray tasks, a drop-in for prefect_ray's runner.

Per submit the driver sends only what changes: the task run id, the parameters
and ObjectRefs. The task object and the serialized flow-run context go into the
object store once and are cached by the worker processes (see ray_worker.py);
upstream futures travel as ObjectRefs that Ray resolves on the cluster; shared
(unmapped) arguments of a map are put into the object store once.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import logging
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Self, TypeVar
from uuid import UUID

import ray
from prefect._internal.states import exception_to_crashed_state_sync
from prefect.client.schemas.objects import RunInput
from prefect.context import FlowRunContext, SettingsContext, TagsContext, TaskRunContext
from prefect.context import serialize_context as prefect_serialize_context
from prefect.futures import PrefectFuture
from prefect.states import Cancelled, State
from prefect.task_runners import TaskRunner
from prefect.utilities.annotations import allow_failure, opaque, quote, unmapped
from prefect.utilities.collections import visit_collection
from prefect.utilities.engine import collect_task_run_inputs_sync

from prefect_raypool import ray_worker
from prefect_raypool.addressing import (
    RayAuthTokenMissingError,
    Resolution,
    auth_error_message,
    ray_temp_dir,
    resolve_address,
)
from prefect_raypool.context import RemoteOptionsContext, remote_options_from_env
from prefect_raypool.futures import PrefectRayFuture, PrefectRayFutureList, unwrap_signal_errors
from prefect_raypool.ray_worker import SharedSlot, Slot

if TYPE_CHECKING:
    from prefect.tasks import Task

R = TypeVar("R")

_SCALARS = (int, float, str, bytes, bool, type(None), UUID)
#: Strings and bytes at least this long are shared through the object store.
_SHARE_MIN_BYTES = 64 * 1024
#: Ray options we set unless the user overrides them through remote_options:
#: Prefect owns retries, so Ray must not re-run a task run on its own.
_DEFAULT_REMOTE_OPTIONS: dict[str, Any] = {"max_retries": 0}
#: How long cancel_all lets running tasks react to the interrupt before killing them.
_CANCEL_GRACE_SECONDS = 2.0
#: Ray Client connection attempts (see _connect).
_CLIENT_CONNECT_ATTEMPTS = 3
#: At most this many log-flush calls at disconnect (one per leased worker, ideally).
_MAX_FLUSH_CALLS = 64
#: The message of the Cancelled state of a task run cancelled with its flow run.
CANCELLED_MESSAGE = "Cancelled with its flow run"
#: Tries to record a state a worker could not report (see _record_state).
_RECORD_ATTEMPTS = 4
#: Task runs read from the Prefect API per call (the server's default page limit).
_API_PAGE = 200
#: By default a map runs up to this many task runs per Ray task (see `_batch_size`).
_MAX_BATCH = 8
#: ...and batches only when that leaves at least this many Ray tasks per cluster CPU.
_MIN_BATCHES_PER_CPU = 4


class RayTaskRunner(TaskRunner[PrefectRayFuture[Any]]):
    """Run Prefect task runs as Ray tasks.

    Args:
        address: where Ray is. None: attach to a running local Ray (RAY_ADDRESS or
            a raylet socket under /tmp/ray/session_latest), else start a temporary
            local instance. "auto": attach or raise with what was looked for.
            "ray://host:10001": Ray Client. "host:6379": a GCS address.
        init_kwargs: extra keyword arguments for `ray.init` (namespace defaults to
            "prefect"); a `runtime_env` here is passed through as is. Prefect's API
            URL and key reach the workers without it (see ray_worker.py).
        max_in_flight: the most task runs submitted to Ray and not yet finished;
            `submit` blocks beyond it (backpressure for huge maps). None: no limit.
        quiet_workers: keep each task run's routine "Finished in state Completed()"
            line off the console (Ray ships worker output to the driver, which
            costs more than a no-op task); it is still sent to the Prefect API.
            Warnings, errors, your own logs and prints are always shown.
        max_batch: the most task runs of a map sent to Ray as one Ray task. A large
            map (at least 4 batches per cluster CPU) runs its task runs in batches,
            which saves Ray's per-task cost and the per-task event flush; each task
            run keeps its own ObjectRef, state and result. 1: one Ray task per run.
        default_remote_options: Ray remote options for every task run (e.g.
            {"num_cpus": 2}). They override the PREFECT_RAYPOOL_TASK_* variables;
            `remote_options(...)` blocks override them.
    """

    def __init__(
        self,
        address: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
        max_in_flight: int | None = 2000,
        quiet_workers: bool = True,
        max_batch: int = _MAX_BATCH,
        default_remote_options: dict[str, Any] | None = None,
    ) -> None:
        self.address = address
        self.init_kwargs = dict(init_kwargs) if init_kwargs else {}
        self.init_kwargs.setdefault("namespace", "prefect")
        if max_in_flight is not None and max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1 or None, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.quiet_workers = quiet_workers
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.max_batch = max_batch
        self.default_remote_options = dict(default_remote_options or {})
        #: Defaults from PREFECT_RAYPOOL_TASK_*, read when the runner starts (or
        #: handed down with the flow-run context to a runner inside a Ray worker).
        self._env_options: dict[str, Any] | None = None
        self._owns_ray = False
        self._started_local = False
        self._lock = threading.Lock()
        self._in_flight: dict[ray.ObjectRef, UUID] = {}
        self._cancelled: set[UUID] = set()
        self._task_refs: dict[int, tuple[Any, ray.ObjectRef]] = {}
        self._context_refs: dict[tuple[Any, ...], tuple[Any, ray.ObjectRef]] = {}
        self._remote_fns: dict[tuple[Any, ...], Any] = {}
        self._batch_fns: dict[tuple[Any, ...], Any] = {}
        #: Ray tasks sent so far: the log flush at exit needs no more calls than this.
        self._ray_tasks_sent = 0
        self._collecting = threading.local()
        self._client_warned = False
        #: Task runs whose Cancelled state cancel_all already wrote to the API.
        self._recorded: set[UUID] = set()
        #: The flow run submitting here (the engine keeps its state up to date).
        self._flow_run: Any = None
        super().__init__()

    # ------------------------------------------------------------------ config

    def duplicate(self) -> Self:
        return type(self)(
            address=self.address,
            init_kwargs=self.init_kwargs,
            max_in_flight=self.max_in_flight,
            quiet_workers=self.quiet_workers,
            max_batch=self.max_batch,
            default_remote_options=self.default_remote_options,
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RayTaskRunner)
            and self.address == other.address
            and self.init_kwargs == other.init_kwargs
            and self.max_in_flight == other.max_in_flight
            and self.quiet_workers == other.quiet_workers
            and self.max_batch == other.max_batch
            and self.default_remote_options == other.default_remote_options
        )

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with the flow into Ray workers: ship only the configuration.
        return {
            "address": self.address,
            "init_kwargs": self.init_kwargs,
            "max_in_flight": self.max_in_flight,
            "quiet_workers": self.quiet_workers,
            "max_batch": self.max_batch,
            "default_remote_options": self.default_remote_options,
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        super().__enter__()
        try:
            if self._env_options is None:
                self._env_options = remote_options_from_env()
            self._connect()
        except BaseException:
            super().__exit__(None, None, None)
            raise
        return self

    def _connect(self) -> None:
        if ray.is_initialized():
            self.logger.debug("Ray is already initialized in this process; using it.")
            self._owns_ray = False
            return
        resolution = resolve_address(self.address, ray_temp_dir(self.init_kwargs))
        kwargs = self._init_kwargs_for(resolution)
        self.logger.info(
            "Starting a temporary local Ray instance"
            if resolution.mode == "start"
            else f"Connecting to Ray at {resolution.address}"
        )
        sigterm_handler = _sigterm_handler()
        try:
            self._init_ray(resolution, kwargs)
        finally:
            _restore_sigterm_handler(sigterm_handler)
        self._owns_ray = True
        self._started_local = resolution.mode == "start"

    def _init_ray(self, resolution: Resolution, kwargs: dict[str, Any]) -> None:
        for attempt in range(1, _CLIENT_CONNECT_ATTEMPTS + 1):
            try:
                ray.init(resolution.address, **kwargs)
                break
            except ConnectionAbortedError as exc:
                # Ray Client starts a server process per client on the head; under
                # load it can die at start-up ("Initialization failure from server").
                client = str(resolution.address or "").startswith("ray://")
                if not client or attempt == _CLIENT_CONNECT_ATTEMPTS:
                    raise
                self.logger.warning(f"Ray Client connection failed ({exc}); retrying")
                time.sleep(attempt)
            except Exception as exc:
                if _is_auth_error(exc):
                    message = auth_error_message(resolution.address, exc)
                    raise RayAuthTokenMissingError(message) from exc
                raise

    def _init_kwargs_for(self, resolution: Resolution) -> dict[str, Any]:
        kwargs = dict(self.init_kwargs)
        if resolution.node_temp_dir is not None:
            kwargs.setdefault("_temp_dir", str(resolution.node_temp_dir))
        kwargs.setdefault("logging_level", logging.WARNING)
        kwargs.setdefault("log_to_driver", True)
        # No job-level runtime_env is added for Prefect's settings: it would make
        # Ray start fresh workers through the runtime-env agent (seconds on a cold
        # start). Each worker exports the flow's settings itself (ray_worker.py),
        # on every node; the user's runtime_env passes through untouched.
        return kwargs

    def _task_slots(self, options: dict[str, Any]) -> int:
        """How many task runs with these options the cluster runs at once (at least 1)."""
        resources = ray.cluster_resources()
        slots = []
        for option, resource in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
            amount = options.get(option, 1 if option == "num_cpus" else 0)
            if amount:
                slots.append(int(resources.get(resource, 0) // amount))
        if not slots:  # asks for no CPU nor GPU: as many as there are CPUs
            slots.append(int(resources.get("CPU", 1)))
        return max(min(slots), 1)

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        try:
            failed = exc_type is not None or self._flow_run_failed()
            if failed:
                self.cancel_all()
            else:
                self._wait_in_flight()
            # Leaving a failed or cancelled flow run (whose process may be killed
            # soon), wait only for live workers, not for replacements of killed ones.
            self._flush_worker_logs(timeout=1.5 if failed else 10)
        finally:
            self._flow_run = None
            self._task_refs.clear()
            self._context_refs.clear()
            self._remote_fns.clear()
            self._batch_fns.clear()
            self._ray_tasks_sent = 0
            if self._owns_ray and ray.is_initialized():
                self.logger.debug("Shutting down the Ray driver this runner started")
                ray.shutdown()
            self._owns_ray = False
            self._started_local = False
            super().__exit__(exc_type, exc_value, traceback)

    def _flow_run_failed(self) -> bool:
        """Whether the flow run is leaving the runner without succeeding.

        An exception in the flow function does not reach __exit__: the engine
        handles it first (Failed, or AwaitingRetry) and then closes the runner.
        """
        state = getattr(self._flow_run, "state", None)
        if state is None:
            return False
        return state.is_scheduled() or (state.is_final() and not state.is_completed())

    def _wait_in_flight(self) -> None:
        with self._lock:
            refs = list(self._in_flight)
        if refs:
            with unwrap_signal_errors():
                ray.wait(refs, num_returns=len(refs), fetch_local=False)
        with self._lock:
            for ref in refs:
                self._in_flight.pop(ref, None)

    def _flush_worker_logs(self, timeout: float) -> None:
        """Have the workers send buffered Prefect logs before this driver disconnects.

        Only needed when this runner disconnects: Ray then kills the job's
        workers without exit handlers, and Prefect sends logs in batches.
        """
        if not (self._owns_ray and ray.is_initialized() and (self._remote_fns or self._batch_fns)):
            return
        try:
            # The options of ordinary task runs, to land on the workers that ran
            # them: Ray hands a task to the job's most recently idle worker first.
            # No more calls than Ray tasks sent: a spare call would start a
            # fresh worker, which imports Prefect (seconds) to flush nothing.
            options = self._default_options()
            fn = _remote(ray_worker.run_task_run).options(**options)
            calls = min(self._task_slots(options), self._ray_tasks_sent, _MAX_FLUSH_CALLS)
            refs = [fn.remote([], None, {}, None, None, False) for _ in range(calls)]
            with unwrap_signal_errors():
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
            pids = set(ray.get(done))
            self.logger.debug(f"Flushed Prefect logs on {len(pids)} Ray worker(s) of {calls} asked")
        except Exception:  # best effort: never fail a flow run on log flushing
            self.logger.debug("Could not flush Ray worker logs", exc_info=True)

    def cancel_all(self) -> None:
        """Cancel every Ray task this runner submitted that has not finished.

        Called when the flow run fails, is cancelled or is terminated. Queued
        tasks are dropped; running ones get an interrupt, and those still running
        after a short grace (a blocking call does not see the interrupt) are
        killed. The task runs that had started are recorded as Cancelled before
        this returns: the process may exit right after (a cancelled flow run's
        process is terminated), and nobody may ever wait on their futures.
        """
        with self._lock:
            pending = dict(self._in_flight)
            self._cancelled.update(pending.values())
        if not pending:
            return
        refs = list(pending)
        # Newest first: the queued ones, so a worker freed by an interrupt cannot
        # pick one of them up in between.
        for ref in reversed(refs):
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=False, recursive=True)
        with unwrap_signal_errors():
            _, still_running = ray.wait(
                refs, num_returns=len(refs), timeout=_CANCEL_GRACE_SECONDS, fetch_local=False
            )
        for ref in still_running:
            with contextlib.suppress(Exception):
                ray.cancel(ref, force=True)
        with self._lock:
            for ref in refs:
                self._in_flight.pop(ref, None)
        self.logger.info("Cancelled %d outstanding Ray task(s)", len(refs))
        _record_cancelled(list(pending.values()), self._recorded)

    # ------------------------------------------------------------------ submit

    def submit(  # type: ignore[override]
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
        dependencies: dict[str, set[RunInput]] | None = None,
    ) -> PrefectRayFuture[Any]:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        batch: list[_Pending] | None = getattr(self._collecting, "batch", None)
        if batch is None:
            self._apply_backpressure()
        from prefect._internal.uuid7 import uuid7

        task_run_id = uuid7()
        refs: list[ray.ObjectRef] = []
        has_shared: list[bool] = []
        parameters = dict(parameters)
        deps: dict[str, set[RunInput]] = {k: set(v) for k, v in (dependencies or {}).items()}
        for key, value in parameters.items():
            if isinstance(value, _SCALARS):
                continue
            # Upstream links are recorded here, since the worker only sees values.
            inputs = collect_task_run_inputs_sync(value)
            if inputs:
                deps.setdefault(key, set()).update(inputs)
            parameters[key] = self._swap_refs(value, refs, has_shared)
        wait_for_arg = self._swap_refs(list(wait_for), refs, has_shared) if wait_for else None
        handles = [self._task_ref(task), self._context_ref()]
        options_key, options = self._remote_options(task)
        run = (task_run_id, parameters, wait_for_arg, deps or None, bool(refs or has_shared))
        if batch is not None:
            # Inside a map: sent to Ray in batches once the map is complete.
            future: PrefectRayFuture[Any] = PrefectRayFuture(
                task_run_id=task_run_id,
                wrapped_future=None,  # type: ignore[arg-type]
                on_crash=self._crash_recorder(task),
            )
            batch.append(_Pending(future, handles, options_key, options, run, refs))
            return future
        fn = self._remote_fn(task, options_key, options)
        object_ref = fn.remote(handles, *run, *refs)
        self._track(object_ref, task_run_id, new_ray_task=True)
        return PrefectRayFuture(
            task_run_id=task_run_id, wrapped_future=object_ref, on_crash=self._crash_recorder(task)
        )

    def _track(self, object_ref: ray.ObjectRef, task_run_id: UUID, new_ray_task: bool) -> None:
        with self._lock:
            self._in_flight[object_ref] = task_run_id
            self._ray_tasks_sent += new_ray_task
        object_ref._on_completed(lambda _value: self._forget(object_ref))

    def map(  # type: ignore[override]
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> PrefectRayFutureList[Any]:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        # Shared (unmapped) arguments go into the object store once, not once per task.
        shared: dict[str, Any] = {}
        for key, value in parameters.items():
            inner = value.unwrap() if isinstance(value, allow_failure | opaque | quote) else value
            if isinstance(inner, unmapped) and _worth_sharing(inner.value):
                ref = ray.put(inner.value)
                shared[key] = _SharedRef(ref, isinstance(inner.value, str | bytes))
                parameters = {**parameters, key: _rewrap(value, unmapped(shared[key]))}
        pending: list[_Pending] = []
        self._collecting.batch = pending
        try:
            futures = super().map(task, parameters, wait_for)
        finally:
            self._collecting.batch = None
            self._send_batches(task, pending)
        return PrefectRayFutureList(futures)  # type: ignore[abstract]

    def _send_batches(self, task: Task[Any, Any], pending: list[_Pending]) -> None:
        """Send a map's task runs to Ray, several per Ray task on a large map.

        A no-op task run costs Ray a task submission, a worker round trip and an
        event flush; a batch pays those once. Each task run keeps its own Ray
        return value (ObjectRef), so futures, upstream links and results work
        as for single task runs.
        """
        size = self._batch_size(len(pending))
        start = 0
        while start < len(pending):
            first = pending[start]
            end = start + 1
            while (
                end < len(pending)
                and end - start < size
                and pending[end].options_key == first.options_key
                and pending[end].handles == first.handles
            ):
                end += 1
            chunk = pending[start:end]
            start = end
            self._apply_backpressure(len(chunk))
            if len(chunk) == 1:
                fn = self._remote_fn(task, first.options_key, first.options)
                object_refs = [fn.remote(first.handles, *first.run, *first.refs)]
            else:
                specs = []
                all_refs: list[ray.ObjectRef] = []
                for item in chunk:
                    specs.append((*item.run, len(all_refs), len(item.refs)))
                    all_refs.extend(item.refs)
                fn = self._batch_fn(first.options_key, first.options, len(chunk))
                object_refs = fn.remote(first.handles, specs, *all_refs)
            for i, (item, object_ref) in enumerate(zip(chunk, object_refs, strict=True)):
                item.future._wrapped_future = object_ref
                self._track(object_ref, item.future.task_run_id, new_ray_task=i == 0)

    def _batch_size(self, count: int) -> int:
        if self.max_batch == 1 or count < 2 * _MIN_BATCHES_PER_CPU:
            return 1
        try:
            cpus = max(int(ray.cluster_resources().get("CPU", 1)), 1)
        except Exception:
            cpus = 1
        size = min(self.max_batch, count // (cpus * _MIN_BATCHES_PER_CPU))
        if self.max_in_flight is not None:
            size = min(size, self.max_in_flight)
        return max(size, 1)

    def _apply_backpressure(self, room: int = 1) -> None:
        if self.max_in_flight is None:
            return
        room = min(room, self.max_in_flight)
        while True:
            with self._lock:
                if len(self._in_flight) + room <= self.max_in_flight:
                    return
                refs = list(self._in_flight)
            with unwrap_signal_errors():
                ready, _ = ray.wait(refs, num_returns=1, timeout=1.0, fetch_local=False)
            with self._lock:
                for ref in ready:
                    self._in_flight.pop(ref, None)

    def _forget(self, ref: ray.ObjectRef) -> None:
        with self._lock:
            self._in_flight.pop(ref, None)

    def _swap_refs(self, value: Any, refs: list[ray.ObjectRef], has_shared: list[bool]) -> Any:
        """Replace our futures and shared refs by Slots over top-level Ray arguments."""

        def swap(expr: Any) -> Any:
            if isinstance(expr, PrefectRayFuture):
                if expr._final_state is not None:
                    return expr._final_state
                refs.append(expr.wrapped_future)
                return Slot(len(refs) - 1)
            if isinstance(expr, _SharedRef):
                if expr.immutable:
                    has_shared.append(True)
                    return SharedSlot(expr.ref)
                refs.append(expr.ref)
                return Slot(len(refs) - 1)
            return expr

        return visit_collection(value, visit_fn=swap, return_data=True)

    def _task_ref(self, task: Task[Any, Any]) -> ray.ObjectRef:
        # Keyed by identity; the entry holds the task so the id stays unique.
        entry = self._task_refs.get(id(task))
        if entry is None or entry[0] is not task:
            entry = (task, ray.put(task))
            self._task_refs[id(task)] = entry
        return entry[1]

    def _context_ref(self) -> ray.ObjectRef:
        flow_ctx = FlowRunContext.get()
        if self._flow_run is None and flow_ctx is not None:
            self._flow_run = flow_ctx.flow_run
        task_ctx = TaskRunContext.get()
        tags_ctx = TagsContext.get()
        settings_ctx = SettingsContext.get()
        key = (
            id(flow_ctx),
            id(task_ctx),
            tuple(sorted(tags_ctx.current_tags)) if tags_ctx else (),
            id(settings_ctx),
        )
        entry = self._context_refs.get(key)
        if entry is None:
            serialized = prefect_serialize_context()
            serialized["prefect_raypool"] = {
                "quiet_workers": self.quiet_workers,
                # Nested task runs, submitted from inside a worker, get the same defaults.
                "env_options": self._env_options or {},
            }
            if self._started_local:
                _share_ephemeral_server(serialized)
            entry = ((flow_ctx, task_ctx, settings_ctx), ray.put(serialized))
            self._context_refs[key] = entry
        return entry[1]

    def _default_options(self) -> dict[str, Any]:
        """Ray options of a task run outside any remote_options block; later sources win."""
        return {
            **_DEFAULT_REMOTE_OPTIONS,
            **(self._env_options or {}),
            **self.default_remote_options,
        }

    def _remote_options(self, task: Task[Any, Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        options = {**self._default_options(), **RemoteOptionsContext.get().current_remote_options}
        options.setdefault("name", task.name)
        return tuple(sorted((k, repr(v)) for k, v in options.items())), options

    def _remote_fn(
        self, task: Task[Any, Any], key: tuple[Any, ...], options: dict[str, Any]
    ) -> Any:
        fn = self._remote_fns.get(key)
        if fn is None:
            if self._is_client() and not self._client_warned:
                self._warn_client_imports(task)
            fn = _remote(ray_worker.run_task_run).options(**options)
            self._remote_fns[key] = fn
        return fn

    def _batch_fn(self, key: tuple[Any, ...], options: dict[str, Any], count: int) -> Any:
        fn = self._batch_fns.get((key, count))
        if fn is None:
            fn = _remote(ray_worker.run_task_runs).options(**options, num_returns=count)
            self._batch_fns[(key, count)] = fn
        return fn

    def _is_client(self) -> bool:
        try:
            return bool(ray.util.client.ray.is_connected())
        except Exception:
            return False

    def _warn_client_imports(self, task: Task[Any, Any]) -> None:
        from prefect_raypool.pickled_modules import modules_needed_by

        self._client_warned = True
        modules = modules_needed_by(task, FlowRunContext.get())
        warnings.warn(
            "RayTaskRunner is using Ray Client (ray://): the Ray head unpickles this "
            "flow's tasks, so it must be able to import: " + ", ".join(modules),
            stacklevel=3,
        )

    def _crash_recorder(self, task: Task[Any, Any]) -> Any:
        flow_ctx = FlowRunContext.get()
        flow_run_id = flow_ctx.flow_run.id if flow_ctx and flow_ctx.flow_run else None
        # The submitter's context carries the Prefect settings (API URL) to use.
        context = contextvars.copy_context()

        def record(task_run_id: UUID, exc: BaseException) -> State[Any]:
            if task_run_id in self._cancelled:
                state: State[Any] = Cancelled(message=CANCELLED_MESSAGE)
                if task_run_id in self._recorded:  # cancel_all wrote it already
                    return state
            else:
                state = exception_to_crashed_state_sync(exc)
            # Off Ray's callback thread: this talks to the Prefect API.
            threading.Thread(
                target=context.run,
                args=(_record_state, task, flow_run_id, task_run_id, state),
                daemon=True,
            ).start()
            return state

        return record


def _record_state(
    task: Task[Any, Any], flow_run_id: UUID | None, task_run_id: UUID, state: State[Any]
) -> None:
    """The Ray task ended without returning a State (crashed worker, cancellation).

    Record the state in Prefect. The worker may have died before its events
    reached the server, so the task run may not exist there yet: create it then.
    Its events may also still be on their way, and create the run meanwhile: so
    a failed create is followed by another try to set the state.
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
            logging.getLogger(__name__).debug(
                "Could not record the state of task run %s (try %d)",
                task_run_id,
                attempt + 1,
                exc_info=True,
            )
            time.sleep(0.5 * (attempt + 1))


def _record_cancelled(task_run_ids: list[UUID], recorded: set[UUID]) -> None:
    """Set the task runs among these that Prefect knows, and that have not ended on
    their own, to Cancelled; add them to `recorded`.

    Queued task runs never reached a worker, so Prefect has no record of them.
    One that a worker was running either reported Running (then was killed), or
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
        logging.getLogger(__name__).warning(
            "Could not record cancelled task runs in Prefect", exc_info=True
        )


def _sigterm_handler() -> Any:
    """The current SIGTERM handler, or None off the main thread (signals are per main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.getsignal(signal.SIGTERM)


def _restore_sigterm_handler(previous: Any) -> None:
    """Undo ray.init's SIGTERM handler where the process had one of its own.

    A driver's ray.init replaces the handler with one that calls sys.exit. Prefect's
    flow engine installs its own first: it turns SIGTERM into TerminationSignal and
    reads the intent its worker sent before the signal, which is how cancelling a
    flow run from Prefect reaches the engine (Cancelled, not Crashed). Without a
    handler of its own (SIG_DFL), Ray's is kept: a clean exit, which cancels the
    outstanding Ray tasks, beats dying on the spot.
    """
    if previous is None or previous == signal.SIG_DFL:
        return
    if signal.getsignal(signal.SIGTERM) is not previous:
        signal.signal(signal.SIGTERM, previous)


class _Pending:
    """A task run of a map, waiting to be sent to Ray with its batch."""

    __slots__ = ("future", "handles", "options", "options_key", "refs", "run")

    def __init__(
        self,
        future: PrefectRayFuture[Any],
        handles: list[ray.ObjectRef],
        options_key: tuple[Any, ...],
        options: dict[str, Any],
        run: tuple[Any, ...],
        refs: list[ray.ObjectRef],
    ) -> None:
        self.future = future
        self.handles = handles
        self.options_key = options_key
        self.options = options
        self.run = run
        self.refs = refs


class _SharedRef:
    """An unmapped argument already in the object store."""

    __slots__ = ("immutable", "ref")

    def __init__(self, ref: ray.ObjectRef, immutable: bool) -> None:
        self.ref = ref
        self.immutable = immutable


def _rewrap(original: Any, new_value: Any) -> Any:
    if isinstance(original, allow_failure | opaque | quote):
        return original.rewrap(new_value)
    return new_value


def _share_ephemeral_server(serialized: dict[str, Any]) -> None:
    """With no PREFECT_API_URL, the driver runs a temporary local Prefect server.

    Point the workers of a local Ray this runner started at it: otherwise each
    worker would start a server of its own and the task runs would be recorded
    there, out of sight.
    """
    settings = (serialized.get("settings_context") or {}).get("settings")
    server_module = sys.modules.get("prefect.server.api.server")
    if not isinstance(settings, dict) or server_module is None:
        return
    if (settings.get("api") or {}).get("url"):
        return
    running = [s for s in server_module.SubprocessASGIServer._instances.values() if s.running]
    if running:
        settings.setdefault("api", {})["url"] = running[0].api_url


def _worth_sharing(value: Any) -> bool:
    """Whether an unmapped argument should go into the object store once."""
    if isinstance(value, str | bytes | bytearray):
        return len(value) >= _SHARE_MIN_BYTES
    if isinstance(value, _SCALARS):
        return False
    # Futures inside must be resolved per task run, on the cluster.
    return not _contains_future(value)


def _contains_future(value: Any) -> bool:
    found = False

    def visit(expr: Any) -> Any:
        nonlocal found
        if isinstance(expr, PrefectFuture):
            found = True
        return expr

    visit_collection(value, visit_fn=visit, return_data=False)
    return found


def _is_auth_error(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if type(seen).__name__ == "AuthenticationError" or "InvalidAuthToken" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@functools.cache
def _remote(fn: Any) -> Any:
    # Created lazily: ray.remote at import time would export to whatever Ray is
    # connected, and a module-level remote function is re-exported per job anyway.
    return ray.remote(fn)


__all__ = ["PrefectRayFuture", "RayTaskRunner"]
