"""`eventually`: poll until something holds, for tests that wait on real servers."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def eventually(
    check: Callable[[], Any], timeout: float = 90.0, what: str = "", interval: float = 0.3
) -> Any:
    """Poll `check` until it returns something truthy and return that; fail after timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout:.0f}s waiting for {what or check}; last value: {last!r}"
            )
        time.sleep(interval)
