"""The runner's configuration: copies, comparisons and pickles all carry every field."""

from __future__ import annotations

import dataclasses
import pickle

import cloudpickle
import pytest

from prefect_raypool import RayTaskRunner
from prefect_raypool.config import RunnerConfig

pytestmark = [pytest.mark.unit]

#: A value for every field, none of them the default.
CUSTOM = {
    "address": "ray://head:10001",
    "init_kwargs": {"num_cpus": 2},
    "max_in_flight": 7,
    "quiet_workers": False,
    "max_batch": 3,
    "default_remote_options": {"num_cpus": 0.5},
    "warm_workers_s": 30,
}


def test_every_field_survives_duplicate_and_pickling() -> None:
    assert set(CUSTOM) == {f.name for f in dataclasses.fields(RunnerConfig)}
    runner = RayTaskRunner(**CUSTOM)
    copies = [
        runner.duplicate(),
        pickle.loads(pickle.dumps(runner)),
        cloudpickle.loads(cloudpickle.dumps(runner)),
    ]
    for copy in copies:
        assert type(copy) is RayTaskRunner
        assert copy.config == runner.config and copy == runner
        assert copy.config.init_kwargs is not runner.config.init_kwargs
    assert runner != RayTaskRunner()
    assert runner.address == "ray://head:10001"  # as prefect-ray's runner has it
    assert runner.init_kwargs == {"num_cpus": 2, "namespace": "prefect"}


def test_the_callers_dicts_are_copied() -> None:
    init_kwargs = {"namespace": "mine"}
    runner = RayTaskRunner(init_kwargs=init_kwargs)
    init_kwargs["num_cpus"] = 1
    assert runner.config.init_kwargs == {"namespace": "mine"}


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_in_flight", 0, "max_in_flight must be at least 1 or None, got 0"),
        ("max_batch", 0, "max_batch must be at least 1, got 0"),
        (
            "warm_workers_s",
            -1,
            r"warm_workers_s must be at least 0 \(0 turns warming off\), got -1",
        ),
    ],
)
def test_bad_values_are_refused(field: str, value: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RayTaskRunner(**{field: value})
