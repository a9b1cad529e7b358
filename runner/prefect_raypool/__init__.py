"""prefect-raypool's task runner: Prefect task runs on Ray, a faster drop-in for prefect-ray.

The names below are imported on first use: importing the package (or one of its
modules) costs no Ray import until a name that needs Ray is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prefect_raypool.context import RemoteOptionsContext, remote_options
    from prefect_raypool.futures import PrefectRayFuture
    from prefect_raypool.task_runners import RayTaskRunner

_HOME = {
    "PrefectRayFuture": "prefect_raypool.futures",
    "RayTaskRunner": "prefect_raypool.task_runners",
    "RemoteOptionsContext": "prefect_raypool.context",
    "remote_options": "prefect_raypool.context",
}
__all__ = ["PrefectRayFuture", "RayTaskRunner", "RemoteOptionsContext", "remote_options"]


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME[name]), name)
    globals()[name] = value
    return value
