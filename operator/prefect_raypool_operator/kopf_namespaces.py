"""Keep watching a namespace while it terminates, so pools in it are finalized.

kopf (1.45), scoped to namespaces, stops watching a namespace as soon as it sees it
marked for deletion with status conditions of which none is True. The namespace
controller writes exactly such a status first (all False) before it deletes the
namespace's content; kopf then never sees the pools marked for deletion, never runs
their deletion handler, and their finalizer holds the namespace in Terminating for
ever (seen in tests/operator/test_namespace_deletion.py). Here a namespace counts as
gone only when it is: its watches end with the DELETED event.
"""

from __future__ import annotations

from typing import Any

from kopf._core.reactor import observation


def _gone(raw_event: Any) -> bool:
    return bool(raw_event["type"] == "DELETED")


def keep_watching_terminating_namespaces() -> None:
    observation.is_deleted = _gone
