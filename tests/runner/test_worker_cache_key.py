"""The worker computes the task-source part of a cache key once per task object."""

from __future__ import annotations

import copy
import types
import uuid

import pytest
from prefect import task
from prefect.cache_policies import INPUTS, TASK_SOURCE, TaskSource

from prefect_raypool import ray_worker


@task
def double(x: int) -> int:
    return 2 * x


def _ctx(task_obj: object) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        task=task_obj, task_run=types.SimpleNamespace(flow_run_id=uuid.UUID(int=7))
    )


def test_memoized_cache_key_equals_prefects(monkeypatch: pytest.MonkeyPatch) -> None:
    worker_copy = copy.copy(double)
    ray_worker._memoize_source_key(worker_copy)
    # The original task is untouched; the worker's copy keys exactly like it.
    assert not any(type(p) is ray_worker._MemoTaskSource for p in double.cache_policy.policies)
    for x in (1, 2, 1):
        expected = double.cache_policy.compute_key(_ctx(double), {"x": x}, None)
        assert worker_copy.cache_policy.compute_key(_ctx(worker_copy), {"x": x}, None) == expected

    calls = []
    original = TaskSource.compute_key

    def counting(self: TaskSource, *args: object, **kwargs: object) -> str | None:
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TaskSource, "compute_key", counting)
    fresh = copy.copy(double)
    ray_worker._memoize_source_key(fresh)
    for x in range(5):
        fresh.cache_policy.compute_key(_ctx(fresh), {"x": x}, None)
    assert len(calls) == 1
    # Another task object sharing the policy is never served a stale key.
    other = double.with_options(name="other")
    other.cache_policy = fresh.cache_policy
    fresh.cache_policy.compute_key(_ctx(other), {"x": 0}, None)
    assert len(calls) == 2


def test_other_cache_policies_are_left_alone() -> None:
    for policy in (INPUTS, None):
        t = double.with_options(cache_policy=policy)
        before = t.cache_policy
        ray_worker._memoize_source_key(t)
        assert t.cache_policy is before
    alone = double.with_options(cache_policy=TASK_SOURCE)
    ray_worker._memoize_source_key(alone)
    assert type(alone.cache_policy) is ray_worker._MemoTaskSource
