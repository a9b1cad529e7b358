"""The classic prefect-ray example, on prefect-raypool: `python examples/count_to.py`.

Ten 0.5 s tasks run in parallel on Ray. With no address the runner attaches to a
running local Ray (RAY_ADDRESS, or /tmp/ray/session_latest) or starts a temporary one.
"""

import time

from prefect import flow, task

from prefect_raypool import RayTaskRunner


@task
def shout(number: int) -> int:
    time.sleep(0.5)
    print(f"#{number}")
    return number


@flow(task_runner=RayTaskRunner())
def count_to(highest_number: int) -> list[int]:
    return shout.map(range(highest_number)).result()


if __name__ == "__main__":
    count_to(10)
