"""Ray remote options for task runs, set with a context manager (same API as prefect_ray)."""

from __future__ import annotations

import math
import os
from collections.abc import Generator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

from prefect.context import ContextModel
from pydantic import Field

#: Environment variables that set the default Ray resources of every task run, and the
#: Ray option each one sets. The operator puts them on a pool's Prefect worker pods
#: from `spec.ray.taskResources` (cpu, gpu); flow runs are the worker's subprocesses.
TASK_RESOURCE_ENV = {
    "PREFECT_RAYPOOL_TASK_NUM_CPUS": "num_cpus",
    "PREFECT_RAYPOOL_TASK_NUM_GPUS": "num_gpus",
}


class RemoteOptionsContext(ContextModel):
    """The Ray remote options in effect for task runs submitted in this context."""

    __var__: ClassVar[ContextVar[Any]] = ContextVar("prefect_raypool_remote_options")
    current_remote_options: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def get(cls) -> RemoteOptionsContext:
        """The current context, or an empty one outside any `remote_options` block."""
        return cls.__var__.get(RemoteOptionsContext())


@contextmanager
def remote_options(**new_remote_options: Any) -> Generator[None, None, None]:
    """Pass keyword arguments to Ray's remote options for the task runs submitted inside.

    Nested blocks merge; on a key present in both, the inner value wins::

        with remote_options(num_cpus=4, num_gpus=1):
            process.submit(42)  # like @ray.remote(num_cpus=4, num_gpus=1)
    """
    current = RemoteOptionsContext.get().current_remote_options
    with RemoteOptionsContext(current_remote_options={**current, **new_remote_options}):
        yield


def remote_options_from_env(environ: Mapping[str, str] | None = None) -> dict[str, float | int]:
    """The default Ray resources of task runs, from `PREFECT_RAYPOOL_TASK_*` variables.

    Unset or empty variables are left out. A value that is not a usable amount
    raises ValueError naming the variable.
    """
    environ = os.environ if environ is None else environ
    options: dict[str, float | int] = {}
    for name, option in TASK_RESOURCE_ENV.items():
        raw = environ.get(name, "").strip()
        if raw:
            options[option] = _resource_amount(name, raw, whole_above_one=option == "num_gpus")
    return options


def _resource_amount(name: str, raw: str, whole_above_one: bool) -> float | int:
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    problem = None
    if not math.isfinite(value) or value < 0:
        problem = "is not a number of at least 0"
    elif whole_above_one and value > 1 and not value.is_integer():
        problem = "is a fraction above 1 (Ray accepts a fraction of one GPU, or whole GPUs)"
    if problem:
        raise ValueError(
            f"{name}={raw!r} {problem}. It sets the default Ray resources of every task "
            "run (a PrefectRayPool sets it from spec.ray.taskResources): set it to a "
            "number such as 1 or 0.5, or unset it."
        )
    return int(value) if value.is_integer() else value
