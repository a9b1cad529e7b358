"""GPU task runs: `remote_options(num_gpus=...)` and the pool's GPU default reach Ray.

Ray gives a task that asks for a GPU its own device (`ray.get_gpu_ids()`,
CUDA_VISIBLE_DEVICES). Without a GPU here the runner's local Ray declares one
logical GPU, which Ray schedules and assigns the same way; on a machine with an
NVIDIA GPU, Ray finds the real one.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from testbed.prefect_server import PrefectServer
from tests.runner.conftest import own_ray_env, run_python

pytestmark = [pytest.mark.ray, pytest.mark.prefect]


def _has_nvidia_gpu() -> bool:
    if shutil.which("nvidia-smi") is None:
        return False
    listed = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    return listed.returncode == 0 and "GPU 0" in listed.stdout


def test_gpu_options_assign_a_gpu(prefect_server: PrefectServer) -> None:
    init_kwargs = {} if _has_nvidia_gpu() else {"num_gpus": 1}
    code = f"""
        import json, os, ray
        from prefect import flow, task
        from prefect_raypool import RayTaskRunner
        from prefect_raypool.context import remote_options

        @task
        def gpus():
            return [ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES")]

        @task
        def pid():
            return os.getpid()

        @flow(task_runner=RayTaskRunner(init_kwargs={init_kwargs!r}))
        def check():
            with remote_options(num_gpus=1):
                asked = gpus.submit()
            plain = gpus.submit()
            with remote_options(num_gpus=0):
                none = gpus.submit()
            with remote_options(num_gpus=1):  # as @ray.remote(num_gpus=1): max_calls=1
                fresh = [pid.submit().result(timeout=60) for _ in range(2)]
                with remote_options(max_calls=0):
                    kept = [pid.submit().result(timeout=60) for _ in range(2)]
            return {{"asked": asked.result(timeout=60), "plain": plain.result(timeout=60),
                     "none": none.result(timeout=60), "fresh": fresh, "kept": kept}}

        print("SEEN", json.dumps(check()))
        """
    env = own_ray_env("g")
    seen = _seen(run_python(code, env=env, timeout=180))
    assert seen["asked"] == [[0], "0"]  # Ray gave the task GPU 0 and only it
    assert seen["plain"][0] == []  # no option: no GPU
    assert seen["none"][0] == []
    # Ray (and so prefect-ray) ends a GPU task's process after it, releasing the GPU
    # memory a library may hold, unless max_calls says otherwise.
    assert seen["fresh"][0] != seen["fresh"][1]
    assert seen["kept"][0] == seen["kept"][1]

    # A pool whose taskResources ask for a GPU (PREFECT_RAYPOOL_TASK_NUM_GPUS):
    # every task run gets one unless its remote_options say otherwise.
    pooled = _seen(run_python(code, env={**env, "PREFECT_RAYPOOL_TASK_NUM_GPUS": "1"}, timeout=180))
    assert pooled["plain"] == [[0], "0"]
    assert pooled["none"][0] == []


def _seen(out: subprocess.CompletedProcess[str]) -> dict[str, list[object]]:
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("SEEN ")]
    assert lines, out.stdout[-3000:] + out.stderr[-3000:]
    seen: dict[str, list[object]] = json.loads(lines[-1].removeprefix("SEEN "))
    return seen
