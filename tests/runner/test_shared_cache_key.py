"""A map's shared argument is hashed once for the task runs' cache keys, and Prefect's
cache still hits and misses on the argument's content (real Ray, real Prefect server)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from prefect import flow, task
from prefect.cache_policies import INPUTS
from prefect.task_runners import ThreadPoolTaskRunner
from prefect.utilities.annotations import unmapped

from prefect_raypool import RayTaskRunner, cache_keys

pytestmark = [pytest.mark.ray, pytest.mark.prefect, pytest.mark.usefixtures("ray_session")]


@task(cache_policy=INPUTS)
def size_inputs(blob: bytes, i: int) -> int:
    return len(blob) + i


@task(persist_result=True)  # Prefect's default cache policy; a hit needs a stored result
def size_default(blob: bytes, i: int) -> int:
    return len(blob) + i


def state_names(futures: Any) -> list[str]:
    futures.wait()
    return [f.state.name for f in futures]


def test_cache_hits_and_misses_follow_the_shared_arguments_content() -> None:
    blob = os.urandom(1024) * 1024  # 1 MiB, shared through the object store
    changed = blob[:-1] + bytes([blob[-1] ^ 1])

    @flow(task_runner=RayTaskRunner())
    def inputs_policy(data: bytes) -> tuple[list[str], list[int]]:
        futures = size_inputs.map(unmapped(data), range(4))
        return state_names(futures), futures.result()

    # INPUTS: keys depend on the inputs only, so they hit across flow runs.
    first, results = inputs_policy(blob)
    assert results == [len(blob) + i for i in range(4)]
    again, results = inputs_policy(blob)
    assert again == ["Cached"] * 4 and results == [len(blob) + i for i in range(4)]
    other, _ = inputs_policy(changed)
    assert "Cached" not in other, "one changed byte is a different key"
    assert inputs_policy(changed)[0] == ["Cached"] * 4

    @flow(task_runner=RayTaskRunner())
    def default_policy(data: bytes, other: bytes) -> list[list[str]]:
        # The default policy keys on the inputs, the task's source and the flow run.
        return [
            state_names(size_default.map(unmapped(data), range(3))),
            state_names(size_default.map(unmapped(data), range(3))),
            state_names(size_default.map(unmapped(other), range(3))),
            state_names(size_default.map(unmapped(data), range(1, 4))),
        ]

    first_map, same, different, shifted = default_policy(blob, changed)
    assert "Cached" not in first_map
    assert same == ["Cached"] * 3
    assert "Cached" not in different
    assert shifted == ["Cached", "Cached", "Completed"]  # i=1, 2 seen with this blob


class CountedBlob:
    """Appends a byte to `path` whenever it is pickled: Prefect hashes a value JSON
    cannot encode by pickling it, so the file counts the hashing (and Ray's one copy
    into the object store)."""

    def __init__(self, path: str, data: bytes) -> None:
        self.path = path
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        with open(self.path, "ab") as f:
            f.write(b".")
        return (CountedBlob, (self.path, self.data))


@task(persist_result=True)
def counted_size(blob: CountedBlob, i: int) -> int:
    return len(blob.data) + i


def test_a_shared_argument_is_hashed_once_per_map(tmp_path: Path) -> None:
    n = 6

    def mapped(path: str) -> tuple[list[int], list[str]]:
        blob = CountedBlob(path, b"x" * 100_000)
        first = counted_size.map(unmapped(blob), range(n))
        results = first.result()
        again = counted_size.map(unmapped(blob), range(n))
        return results, state_names(again)

    threads = tmp_path / "threads"
    results, states = flow(task_runner=ThreadPoolTaskRunner())(mapped)(str(threads))
    assert results == [100_000 + i for i in range(n)] and states == ["Cached"] * n
    assert threads.read_bytes().count(b".") >= 2 * n  # Prefect alone: once per task run

    ours = tmp_path / "ours"
    results, states = flow(task_runner=RayTaskRunner())(mapped)(str(ours))
    assert results == [100_000 + i for i in range(n)] and states == ["Cached"] * n
    # Per map: one copy into Ray's object store and one hash, on the driver.
    assert ours.read_bytes().count(b".") == 2 * 2


def test_excluded_or_uncached_inputs_are_not_hashed() -> None:
    names = ["blob", "i"]
    assert cache_keys.hashed_input_names(size_inputs, names) == {"blob", "i"}
    assert cache_keys.hashed_input_names(size_default, names) == {"blob", "i"}
    excluded = size_inputs.with_options(cache_policy=INPUTS - "blob")
    assert cache_keys.hashed_input_names(excluded, names) == {"i"}
    from prefect.cache_policies import NO_CACHE

    assert (
        cache_keys.hashed_input_names(size_inputs.with_options(cache_policy=NO_CACHE), names)
        == set()
    )
    keyed = size_inputs.with_options(cache_key_fn=lambda *_: "fixed")
    assert cache_keys.hashed_input_names(keyed, names) == set()
