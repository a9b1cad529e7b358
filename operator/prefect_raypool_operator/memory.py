"""What the controller remembers between reconciles, per pool, and its liveness.

Everything about one pool lives in one `PoolMemory`, so `Memory.forget` forgets all
of it at once. A pool deleted and created again under the same name has a new uid,
and starts with a blank memory.

Liveness: a kopf watch can stall while the HTTP endpoint stays green (kopf #1276).
Every known pool is reconciled by a timer at least every resync interval; if none
has been for several intervals, the operator is stuck and the probe fails so the
kubelet restarts it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from prefect_raypool_operator.clock import NEVER
from prefect_raypool_operator.config import CONFIG
from prefect_raypool_operator.replicas import Contest

PoolKey = tuple[str, str]  # (namespace, name)


@dataclass(frozen=True)
class Applied:
    """What the operator last applied of one owned object, and what the API server
    answered: the manifest's digest, the object's uid and generation, and when."""

    digest: str
    uid: str | None
    generation: int | None
    at: float


@dataclass
class PoolMemory:
    uid: str
    # The status we last wrote. The watch may lag behind our own writes; comparing with
    # what we wrote keeps Events to one per transition and skips writes that change nothing.
    written_status: dict[str, Any] | None = None
    # (kind, name) -> metadata.generation of each owned object as last applied or seen:
    # an event with another generation means someone changed its spec (drift).
    generations: dict[tuple[str, str], int | None] = field(default_factory=dict)
    # (kind, name) -> the last apply of each owned object (reconcile.in_sync).
    applied: dict[tuple[str, str], Applied] = field(default_factory=dict)
    # When the operator's Ray token Secret was last known to exist, and the digest of
    # its token (builders/ray_token.py): pods with another digest hold an older token.
    ray_token_seen_at: float = NEVER
    ray_token_digest: str | None = None
    ray_token_written: str | None = None  # when its Secret was last written
    # Successful work-pool checks, by what they checked: owned objects' events reconcile
    # often, the Prefect API need not be asked more than once per resync interval.
    work_pool_checked_at: dict[tuple[object, ...], float] = field(default_factory=dict)
    # Another field manager changing the worker Deployment's replicas, and when the
    # operator restores them next (replicas.py).
    replicas_contest: Contest = field(default_factory=Contest)
    # The orphan sweep (orphans.py): when it last ran, the flow runs it found orphaned
    # (crashed if the next sweep finds them so too), the draining pods already told.
    orphans_swept_at: float = NEVER
    orphan_suspects: set[str] = field(default_factory=set)
    draining_told: set[str] = field(default_factory=set)
    # The flow runs the Ray worker groups were last raised for (rayscaleup.py).
    raised_for: int = 0
    reconciled: bool = False  # counted by the liveness probe


def recent(at: float) -> bool:
    """Within most of a resync interval: what the resync timer would re-check anyway."""
    return time.monotonic() - at < 0.9 * CONFIG.resync_seconds


class Memory:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pools: dict[PoolKey, PoolMemory] = {}
        self._last_reconcile = time.monotonic()

    def of(self, key: PoolKey, uid: str) -> PoolMemory:
        """The memory of the pool with this uid; blank for a new uid."""
        with self._lock:
            memory = self._pools.get(key)
            if memory is None or memory.uid != uid:
                memory = self._pools[key] = PoolMemory(uid)
            return memory

    def get(self, key: PoolKey) -> PoolMemory | None:
        with self._lock:
            return self._pools.get(key)

    def forget(self, key: PoolKey) -> None:
        with self._lock:
            self._pools.pop(key, None)

    def reconciled(self, memory: PoolMemory) -> None:
        with self._lock:
            memory.reconciled = True
            self._last_reconcile = time.monotonic()

    def liveness(self, now: float | None = None) -> dict[str, Any]:
        """The probe's payload; raises when reconciles stopped while pools exist."""
        with self._lock:
            age = (now if now is not None else time.monotonic()) - self._last_reconcile
            pools = sum(1 for memory in self._pools.values() if memory.reconciled)
        if pools and age > stale_after():
            raise RuntimeError(f"no reconcile for {age:.0f}s with {pools} pools known")
        return {"pools": pools, "last_reconcile_age_s": round(age, 1)}


def stale_after() -> float:
    return 3 * CONFIG.resync_seconds + 60
