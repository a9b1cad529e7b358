"""Keep watching a namespace while it terminates, so pools in it are finalized.

kopf (1.45), scoped to namespaces, stops watching a namespace as soon as it sees it
marked for deletion with status conditions of which none is True. The namespace
controller writes exactly such a status first (all False) before it deletes the
namespace's content; kopf then never sees the pools marked for deletion, never runs
their deletion handler, and their finalizer holds the namespace in Terminating for
ever (seen in tests/operator/cluster/test_namespace_deletion.py). Here a namespace counts as
gone only when it is: its watches end with the DELETED event.

The same namespace events say which namespaces are terminating: the API server
refuses new Events there (403), and kopf would retry each one nine times, logging
an ERROR every time, so kube.py posts none there.
"""

from __future__ import annotations

from typing import Any

from kopf._core.reactor import observation

_terminating: set[str] = set()  # written by kopf's loop, read from reconcile threads


def _gone(raw_event: Any) -> bool:
    metadata = raw_event["object"].get("metadata", {})
    name, deleted = metadata.get("name"), raw_event["type"] == "DELETED"
    if metadata.get("deletionTimestamp") and not deleted:
        _terminating.add(name)
    else:
        _terminating.discard(name)
    return bool(deleted)


def terminating(namespace: str | None) -> bool:
    """Known to be terminating (only when the operator is scoped by namespace patterns:
    kopf watches namespaces then, not with --all-namespaces)."""
    return namespace in _terminating


def keep_watching_terminating_namespaces() -> None:
    observation.is_deleted = _gone
