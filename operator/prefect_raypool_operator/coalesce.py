"""Coalesce bursts of triggers per key into at most one running and one pending run.

KubeRay and the Deployment controller update an owned object's status several times
while it starts; each update triggers a reconcile of the pool. Instead of queueing
them all (a storm with 100 pools), a trigger that finds a run in progress marks the
key dirty and returns; the running one goes once more when it finishes. Nothing is
lost: the extra run re-reads everything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from typing import TypeVar

T = TypeVar("T")


class Coalescer:
    """Per key: one run at a time; triggers meanwhile fold into one follow-up run.

    Each trigger carries a flag (here: "repair", i.e. apply, not only observe); the
    follow-up run gets the OR of the folded flags, so no request for more is lost.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: set[Hashable] = set()
        self._dirty: dict[Hashable, bool] = {}

    def run(
        self, key: Hashable, fn: Callable[[bool], T], flag: bool = True
    ) -> tuple[bool, T | None]:
        """(True, last result) if this call ran `fn`; (False, None) if folded into a run."""
        with self._lock:
            if key in self._running:
                self._dirty[key] = self._dirty.get(key, False) or flag
                return False, None
            self._running.add(key)
        try:
            while True:
                result = fn(flag)
                with self._lock:
                    if key not in self._dirty:
                        self._running.discard(key)
                        return True, result
                    flag = self._dirty.pop(key)
        except BaseException:
            with self._lock:
                self._running.discard(key)
                self._dirty.pop(key, None)
            raise
