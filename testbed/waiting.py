"""`eventually`: the test bed's one way to wait, for tests on real servers and for the
test bed's own start-up (`make up`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def eventually(
    check: Callable[[], Any],
    timeout: float = 90.0,
    what: str = "",
    interval: float = 0.3,
    alive: Callable[[], None] = lambda: None,
) -> Any:
    """Poll `check` until it returns something truthy and return that; a TimeoutError
    after `timeout`. `alive` raises early when something waited on has died."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = check()
        if last:
            return last
        alive()
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"timed out after {timeout:.0f}s waiting for {what or check}; last value: {last!r}"
            )
        time.sleep(interval)
