"""A map's shared argument hashed once for its cache keys, not once per task run.

Prefect's `Inputs` cache policy (part of the default policy) hashes every input of
every task run: a map of 20 task runs sharing one 50 MB `unmapped` argument hashes
those 50 MB 20 times, whatever the runner. Here the driver hashes a shared argument
once per map (with Prefect's own `hash_objects`, after Prefect's stable transforms)
and each task run's key is computed, by Prefect's `Inputs` policy, with that digest
in place of the value: `{SHARED_INPUT_KEY: digest}`.

The key stays a function of the inputs' content (same content, same key, across
flow runs too; different content, different key, with Prefect's own hash), so
Prefect's cache works as usual. It is not byte-for-byte the key Prefect would
compute (Prefect hashes all inputs as one document), so a cache entry written by
another runner for the same inputs is not found by this one, and vice versa.
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
from collections.abc import Mapping
from typing import Any
from uuid import UUID

from prefect.cache_policies import STABLE_TRANSFORMS, CompoundCachePolicy, Inputs
from prefect.utilities.hashing import hash_objects

#: What stands for a shared argument in the inputs that get hashed.
SHARED_INPUT_KEY = "prefect_raypool.shared_input_digest"

#: The digests of the task run running in this context: (task run id, {name: digest}).
_digests: contextvars.ContextVar[tuple[UUID, Mapping[str, str]] | None] = contextvars.ContextVar(
    "prefect_raypool_input_digests", default=None
)


# ---------------------------------------------------------------- driver side


def hashed_input_names(task: Any, names: list[str]) -> set[str]:
    """Which of `names` the task's cache policy hashes as inputs (none without `Inputs`)."""
    policies = _inputs_policies(getattr(task, "cache_policy", None))
    return {n for n in names if any(n not in (p.exclude or []) for p in policies)}


def digest(value: Any) -> str | None:
    """Prefect's hash of one input value; None where Prefect could not hash it (the
    task run's own key computation then reports it, as without this runner)."""
    from prefect.cache_policies import _register_stable_transforms

    _register_stable_transforms()
    transform = STABLE_TRANSFORMS.get(type(value))
    return hash_objects(transform(value) if transform else value)


def _inputs_policies(policy: Any) -> list[Inputs]:
    if isinstance(policy, Inputs):
        return [policy]
    if isinstance(policy, CompoundCachePolicy):
        return [p for sub in policy.policies for p in _inputs_policies(sub)]
    return []


# ---------------------------------------------------------------- worker side


def use_shared_digests(task: Any) -> None:
    """Make the (worker's private copy of the) task's `Inputs` policies take digests."""
    policy = getattr(task, "cache_policy", None)
    swapped = _swap_inputs(policy)
    if swapped is not policy:
        task.cache_policy = swapped


def set_digests(task_run_id: UUID, digests: Mapping[str, str]) -> None:
    """Use `digests` for the inputs of task run `task_run_id` run in this context."""
    _digests.set((task_run_id, digests))


def _swap_inputs(policy: Any) -> Any:
    if type(policy) is Inputs:
        fields = dataclasses.fields(policy)
        return _DigestInputs(**{f.name: getattr(policy, f.name) for f in fields if f.init})
    if type(policy) is CompoundCachePolicy:
        policies = [_swap_inputs(p) for p in policy.policies]
        if any(new is not old for new, old in zip(policies, policy.policies, strict=True)):
            # A copy, not `replace`: the constructor would rebuild a plain `Inputs`.
            compound = copy.copy(policy)
            compound.policies = policies
            return compound
    return policy


class _DigestInputs(Inputs):
    """Prefect's `Inputs` policy, taking the driver's digest for a shared argument."""

    def compute_key(
        self,
        task_ctx: Any,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        current = _digests.get()
        run = getattr(task_ctx, "task_run", None) if task_ctx else None
        # Only for the task run they were sent with: a task called inside it (same
        # context) hashes its own inputs.
        if current and inputs and run is not None and run.id == current[0]:
            inputs = {
                name: {SHARED_INPUT_KEY: current[1][name]} if name in current[1] else value
                for name, value in inputs.items()
            }
        return super().compute_key(task_ctx, inputs, flow_parameters, **kwargs)
