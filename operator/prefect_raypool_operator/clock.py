"""Moments on the operator's clock (`time.monotonic()`), as remembered between reconciles."""

#: When something has not happened yet: before every moment, so it is never recent.
NEVER = float("-inf")
