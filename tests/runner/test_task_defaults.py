"""Default Ray resources of task runs from PREFECT_RAYPOOL_TASK_* (set by the operator)."""

from __future__ import annotations

import pytest
from prefect.task_runners import ThreadPoolTaskRunner

from prefect_raypool.context import TASK_RESOURCE_ENV, remote_options_from_env
from prefect_raypool.task_runners import RayTaskRunner
from prefect_raypool.wire import TakesDriverDefaults

pytestmark = [pytest.mark.unit]


def test_variables_become_ray_options() -> None:
    env = {"PREFECT_RAYPOOL_TASK_NUM_CPUS": "0.5", "PREFECT_RAYPOOL_TASK_NUM_GPUS": "1"}
    assert remote_options_from_env(env) == {"num_cpus": 0.5, "num_gpus": 1}
    # What the operator writes for the spec's defaults (str of a float or an int).
    env = {"PREFECT_RAYPOOL_TASK_NUM_CPUS": "1.0", "PREFECT_RAYPOOL_TASK_NUM_GPUS": "0"}
    assert remote_options_from_env(env) == {"num_cpus": 1, "num_gpus": 0}
    assert remote_options_from_env({"PREFECT_RAYPOOL_TASK_NUM_GPUS": " 0.25 "}) == {
        "num_gpus": 0.25
    }


def test_unset_or_empty_variables_set_nothing() -> None:
    assert remote_options_from_env({}) == {}
    assert remote_options_from_env({"PREFECT_RAYPOOL_TASK_NUM_CPUS": ""}) == {}
    assert set(TASK_RESOURCE_ENV.values()) == {"num_cpus", "num_gpus"}


@pytest.mark.parametrize(
    ("name", "value", "why"),
    [
        ("PREFECT_RAYPOOL_TASK_NUM_CPUS", "two", "not a number of at least 0"),
        ("PREFECT_RAYPOOL_TASK_NUM_CPUS", "-1", "not a number of at least 0"),
        ("PREFECT_RAYPOOL_TASK_NUM_CPUS", "nan", "not a number of at least 0"),
        ("PREFECT_RAYPOOL_TASK_NUM_GPUS", "inf", "not a number of at least 0"),
        ("PREFECT_RAYPOOL_TASK_NUM_GPUS", "1.5", "fraction above 1"),
    ],
)
def test_bad_values_name_the_variable_and_the_fix(name: str, value: str, why: str) -> None:
    with pytest.raises(ValueError) as info:
        remote_options_from_env({name: value})
    message = str(info.value)
    assert message.startswith(f"{name}={value!r}")
    assert why in message
    assert "spec.ray.taskResources" in message and "or unset it" in message


def test_a_ray_worker_recognizes_the_runner_that_takes_the_drivers_defaults() -> None:
    # ray_worker.py hands the driver's defaults to a nested flow-run context's runner
    # through this protocol, not by importing RayTaskRunner.
    runner = RayTaskRunner().duplicate()
    assert isinstance(runner, TakesDriverDefaults)
    runner.use_env_remote_options({"num_cpus": 2})
    assert runner._env_remote_options == {"num_cpus": 2}
    assert not isinstance(ThreadPoolTaskRunner(), TakesDriverDefaults)
