"""Liveness based on reconcile freshness, not on the process merely being up.

A kopf watch can stall while the HTTP endpoint stays green (kopf #1276). Every
known pool is reconciled by a timer at least every resync interval; if none has
been for several intervals, the operator is stuck and the probe fails so the
kubelet restarts it.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from prefect_raypool_operator.settings import CONFIG

_lock = threading.Lock()
_pools: set[tuple[str, str]] = set()
_last = time.monotonic()


def record(namespace: str, name: str) -> None:
    global _last
    with _lock:
        _pools.add((namespace, name))
        _last = time.monotonic()


def forget(namespace: str, name: str) -> None:
    with _lock:
        _pools.discard((namespace, name))


def stale_after() -> float:
    return 3 * CONFIG.resync_seconds + 60


def check(now: float | None = None) -> dict[str, Any]:
    """The probe's payload; raises when reconciles stopped while pools exist."""
    with _lock:
        age = (now if now is not None else time.monotonic()) - _last
        pools = len(_pools)
    if pools and age > stale_after():
        raise RuntimeError(f"no reconcile for {age:.0f}s with {pools} pools known")
    return {"pools": pools, "last_reconcile_age_s": round(age, 1)}
