"""What runs inside a Ray worker process: the task runs the driver sends (see wire.py).

prefect-ray rebuilds Prefect's whole context (settings, a new API client, the
flow run context) for every task run; that is most of its per-task cost. Here a
Ray worker process does it once per flow-run context and keeps the result in a
`contextvars.Context`; each task run then runs in a cheap copy of it. The task
object and the serialized context travel once through the object store (the
driver passes their ObjectRefs inside the request, so Ray does not resolve them)
and are cached here by ObjectRef id.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import OrderedDict
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any
from uuid import UUID

import ray
from prefect.cache_policies import CompoundCachePolicy, TaskSource

from prefect_raypool import cache_keys
from prefect_raypool.wire import (
    WORKER_SETUP_KEY,
    ArgSlot,
    BatchRequest,
    FlushLogsRequest,
    SharedArgSlot,
    TakesDriverDefaults,
    TaskAndContext,
    TaskRunCall,
    TaskRunRequest,
    WorkerSetup,
)

#: Task objects and serialized contexts fetched from the object store, by ObjectRef hex.
_fetched_objects: OrderedDict[str, Any] = OrderedDict()
#: Prepared contexts (context, exit stack), by serialized-context ObjectRef hex.
_contexts: OrderedDict[str, tuple[contextvars.Context, ExitStack]] = OrderedDict()
_lock = threading.Lock()
_CACHE_SIZE = 32

#: Immutable shared arguments of maps (see wire.SharedArgSlot), by ObjectRef hex.
_shared_args: OrderedDict[str, Any] = OrderedDict()
_SHARED_ARGS_CACHE_SIZE = 4


def _lru_get(
    cache: OrderedDict[str, Any],
    size: int,
    ref: ray.ObjectRef,
    prepare: Callable[[Any], None] | None = None,
) -> Any:
    """`ray.get(ref)` once per worker process, kept in a small LRU `cache`."""
    key = ref.hex()
    with _lock:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = ray.get(ref)
    if prepare is not None:
        prepare(value)
    with _lock:
        cache[key] = value
        while len(cache) > size:
            cache.popitem(last=False)
    return value


def _shared_get(ref: ray.ObjectRef) -> Any:
    return _lru_get(_shared_args, _SHARED_ARGS_CACHE_SIZE, ref)


def _cached_get(ref: ray.ObjectRef) -> Any:
    return _lru_get(_fetched_objects, _CACHE_SIZE, ref)


def _prepared_task(ref: ray.ObjectRef) -> Any:
    """The task object, fetched once per worker process and ready to run."""
    return _lru_get(_fetched_objects, _CACHE_SIZE, ref, prepare=_prepare_cache_policy)


def _prepare_cache_policy(task: Any) -> None:
    _memoize_source_key(task)
    # A map's shared arguments come with their digest (see cache_keys.py).
    cache_keys.use_shared_digests(task)


def _memoize_source_key(task: Any) -> None:
    """Compute the task-source part of the task's cache key once per worker process.

    Prefect's default cache policy hashes the task's source code on every task run
    (`TaskSource`: reading and JSON-hashing the source), about a tenth of a no-op
    task run's CPU here. The source of this (unpickled, private) task object does
    not change, so its hash is kept; the cache keys stay exactly the same.
    """
    import dataclasses

    policy = getattr(task, "cache_policy", None)
    if type(policy) is TaskSource:
        task.cache_policy = _copy_as(policy, _MemoTaskSource)
    elif type(policy) is CompoundCachePolicy and any(
        type(p) is TaskSource for p in policy.policies
    ):
        policies = [
            _copy_as(p, _MemoTaskSource) if type(p) is TaskSource else p for p in policy.policies
        ]
        task.cache_policy = dataclasses.replace(policy, policies=policies)


def _copy_as(policy: Any, cls: type) -> Any:
    import dataclasses

    return cls(**{f.name: getattr(policy, f.name) for f in dataclasses.fields(policy) if f.init})


class _MemoTaskSource(TaskSource):
    """Prefect's TaskSource cache policy, its key computed once per task object."""

    def compute_key(
        self,
        task_ctx: Any,
        inputs: Any,
        flow_parameters: Any,
        **kwargs: Any,
    ) -> str | None:
        if not task_ctx:
            return None
        memo = self.__dict__.get("_memo")
        if memo is not None and memo[0] is task_ctx.task:
            return memo[1]  # type: ignore[no-any-return]
        key = super().compute_key(task_ctx, inputs, flow_parameters, **kwargs)
        self.__dict__["_memo"] = (task_ctx.task, key)
        return key


