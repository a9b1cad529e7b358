"""The Prefect context the driver ships to Ray worker processes with a flow's task runs.

It is Prefect's `serialize_context()`, with two changes that save a fresh Ray worker
process (every flow run of a pool gets fresh ones) most of its set-up:

- the settings context travels as the object, not as a dump of every setting that
  pydantic-settings validates again on the other side (about 0.1 s on each side);
- the logging configuration the flow run's process set up travels along, so the Ray
  worker process does not recompute it from every setting (see ray_worker.py).

`tests/runner/test_shipped_context.py` checks the keys against Prefect's own.
"""

from __future__ import annotations

import sys
from typing import Any

from prefect.context import (
    EngineContext,
    SettingsContext,
    TagsContext,
    TaskRunContext,
    serialize_context,
)


def serialize(settings_ctx: SettingsContext | None, local_server: bool) -> dict[str, Any]:
    """The current Prefect context, for `ray_worker._enter_context`.

    `local_server`: the driver started a local Ray and may run a temporary Prefect
    server, which the Ray worker processes must use too (see `_share_ephemeral_server`).
    """
    if local_server or settings_ctx is None:
        serialized = serialize_context()
        if local_server:
            _share_ephemeral_server(serialized)
        return serialized
    from prefect.context import _deployment_id, _deployment_parameters

    flow_run_ctx = EngineContext.get()
    task_run_ctx = TaskRunContext.get()
    tags_ctx = TagsContext.get()
    deployment_id = _deployment_id.get()
    return {
        "flow_run_context": flow_run_ctx.serialize() if flow_run_ctx else {},
        "task_run_context": task_run_ctx.serialize() if task_run_ctx else {},
        "tags_context": tags_ctx.serialize() if tags_ctx else {},
        "settings_context": settings_ctx.model_copy(),  # a copy: no context token
        "asset_context": {},
        "deployment_id": str(deployment_id) if deployment_id else None,
        "deployment_parameters": _deployment_parameters.get(),
    }


def logging(settings_ctx: SettingsContext | None) -> dict[str, Any] | None:
    """The logging configuration this process set up, when it was set up from the
    settings the task runs get (Prefect's global settings context)."""
    from prefect.context import GLOBAL_SETTINGS_CONTEXT
    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG

    if settings_ctx is not GLOBAL_SETTINGS_CONTEXT or not PROCESS_LOGGING_CONFIG:
        return None
    return {k: v for k, v in PROCESS_LOGGING_CONFIG.items() if k != "incremental"}


def _share_ephemeral_server(serialized: dict[str, Any]) -> None:
    """With no PREFECT_API_URL, the driver runs a temporary local Prefect server.

    Point the Ray worker processes of a local Ray this runner started at it:
    otherwise each would start a server of its own and the task runs would be
    recorded there, out of sight.
    """
    settings = (serialized.get("settings_context") or {}).get("settings")
    server_module = sys.modules.get("prefect.server.api.server")
    if not isinstance(settings, dict) or server_module is None:
        return
    if (settings.get("api") or {}).get("url"):
        return
    running = [s for s in server_module.SubprocessASGIServer._instances.values() if s.running]
    if running:
        settings.setdefault("api", {})["url"] = running[0].api_url
