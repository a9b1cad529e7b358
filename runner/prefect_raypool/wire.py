"""What the driver sends to a Ray worker process, by name.

Each Ray task the runner submits is one call of a remote function in
ray_worker.py with a request object as its first argument, followed by the
ObjectRefs that Ray must resolve first:

    run_task_run.remote(TaskRunRequest(...) | FlushLogsRequest(), *upstream_refs)
    run_task_runs.remote(BatchRequest(...), *upstream_refs)

Only top-level ObjectRef arguments are resolved by Ray (it waits for them and
fetches their values on the worker's node). ObjectRefs nested inside a request
travel as references: that is how the task object and the serialized context,
cached per worker process, avoid being fetched for every task run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable
from uuid import UUID

import ray

#: Key of `WorkerSetup` in the serialized Prefect context the driver ships.
WORKER_SETUP_KEY = "prefect_raypool"


class ArgSlot:
    """Stands for the i-th top-level Ray argument after the request, once Ray resolved it.

    Upstream task results and shared (unmapped) objects travel as top-level
    ObjectRef arguments: Ray waits for them and fetches them on the worker's
    node, so nothing round-trips through the driver.
    """

    __slots__ = ("index",)

    def __init__(self, index: int) -> None:
        self.index = index

    def __reduce__(self) -> tuple[type[ArgSlot], tuple[int]]:
        return (ArgSlot, (self.index,))


class SharedArgSlot:
    """Stands for an immutable shared argument (bytes, str) of a map, by ObjectRef.

    Ray would deserialize a top-level argument again for every task, copying a
    large bytes object each time; an immutable value can instead be fetched once
    per Ray worker process and reused (as a thread-pool runner shares it).
    """

    __slots__ = ("ref",)

    def __init__(self, ref: ray.ObjectRef) -> None:
        self.ref = ref


@dataclass(slots=True)
class TaskAndContext:
    """The task object and the serialized Prefect context its task runs share.

    Both go into the object store once; a Ray worker process fetches each once and
    keeps it (see ray_worker.py), so a task run only pays for its own arguments.
    """

    task_ref: ray.ObjectRef
    context_ref: ray.ObjectRef


@dataclass(slots=True)
class TaskRunCall:
    """One Prefect task run: what `prefect.task_engine.run_task_*` needs besides the task.

    `parameters` and `wait_for` may hold `ArgSlot`s (set `has_slots`); those
    point into the resolved arguments from `first_arg` on, `arg_count` of them.
    """

    task_run_id: UUID
    parameters: dict[str, Any]
    wait_for: list[Any] | None
    #: Upstream links, collected by the driver (the Ray worker only sees values).
    dependencies: dict[str, Any] | None
    has_slots: bool
    first_arg: int
    arg_count: int
    #: Prefect's hash of each shared argument, by parameter name, for the cache key.
    input_digests: dict[str, str] | None = None


@dataclass(slots=True)
class TaskRunRequest:
    """Run one task run; the Ray task returns its final State."""

    task_and_context: TaskAndContext
    call: TaskRunCall
    #: The Ray worker process exits after its Ray task (max_calls): send its logs first.
    drain_logs: bool = False


@dataclass(slots=True)
class BatchRequest:
    """Run several task runs of a map one after the other; the Ray task returns
    their final States, one Ray return value (ObjectRef) each."""

    task_and_context: TaskAndContext
    calls: list[TaskRunCall]
    drain_logs: bool = False


@dataclass(slots=True)
class FlushLogsRequest:
    """Send the Ray worker process's buffered Prefect logs now; returns its pid.

    Sent through the same remote function as task runs, with the same options,
    so it lands on the Ray worker processes that ran them.
    """


@dataclass(slots=True)
class WorkerSetup:
    """The runner's settings for Ray worker processes, inside the serialized context."""

    #: Keep routine task-run INFO lines off the console (the `quiet_workers` option).
    quiet_console: bool
    #: The driver's PREFECT_RAYPOOL_TASK_* defaults, for task runs nested in a task.
    env_remote_options: dict[str, Any]
    #: The flow's Prefect settings as environment variables, computed once on the
    #: driver (a few hundred ms of CPU that each fresh Ray worker process would
    #: otherwise spend). None: the worker computes them from the settings context.
    settings_env: dict[str, str] | None = None
    #: The logging configuration Prefect set up in the flow run's process (from the
    #: same settings), so a fresh Ray worker process logs as the flow run does
    #: without recomputing it from all settings. None: Prefect computes it.
    logging_config: dict[str, Any] | None = None


@runtime_checkable
class TakesDriverDefaults(Protocol):
    """A flow's task runner that takes `WorkerSetup.env_remote_options` (RayTaskRunner
    does): how a Ray worker process recognizes one without importing the driver's class."""

    def use_env_remote_options(self, options: dict[str, Any]) -> None: ...