def _enter_context(serialized: dict[str, Any], stack: ExitStack) -> None:
    """Enter Prefect's contexts for a remote task run, once per worker process.

    Mirrors `prefect.context.hydrated_context`, but keeps one API client open
    and reuses it for every task run of this flow run in this process.
    """
    from prefect._internal.result_records import ResultRecordMetadata
    from prefect.context import (
        FlowRunContext,
        SettingsContext,
        SyncClientContext,
        TaskRunContext,
        tags,
    )
    from prefect.flows import Flow
    from prefect.tasks import Task

    types: dict[str, Any] = {
        "Flow": Flow,
        "Task": Task,
        "ResultRecordMetadata": ResultRecordMetadata,
    }
    FlowRunContext.model_rebuild(_types_namespace=types)
    TaskRunContext.model_rebuild(_types_namespace=types)
    setup: WorkerSetup | None = serialized.get(WORKER_SETUP_KEY)
    if settings := serialized.get("settings_context"):
        # The object (shipped_context.py), or Prefect's dump of it.
        if isinstance(settings, SettingsContext):
            settings_ctx = stack.enter_context(settings.model_copy())
        else:
            settings_ctx = stack.enter_context(SettingsContext(**settings))
        _export_settings(settings_ctx.settings, setup.settings_env if setup else None)
    _ensure_logging_setup(setup.logging_config if setup else None)
    if setup is not None and setup.quiet_console:
        _quiet_console()
    client_ctx = stack.enter_context(SyncClientContext())
    if flow_run := serialized.get("flow_run_context"):
        runner = flow_run["flow"].task_runner.duplicate()
        if setup is not None and isinstance(runner, TakesDriverDefaults):
            # The driver's PREFECT_RAYPOOL_TASK_* defaults, for nested task runs.
            runner.use_env_remote_options(setup.env_remote_options)
        task_runner = stack.enter_context(runner)
        stack.enter_context(
            FlowRunContext(
                **flow_run, client=client_ctx.client, task_runner=task_runner, detached=True
            )
        )
    if parent := serialized.get("task_run_context"):
        stack.enter_context(TaskRunContext(**parent, client=client_ctx.client))
    if tags_ctx := serialized.get("tags_context"):
        stack.enter_context(tags(*tags_ctx["current_tags"]))
    if deployment_id := serialized.get("deployment_id"):
        from prefect.context import _deployment_id

        token = _deployment_id.set(UUID(deployment_id))
        stack.callback(_deployment_id.reset, token)
    if deployment_params := serialized.get("deployment_parameters"):
        from prefect.context import _deployment_parameters

        params_token = _deployment_parameters.set(deployment_params)
        stack.callback(_deployment_parameters.reset, params_token)


def _ensure_logging_setup(flow_run_config: dict[str, Any] | None) -> None:
    """Prefect's `ensure_logging_setup`, with the configuration the flow run's process
    set up when the driver sent it: computing it here means dumping every setting
    as an environment variable (about 80 ms on a fresh process), for the three that
    Prefect's logging.yml uses."""
    import copy

    from prefect.logging import configuration

    if configuration.PROCESS_LOGGING_CONFIG:
        return
    if flow_run_config is not None:
        loaded = copy.deepcopy(flow_run_config)
        load = configuration.load_logging_config
        # setup_logging() loads its configuration through this module global; task
        # runs of one Ray worker process run on one thread, so the swap is not seen.
        configuration.load_logging_config = lambda path: loaded  # noqa: ARG005
        try:
            configuration.setup_logging()
            return
        except Exception:  # e.g. a handler class this process cannot import
            configuration.PROCESS_LOGGING_CONFIG.clear()
        finally:
            configuration.load_logging_config = load
    configuration.ensure_logging_setup()


class _RoutineTaskRunLines:
    """Logging filter: drop the engine's per-run INFO chatter from the console."""

    PREFIXES = ("Finished in state Completed", "Created task run", "Executing ")

    def filter(self, record: Any) -> bool:
        if record.levelno >= 30 or not record.name.startswith("prefect.task_runs"):
            return True
        return not str(record.msg).startswith(self.PREFIXES)


def _quiet_console() -> None:
    """Workers' console output is shipped to the driver by Ray; one line per
    completed task run costs more than a no-op task. It still reaches the API."""
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
            isinstance(f, _RoutineTaskRunLines) for f in handler.filters
        ):
            handler.addFilter(_RoutineTaskRunLines())


def _export_settings(settings: Any, precomputed: dict[str, str] | None) -> None:
    """Put the flow's Prefect settings into this process's environment.

    Prefect's background services (events, API logs) run in threads that do not
    see our context and read settings from the environment: without this they
    miss PREFECT_API_URL and start a throwaway local server (prefect #18485).
    """
    import os

    if precomputed is None:
        precomputed = settings.to_environment_variables(exclude_unset=True)
    for name, value in precomputed.items():
        os.environ[name] = value


