"""prefect-raypool's task runner: Prefect task runs on Ray, a faster drop-in for prefect-ray."""

from prefect_raypool.context import RemoteOptionsContext, remote_options
from prefect_raypool.futures import PrefectRayFuture
from prefect_raypool.task_runners import RayTaskRunner

__all__ = ["PrefectRayFuture", "RayTaskRunner", "RemoteOptionsContext", "remote_options"]
