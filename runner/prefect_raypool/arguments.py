"""A task run's arguments, made ready for the wire (see wire.py).

Futures of this runner become `ArgSlot`s over top-level ObjectRef arguments, so
Ray resolves upstream results on the cluster; a map's shared (unmapped)
arguments go into the object store once instead of once per task run, and are
hashed once for the task runs' cache keys (see cache_keys.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from uuid import UUID

import ray
from prefect.client.schemas.objects import RunInput
from prefect.futures import PrefectFuture
from prefect.utilities.annotations import allow_failure, opaque, quote, unmapped
from prefect.utilities.collections import visit_collection
from prefect.utilities.engine import collect_task_run_inputs_sync

from prefect_raypool import cache_keys
from prefect_raypool.futures import PrefectRayFuture
from prefect_raypool.wire import ArgSlot, SharedArgSlot, TaskRunCall

#: Values that can hold neither a future nor an upstream link.
_SCALARS = (int, float, str, bytes, bool, type(None), UUID)
#: Strings and bytes at least this long are shared through the object store.
_SHARE_MIN_BYTES = 64 * 1024


class SharedArgument:
    """An unmapped argument of a map, already in the object store."""

    __slots__ = ("digest", "immutable", "ref")

    def __init__(self, ref: ray.ObjectRef, immutable: bool, digest: str | None) -> None:
        self.ref = ref
        self.immutable = immutable
        #: Prefect's hash of the value, where the task's cache key hashes this input.
        self.digest = digest


def task_run_call(
    task_run_id: UUID,
    parameters: dict[str, Any],
    wait_for: Iterable[PrefectFuture[Any]] | None,
    dependencies: dict[str, set[RunInput]] | None,
) -> tuple[TaskRunCall, list[ray.ObjectRef]]:
    """The call of one task run and the ObjectRefs its `ArgSlot`s stand for."""
    refs: list[ray.ObjectRef] = []
    has_shared: list[bool] = []
    parameters = dict(parameters)
    links: dict[str, set[RunInput]] = {k: set(v) for k, v in (dependencies or {}).items()}
    digests: dict[str, str] = {}
    for key, value in parameters.items():
        if isinstance(value, _SCALARS):
            continue
        if isinstance(value, SharedArgument) and value.digest is not None:
            digests[key] = value.digest
        # Upstream links are recorded here, since the Ray worker process only sees values.
        inputs = collect_task_run_inputs_sync(value)
        if inputs:
            links.setdefault(key, set()).update(inputs)
        parameters[key] = _slots_for_refs(value, refs, has_shared)
    wait_for_arg = _slots_for_refs(list(wait_for), refs, has_shared) if wait_for else None
    call = TaskRunCall(
        task_run_id=task_run_id,
        parameters=parameters,
        wait_for=wait_for_arg,
        dependencies=links or None,
        has_slots=bool(refs or has_shared),
        first_arg=0,
        arg_count=len(refs),
        input_digests=digests or None,
    )
    return call, refs


def _slots_for_refs(value: Any, refs: list[ray.ObjectRef], has_shared: list[bool]) -> Any:
    """Replace our futures and shared arguments by slots; append the ObjectRefs to `refs`."""

    def swap(expr: Any) -> Any:
        if isinstance(expr, PrefectRayFuture):
            if expr._final_state is not None:
                return expr._final_state
            refs.append(expr.wrapped_future)
            return ArgSlot(len(refs) - 1)
        if isinstance(expr, SharedArgument):
            if expr.immutable:
                has_shared.append(True)
                return SharedArgSlot(expr.ref)
            refs.append(expr.ref)
            return ArgSlot(len(refs) - 1)
        return expr

    return visit_collection(value, visit_fn=swap, return_data=True)


def share_unmapped(parameters: dict[str, Any], hashed: set[str]) -> dict[str, Any]:
    """The map's parameters with large unmapped values put into the object store once,
    and hashed once if they are in `hashed` (the inputs the task's cache key hashes)."""
    for key, value in parameters.items():
        wrapped = isinstance(value, allow_failure | opaque | quote)
        inner = value.unwrap() if wrapped else value
        if isinstance(inner, unmapped) and _worth_sharing(inner.value):
            # Only a bare unmapped value reaches the task run as the value itself.
            digest = cache_keys.digest(inner.value) if key in hashed and not wrapped else None
            immutable = isinstance(inner.value, str | bytes)
            shared = SharedArgument(ray.put(inner.value), immutable, digest)
            parameters = {**parameters, key: _rewrap(value, unmapped(shared))}
    return parameters


def _rewrap(original: Any, new_value: Any) -> Any:
    if isinstance(original, allow_failure | opaque | quote):
        return original.rewrap(new_value)
    return new_value


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