def _prepared_context(ref: ray.ObjectRef) -> contextvars.Context:
    key = ref.hex()
    with _lock:
        if key in _contexts:
            _contexts.move_to_end(key)
            return _contexts[key][0]
    serialized = _cached_get(ref)
    ctx = contextvars.Context()
    stack = ExitStack()
    ctx.run(_enter_context, serialized, stack)
    with _lock:
        _contexts[key] = (ctx, stack)
        evicted = []
        while len(_contexts) > _CACHE_SIZE:
            evicted.append(_contexts.popitem(last=False)[1])
    for old_ctx, old_stack in evicted:
        old_ctx.run(old_stack.close)
    return ctx


def _fill_slots(value: Any, resolved: tuple[Any, ...]) -> Any:
    from prefect.utilities.collections import visit_collection

    def fill(expr: Any) -> Any:
        if isinstance(expr, ArgSlot):
            return resolved[expr.index]
        if isinstance(expr, SharedArgSlot):
            return _shared_get(expr.ref)
        return expr

    return visit_collection(value, visit_fn=fill, return_data=True)


def _flush_events() -> None:
    # Task run states reach the server as events; make sure they have left this
    # process before the driver hears the task is done (as Prefect's process
    # pool runner does).
    from prefect.events.worker import EventsWorker

    with EventsWorker._instance_lock:
        has_worker = bool(EventsWorker._instances)  # type: ignore[misc]
    if has_worker:
        EventsWorker.instance().wait_until_empty()


def _flush(ctx: contextvars.Context, drain_logs: bool) -> None:
    ctx.run(_flush_events)
    if drain_logs:
        # Ray ends a process that reached max_calls without exit handlers.
        from prefect.logging.handlers import APILogWorker

        APILogWorker.drain_all(timeout=10)


def run_task_run(request: TaskRunRequest | FlushLogsRequest, *resolved: Any) -> Any:
    """The Ray task body of one task run: run it and return its final State.

    `resolved` holds the values Ray fetched for the top-level ObjectRef arguments
    (upstream States, shared objects) that the call's `ArgSlot`s point at.
    """
    if isinstance(request, FlushLogsRequest):
        return _flush_logs_and_linger()
    task, ctx = _prepared(request.task_and_context)
    try:
        return _run_one(task, ctx, request.call, resolved)
    finally:
        _flush(ctx, request.drain_logs)


def run_task_runs(request: BatchRequest, *resolved: Any) -> Any:
    """The Ray task body of a batch of a map's task runs: run them one after the
    other and return their final States, one Ray return value each.

    Events are flushed once, after the last run, before the driver hears of any of them.
    """
    task, ctx = _prepared(request.task_and_context)
    states = []
    try:
        for call in request.calls:
            states.append(_run_one(task, ctx, call, resolved))
    finally:
        _flush(ctx, request.drain_logs)
    return tuple(states) if len(states) > 1 else states[0]


def _prepared(task_and_context: TaskAndContext) -> tuple[Any, contextvars.Context]:
    """The task object and the Prefect context to run it in, cached per process."""
    task = _prepared_task(task_and_context.task_ref)
    return task, _prepared_context(task_and_context.context_ref)


def _run_one(
    task: Any,
    base_ctx: contextvars.Context,
    call: TaskRunCall,
    resolved: tuple[Any, ...],
) -> Any:
    from prefect.task_engine import run_task_async, run_task_sync

    ctx = base_ctx.copy()
    if call.input_digests:
        ctx.run(cache_keys.set_digests, call.task_run_id, call.input_digests)
    parameters, wait_for = call.parameters, call.wait_for
    if call.has_slots:
        own = resolved[call.first_arg : call.first_arg + call.arg_count]
        parameters = _fill_slots(parameters, own)
        wait_for = _fill_slots(wait_for, own)
    kwargs: dict[str, Any] = {
        "task": task,
        "task_run_id": call.task_run_id,
        "parameters": parameters,
        "wait_for": wait_for,
        "dependencies": call.dependencies,
        "return_type": "state",
    }
    if task.isasync:
        return ctx.run(asyncio.run, run_task_async(**kwargs))
    return ctx.run(run_task_sync, **kwargs)  # type: ignore[arg-type]


def _flush_logs_and_linger() -> tuple[str, int]:
    """Send this process's buffered Prefect logs now; returns (Ray node id, process id).

    Ray kills a job's Ray worker processes without running exit handlers when the
    driver disconnects, and Prefect batches logs for a few seconds, so the driver
    sends a FlushLogsRequest (through the same remote function as task runs, to
    land on the processes it leased) before it disconnects. Lingering a little
    spreads the requests over processes.
    """
    import os
    import time

    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    time.sleep(0.1)
    return ray.get_runtime_context().get_node_id(), os.getpid()
