"""The flow runs of a pool's work pool, through the Prefect REST API: the active ones
listed, an orphan marked Crashed (orphans.py decides which), the waiting ones counted
(idle.py, rayscaleup.py). Thin I/O.

As in workpool.py, failures are logged without an answer's body or the API key, and
come back as None/False, never an exception: the sweep is tried again next resync.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import httpx

from prefect_raypool_operator.orphans import ACTIVE_STATES
from prefect_raypool_operator.port import Queue
from prefect_raypool_operator.urls import redact
from prefect_raypool_operator.workpool import http_client

LOG = logging.getLogger(__name__)
LIMIT = 200  # Prefect's largest page; more active runs than this wait for later sweeps

Obj = dict[str, Any]


def active_flow_runs(
    api_url: str, work_pool: str, api_key: str | None, timeout: float
) -> list[Obj] | None:
    """The work pool's RUNNING and CANCELLING flow runs (raw JSON); None on failure."""
    body = {
        "flow_runs": {"state": {"type": {"any_": list(ACTIVE_STATES)}}},
        "work_pools": {"name": {"any_": [work_pool]}},
        "limit": LIMIT,
    }
    runs = _post(api_url, api_key, timeout, "/flow_runs/filter", body)
    return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else None


#: Runs that hold a worker process or soon will: they keep an idle pool awake (idle.py).
HOLDING = ("PENDING", "RUNNING", "PAUSED", "CANCELLING")


def queue(
    api_url: str,
    work_pool: str,
    api_key: str | None,
    timeout: float,
    near: datetime,
    far: datetime,
) -> Queue | None:
    """Count the work pool's flow runs that want a worker, now (holding one, or
    scheduled before `near`) and ahead (scheduled from `near` to `far`); None when
    Prefect did not answer."""

    def scheduled(before: datetime) -> Obj:
        return {
            "state": {"type": {"any_": ["SCHEDULED"]}},
            "expected_start_time": {"before_": before.isoformat()},
        }

    counts = []
    for runs in ({"state": {"type": {"any_": list(HOLDING)}}}, scheduled(near), scheduled(far)):
        body = {"flow_runs": runs, "work_pools": {"name": {"any_": [work_pool]}}}
        count = _post(api_url, api_key, timeout, "/flow_runs/count", body)
        if not isinstance(count, int):
            return None
        counts.append(count)
    holding, due, by_far = counts
    return Queue(now=holding + due, ahead=max(0, by_far - due))


def _post(api_url: str, api_key: str | None, timeout: float, path: str, body: Obj) -> Any:
    """The answer's JSON; None on any failure (logged without the body)."""
    base = api_url.rstrip("/")
    try:
        response = http_client(base, api_key, timeout).post(path, json=body)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        LOG.warning(f"asking {redact(base)}{path}: {type(exc).__name__}")
        return None
    if response.status_code != 200:
        LOG.warning(f"asking {redact(base)}{path}: HTTP {response.status_code}")
        return None
    try:
        return response.json()
    except ValueError:
        return None


def crash_flow_run(
    api_url: str, run_id: str, message: str, api_key: str | None, timeout: float
) -> bool:
    """Propose Crashed (not forced: a run that finished meanwhile keeps its state)."""
    base = api_url.rstrip("/")
    state = {"type": "CRASHED", "name": "Crashed", "message": message}
    try:
        response = http_client(base, api_key, timeout).post(
            f"/flow_runs/{run_id}/set_state", json={"state": state, "force": False}
        )
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        LOG.warning(f"marking flow run {run_id} Crashed at {redact(base)}: {type(exc).__name__}")
        return False
    if response.status_code not in (200, 201):
        LOG.warning(f"marking flow run {run_id} Crashed: HTTP {response.status_code}")
        return False
    try:
        status = response.json().get("status")
    except (ValueError, AttributeError):
        return False
    return bool(status == "ACCEPT")
