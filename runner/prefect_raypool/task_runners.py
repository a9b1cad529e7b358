"""RayTaskRunner: Prefect task runs as Ray tasks, a drop-in for prefect_ray's runner.

Per submit the driver sends only what changes: the task run id, the parameters
and ObjectRefs. The task object and the serialized flow-run context go into the
object store once and are cached by the Ray worker processes (see ray_worker.py);
upstream futures travel as ObjectRefs that Ray resolves on the cluster; shared
(unmapped) arguments of a map are put into the object store once. What travels
is named in wire.py.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Self, TypeVar

import ray
from prefect.client.schemas.objects import RunInput
from prefect.context import FlowRunContext, SettingsContext, TagsContext, TaskRunContext
from prefect.futures import PrefectFuture
from prefect.task_runners import TaskRunner

from prefect_raypool import cache_keys, remote_functions, shipped_context, warm
from prefect_raypool.arguments import share_unmapped, task_run_call
from prefect_raypool.config import RunnerConfig
from prefect_raypool.connection import (
    ALREADY_CONNECTED,
    cluster_cpus,
    concurrent_task_slots,
    connect,
    disconnect,
    is_ray_client,
)
from prefect_raypool.context import RemoteOptionsContext, remote_options_from_env
from prefect_raypool.futures import PrefectRayFuture, PrefectRayFutureList, unwrap_signal_errors
from prefect_raypool.inflight import InFlightRayTasks
from prefect_raypool.recording import CANCELLED_MESSAGE, crash_hook, record_cancelled
from prefect_raypool.remote_functions import OptionsKey, RemoteFunctions, options_key
from prefect_raypool.wire import (
    WORKER_SETUP_KEY,
    BatchRequest,
    FlushLogsRequest,
    TaskAndContext,
    TaskRunCall,
    TaskRunRequest,
    WorkerSetup,
)

if TYPE_CHECKING:
    from prefect.tasks import Task

R = TypeVar("R")

#: Ray options we set unless the user overrides them through remote_options. A task
#: run's own exceptions are Prefect's (its `retries`; the engine returns them as a
#: Failed state, so Ray never sees one): `retry_exceptions` stays off. A Ray task lost
#: with its process or node (a Ray worker pod deleted, evicted, OOM-killed) never
#: reached Prefect's retries: Ray re-runs it elsewhere, up to 3 times (Ray's own
#: default), the same task run id, which records its states again; then Crashed.
_DEFAULT_REMOTE_OPTIONS: dict[str, Any] = {"max_retries": 3, "retry_exceptions": False}
#: At most this many log-flush calls at disconnect (one per leased Ray worker process, ideally).
_MAX_FLUSH_CALLS = 64
#: By default a map runs up to this many task runs per Ray task (see `_batch_size`).
_MAX_BATCH = 8
#: ...and batches only when that leaves at least this many Ray tasks per cluster CPU.
_MIN_BATCHES_PER_CPU = 4
#: How long the Ray worker processes warmed for the next flow run wait for it (see warm.py).
_WARM_WORKERS_S = 600


class RayTaskRunner(TaskRunner[PrefectRayFuture[Any]]):
    """Run Prefect task runs as Ray tasks.

    Args:
        address: where Ray is. None: attach to a running local Ray (RAY_ADDRESS or
            a raylet socket under /tmp/ray/session_latest), else start a temporary
            local instance. "auto": attach or raise with what was looked for.
            "ray://host:10001": Ray Client. "host:6379": a GCS address.
        init_kwargs: extra keyword arguments for `ray.init` (namespace defaults to
            "prefect"); a `runtime_env` here is passed through as is. Prefect's API
            URL and key reach the Ray workers without it (see ray_worker.py).
        max_in_flight: the most task runs submitted to Ray and not yet finished;
            `submit` blocks beyond it (backpressure for huge maps). None: no limit.
        quiet_workers: keep each task run's routine "Finished in state Completed()"
            line off the console (Ray ships Ray worker output to the driver, which
            costs more than a no-op task); it is still sent to the Prefect API.
            Warnings, errors, your own logs and prints are always shown.
        max_batch: the most task runs of a map sent to Ray as one Ray task. A large
            map (at least 4 batches per cluster CPU) runs its task runs in batches,
            which saves Ray's per-task cost and the per-task event flush; each task
            run keeps its own ObjectRef, state and result. 1: one Ray task per run.
        default_remote_options: Ray remote options for every task run (e.g.
            {"num_cpus": 2}). They override the PREFECT_RAYPOOL_TASK_* variables;
            `remote_options(...)` blocks override them.
        warm_workers_s: when the flow run leaves a Ray cluster running (it attached
            to one), it asks each node it ran task runs on for as many fresh Ray
            worker processes as it used there, for the next flow run (a new Ray job,
            which otherwise starts its own); they wait this many seconds beyond the
            node's CPU count. 0: off. See warm.py.

    The arguments, checked, are `self.config`.
    """

    def __init__(
        self,
        address: str | None = None,
        init_kwargs: dict[str, Any] | None = None,
        max_in_flight: int | None = 2000,
        quiet_workers: bool = True,
        max_batch: int = _MAX_BATCH,
        default_remote_options: dict[str, Any] | None = None,
        warm_workers_s: int = _WARM_WORKERS_S,
    ) -> None:
        self.config = RunnerConfig(
            address=address,
            init_kwargs=init_kwargs or {},
            max_in_flight=max_in_flight,
            quiet_workers=quiet_workers,
            max_batch=max_batch,
            default_remote_options=default_remote_options or {},
            warm_workers_s=warm_workers_s,
        )
        #: Defaults from PREFECT_RAYPOOL_TASK_*, read when the runner starts (or
        #: handed down with the flow-run context to a runner inside a Ray worker).
        self._env_remote_options: dict[str, Any] | None = None
        self._connection = ALREADY_CONNECTED
        self._in_flight = InFlightRayTasks()
        #: The task runs of the map being submitted on this thread, if any.
        self._map_being_queued = threading.local()
        #: Object-store copies of task objects, by id(task) (the entry keeps the task).
        self._task_refs: dict[int, tuple[Any, ray.ObjectRef]] = {}
        #: Object-store copies of the serialized Prefect context, by context identity.
        self._context_refs: dict[tuple[Any, ...], tuple[Any, ray.ObjectRef]] = {}
        #: Ray remote functions built with their options, by options.
        self._remote_fns: dict[OptionsKey, RemoteFunctions] = {}
        self._client_warned = False
        #: (settings context, its settings as environment variables), see _settings_env.
        self._settings_env_cache: tuple[Any, dict[str, str]] | None = None
        #: The flow run submitting here (the engine keeps its state up to date).
        self._flow_run: Any = None
        super().__init__()

    # ------------------------------------------------------------------ config

    @property
    def address(self) -> str | None:
        """As prefect-ray's runner has it."""
        return self.config.address

    @property
    def init_kwargs(self) -> dict[str, Any]:
        """As prefect-ray's runner has it."""
        return self.config.init_kwargs

    def duplicate(self) -> Self:
        return type(self)(**self.config.as_kwargs())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RayTaskRunner) and self.config == other.config

    __hash__ = None  # type: ignore[assignment]

    def __getstate__(self) -> dict[str, Any]:
        # Pickled with the flow into Ray worker processes: ship only the configuration.
        return self.config.as_kwargs()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state)  # type: ignore[misc]

    def use_env_remote_options(self, options: dict[str, Any]) -> None:
        """Take the driver's PREFECT_RAYPOOL_TASK_* defaults (in a Ray worker process,
        whose environment lacks them) instead of reading them when starting."""
        self._env_remote_options = dict(options)

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> Self:
        super().__enter__()
        try:
            if self._env_remote_options is None:
                self._env_remote_options = remote_options_from_env()
            self._connection = connect(self.config.address, self.config.init_kwargs, self.logger)
            if self._connection.owned and not self._connection.started_local:
                # Before the flow submits anything: the first submit then finds it ready.
                self._settings_env(SettingsContext.get())
        except BaseException:
            super().__exit__(None, None, None)
            raise
        return self

    def __exit__(self, exc_type: Any, exc_value: Any, traceback: Any) -> None:
        try:
            failed = exc_type is not None or self._flow_run_failed()
            if failed:
                self.cancel_all()
            else:
                self._in_flight.wait_all()
            # Leaving a failed or cancelled flow run (whose process may be killed
            # soon), wait only for live Ray worker processes, not for replacements
            # of killed ones.
            self._flush_ray_worker_logs(timeout=1.5 if failed else 10)
        finally:
            self._flow_run = None
            self._task_refs.clear()
            self._context_refs.clear()
            self._settings_env_cache = None
            self._remote_fns.clear()
            self._in_flight.ray_tasks_sent = 0
            disconnect(self._connection, self.logger)
            self._connection = ALREADY_CONNECTED
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

    def _flush_ray_worker_logs(self, timeout: float) -> None:
        """Have the Ray worker processes send buffered Prefect logs before this
        driver disconnects.

        Only needed when this runner disconnects: Ray then kills the job's
        Ray worker processes without exit handlers, and Prefect sends logs in batches.
        """
        if not (self._connection.owned and ray.is_initialized() and self._remote_fns):
            return
        try:
            # The options of ordinary task runs, to land on the Ray worker processes
            # that ran them: Ray hands a task to the job's most recently idle one
            # first. No more calls than Ray tasks sent: a spare call would start a
            # fresh Ray worker process, which imports Prefect (seconds) to flush nothing.
            options = self._default_options()
            fns = self._functions(options_key(options), options)
            if not fns.reuses_processes:
                return  # those processes sent their logs before exiting
            fn = fns.single
            calls = min(
                concurrent_task_slots(options), self._in_flight.ray_tasks_sent, _MAX_FLUSH_CALLS
            )
            refs = [fn.remote(FlushLogsRequest()) for _ in range(calls)]
            with unwrap_signal_errors():
                done, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout)
            workers = set(ray.get(done))
            self.logger.debug(
                f"Flushed Prefect logs on {len(workers)} Ray worker(s) of {calls} asked"
            )
            self._warm_for_next_flow_run(Counter(node for node, _ in workers))
        except Exception:  # best effort: never fail a flow run on log flushing
            self.logger.debug("Could not flush Ray worker logs", exc_info=True)

    def _warm_for_next_flow_run(self, used: Counter[str]) -> None:
        """Replace the Ray worker processes this flow run used (they end with its
        Ray job) with job-less ones the next flow run on the cluster takes over."""
        if not self.config.warm_workers_s or self._connection.started_local:
            return  # a Ray this runner started ends with the flow run
        if is_ray_client():
            return  # a driver outside the cluster may not reach the nodes' raylets
        asked = warm.prestart_for_next_job(used, self.config.warm_workers_s, self.logger)
        self.logger.debug(f"Asked for {asked} warm Ray worker(s) for the next flow run")

    def cancel_all(self) -> None:
        """Cancel every Ray task this runner submitted that has not finished.

        Called when the flow run fails, is cancelled or is terminated. Queued
        tasks are dropped; running ones get an interrupt, and those still running
        after a short grace (a blocking call does not see the interrupt) are
        killed. The task runs that had started are recorded as Cancelled before
        this returns: the process may exit right after (a cancelled flow run's
        process is terminated), and nobody may ever wait on their futures.
        """
        task_run_ids = self._in_flight.cancel_all()
        if not task_run_ids:
            return
        self.logger.info("Cancelled %d outstanding Ray task(s)", len(task_run_ids))
        record_cancelled(task_run_ids, self._in_flight.cancel_recorded)

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
        queued_map: list[_QueuedTaskRun] | None = getattr(self._map_being_queued, "runs", None)
        if queued_map is None:
            self._in_flight.wait_for_room(1, self.config.max_in_flight)
        from prefect._internal.uuid7 import uuid7

        call, refs = task_run_call(uuid7(), parameters, wait_for, dependencies)
        task_and_context = TaskAndContext(self._task_ref(task), self._context_ref())
        key, options = self._ray_options(task)
        # Built now, so bad options raise here, before anything is sent.
        fns = self._functions(key, options, task)
        on_crash = crash_hook(task, self._in_flight)
        if queued_map is not None:
            # Inside a map: sent to Ray in batches once the map is complete.
            future: PrefectRayFuture[Any] = PrefectRayFuture(
                task_run_id=call.task_run_id,
                wrapped_future=None,  # type: ignore[arg-type]
                on_crash=on_crash,
            )
            queued_map.append(_QueuedTaskRun(future, task_and_context, key, fns, call, refs))
            return future
        request = TaskRunRequest(task_and_context, call, drain_logs=not fns.reuses_processes)
        object_ref = fns.single.remote(request, *refs)
        self._in_flight.track(object_ref, call.task_run_id, new_ray_task=True)
        return PrefectRayFuture(
            task_run_id=call.task_run_id, wrapped_future=object_ref, on_crash=on_crash
        )

    def map(  # type: ignore[override]
        self,
        task: Task[Any, Any],
        parameters: dict[str, Any],
        wait_for: Iterable[PrefectFuture[Any]] | None = None,
    ) -> PrefectRayFutureList[Any]:
        if not self._started:
            raise RuntimeError("The task runner must be started before submitting work.")
        # Shared (unmapped) arguments go into the object store once, not once per
        # task run, and are hashed once where the task's cache key hashes them.
        parameters = share_unmapped(
            parameters, cache_keys.hashed_input_names(task, list(parameters))
        )
        queued: list[_QueuedTaskRun] = []
        self._map_being_queued.runs = queued
        try:
            futures = super().map(task, parameters, wait_for)
        finally:
            self._map_being_queued.runs = None
            self._send_batches(queued)
        return PrefectRayFutureList(futures)  # type: ignore[abstract]

    def _send_batches(self, queued: list[_QueuedTaskRun]) -> None:
        """Send a map's task runs to Ray, several per Ray task on a large map.

        A no-op task run costs Ray a task submission, a Ray worker round trip and
        an event flush; a batch pays those once. Each task run keeps its own Ray
        return value (ObjectRef), so futures, upstream links and results work
        as for single task runs. A batch holds task runs of the same options and
        task and context, in submission order.
        """
        size = self._batch_size(len(queued))
        # The first wave (a Ray task per cluster CPU) runs one task run each, so the
        # map's first results come back after one task run rather than a batch.
        singles = cluster_cpus() if size > 1 else 0
        start = 0
        while start < len(queued):
            first = queued[start]
            fns = first.functions
            # A process that exits after max_calls Ray tasks runs one task run each, as asked.
            group_size = size if fns.reuses_processes and start >= singles else 1
            drain_logs = not fns.reuses_processes
            end = start + 1
            while (
                end < len(queued)
                and end - start < group_size
                and queued[end].options_key == first.options_key
                and queued[end].task_and_context == first.task_and_context
            ):
                end += 1
            batch = queued[start:end]
            start = end
            self._in_flight.wait_for_room(len(batch), self.config.max_in_flight)
            if len(batch) == 1:
                request = TaskRunRequest(first.task_and_context, first.call, drain_logs)
                object_refs = [fns.single.remote(request, *first.refs)]
            else:
                calls: list[TaskRunCall] = []
                all_refs: list[ray.ObjectRef] = []
                for run in batch:
                    calls.append(dataclasses.replace(run.call, first_arg=len(all_refs)))
                    all_refs.extend(run.refs)
                request_batch = BatchRequest(first.task_and_context, calls, drain_logs)
                object_refs = fns.batch(len(batch)).remote(request_batch, *all_refs)
            for i, (run, object_ref) in enumerate(zip(batch, object_refs, strict=True)):
                run.future._wrapped_future = object_ref
                self._in_flight.track(object_ref, run.call.task_run_id, new_ray_task=i == 0)

    def _batch_size(self, count: int) -> int:
        if self.config.max_batch == 1 or count < 2 * _MIN_BATCHES_PER_CPU:
            return 1
        size = min(self.config.max_batch, count // (cluster_cpus() * _MIN_BATCHES_PER_CPU))
        if self.config.max_in_flight is not None:
            size = min(size, self.config.max_in_flight)
        return max(size, 1)

    # ------------------------------------------------------- what Ray is sent

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
            local_server = self._connection.started_local
            serialized = shipped_context.serialize(settings_ctx, local_server)
            serialized[WORKER_SETUP_KEY] = WorkerSetup(
                quiet_console=self.config.quiet_workers,
                # Nested task runs, submitted from inside a Ray worker, get the same defaults.
                env_remote_options=self._env_remote_options or {},
                # A local server changes the settings: the Ray workers export them.
                settings_env=None if local_server else self._settings_env(settings_ctx),
                logging_config=None if local_server else shipped_context.logging(settings_ctx),
            )
            entry = ((flow_ctx, task_ctx, settings_ctx), ray.put(serialized))
            self._context_refs[key] = entry
        return entry[1]

    def _settings_env(self, settings_ctx: SettingsContext | None) -> dict[str, str] | None:
        """The flow's Prefect settings as environment variables (see WorkerSetup)."""
        if settings_ctx is None:
            return None
        cached = self._settings_env_cache
        if cached is None or cached[0] is not settings_ctx:
            env = settings_ctx.settings.to_environment_variables(exclude_unset=True)
            cached = self._settings_env_cache = (settings_ctx, env)
        return cached[1]

    def _default_options(self) -> dict[str, Any]:
        """Ray options of a task run outside any remote_options block; later sources win."""
        return {
            **_DEFAULT_REMOTE_OPTIONS,
            **(self._env_remote_options or {}),
            **self.config.default_remote_options,
        }

    def _ray_options(self, task: Task[Any, Any]) -> tuple[OptionsKey, dict[str, Any]]:
        """The Ray remote options of a task run of `task` submitted now."""
        options = {**self._default_options(), **RemoteOptionsContext.get().current_remote_options}
        options.setdefault("name", task.name)
        return options_key(options), options

    def _functions(
        self, key: OptionsKey, options: dict[str, Any], task: Task[Any, Any] | None = None
    ) -> RemoteFunctions:
        fns = self._remote_fns.get(key)
        if fns is None:
            if task is not None and is_ray_client() and not self._client_warned:
                self._warn_client_imports(task)
            fns = remote_functions.build(options)
            self._remote_fns[key] = fns
        return fns

    def _warn_client_imports(self, task: Task[Any, Any]) -> None:
        from prefect_raypool.pickled_modules import modules_needed_by

        self._client_warned = True
        modules = modules_needed_by(task, FlowRunContext.get())
        warnings.warn(
            "RayTaskRunner is using Ray Client (ray://): the Ray head unpickles this "
            "flow's tasks, so it must be able to import: " + ", ".join(modules),
            stacklevel=3,
        )


@dataclasses.dataclass(slots=True)
class _QueuedTaskRun:
    """A task run of a map, waiting to be sent to Ray with its batch."""

    future: PrefectRayFuture[Any]
    task_and_context: TaskAndContext
    options_key: OptionsKey
    functions: RemoteFunctions
    call: TaskRunCall
    refs: list[ray.ObjectRef]


__all__ = ["CANCELLED_MESSAGE", "PrefectRayFuture", "RayTaskRunner"]
