"""The Ray remote functions task runs are sent through, one set per Ray option set.

prefect-ray applies `remote_options(...)` as `ray.remote(**options)`, so every option
`@ray.remote` accepts works there, including those `.options()` refuses (`max_calls`,
`_num_objects_per_yield`), and Ray's decoration-time defaults apply: a task asking for
GPUs gets `max_calls=1` (its Ray worker process exits after each task, releasing the
GPU memory a library may hold) unless `max_calls` says otherwise. The functions are
built the same way here, once per option set.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray

from prefect_raypool import ray_worker

#: Ray remote options as a hashable key (to cache remote functions by).
OptionsKey = tuple[tuple[str, str], ...]


def options_key(options: dict[str, Any]) -> OptionsKey:
    return tuple(sorted((k, repr(v)) for k, v in options.items()))


@dataclass
class RemoteFunctions:
    """`ray_worker.run_task_run` and `run_task_runs` decorated with one option set."""

    options: dict[str, Any]
    single: Any
    batch_base: Any
    #: Ray tasks a Ray worker process runs before it exits; 0: no limit.
    max_calls: int
    _batches: dict[int, Any] = field(default_factory=dict)

    @property
    def reuses_processes(self) -> bool:
        return self.max_calls == 0

    def batch(self, count: int) -> Any:
        """The batch function returning `count` values (one per task run)."""
        fn = self._batches.get(count)
        if fn is None:
            fn = self._batches[count] = self.batch_base.options(num_returns=count)
        return fn


def build(options: dict[str, Any]) -> RemoteFunctions:
    """The remote functions for `options`; a bad option raises Ray's ValueError now."""
    if options.get("num_returns") not in (None, 1):
        raise ValueError(
            f"remote_options(num_returns={options['num_returns']!r}) is not supported: the "
            "Ray task of a task run returns one value, its Prefect state. Remove num_returns "
            "(return a tuple from the task instead)."
        )
    single = ray.remote(**options)(ray_worker.run_task_run)
    batch_base = ray.remote(**options)(ray_worker.run_task_runs)
    return RemoteFunctions(options, single, batch_base, _max_calls(single, options))


def _max_calls(fn: Any, options: dict[str, Any]) -> int:
    # Ray decides it when decorating (GPU tasks default to 1); a Ray Client function
    # does not say, so apply Ray's documented rule.
    decided = getattr(fn, "_max_calls", None)
    if isinstance(decided, int):
        return decided
    explicit = options.get("max_calls")
    if explicit is not None:
        return int(explicit)
    return 1 if (options.get("num_gpus") or 0) > 0 else 0
