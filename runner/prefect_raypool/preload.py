"""Imported by a Ray node into each Ray worker process before it has a job.

Set `RAY_preload_python_modules=prefect_raypool.preload` on `ray start` (the
operator does, on a pool's Ray pods) and Ray worker processes import Prefect, its
task engine and this runner while idle, and do Prefect's first-use work that
depends on no flow run, so the first task run of a new flow run (a new Ray job,
see warm.py) finds it done. Nothing here touches the API, and logging is left to
be configured from the flow run's own settings, which arrive with its tasks.
"""

from __future__ import annotations


def _warm() -> None:
    import prefect.task_engine  # noqa: F401 - the import is the point
    from prefect._internal.plugins.collections import load_prefect_collections
    from prefect._internal.result_records import ResultRecordMetadata
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.events.worker import EventsWorker  # noqa: F401
    from prefect.flows import Flow
    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG
    from prefect.logging.handlers import APILogWorker  # noqa: F401
    from prefect.tasks import Task

    import prefect_raypool.ray_worker  # noqa: F401

    # Prefect loads its installed collections (entry points; this runner's worker
    # type among them) the first time a flow-run context is built: most of a
    # fresh process's first context.
    load_prefect_collections()
    types = {"Flow": Flow, "Task": Task, "ResultRecordMetadata": ResultRecordMetadata}
    FlowRunContext.model_rebuild(_types_namespace=types)
    TaskRunContext.model_rebuild(_types_namespace=types)
    # Those imports configure logging from this node's environment; forget that, so
    # the first task run configures it from its flow run's settings, as in a
    # process that was not preloaded.
    PROCESS_LOGGING_CONFIG.clear()


_warm()
