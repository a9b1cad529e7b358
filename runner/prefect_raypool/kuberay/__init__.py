"""The `kuberay` Prefect worker: each flow run on its own KubeRay RayJob (Ephemeral pools).

Imported through the `prefect.collections` entry point, which registers the worker type.
"""

from prefect_raypool.kuberay.worker import KubeRayWorker

__all__ = ["KubeRayWorker"]
