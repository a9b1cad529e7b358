"""What the namespace observer's events say (pure): gone, and terminating."""

from __future__ import annotations

from typing import Any

import pytest

from prefect_raypool_operator import kopf_namespaces

pytestmark = pytest.mark.unit


def event(type: str, deleting: bool) -> dict[str, Any]:
    metadata = {
        "name": "t-ns",
        **({"deletionTimestamp": "2026-01-01T00:00:00Z"} if deleting else {}),
    }
    conditions = [{"type": "NamespaceDeletionContentFailure", "status": "False"}]
    return {"type": type, "object": {"metadata": metadata, "status": {"conditions": conditions}}}


def test_a_terminating_namespace_is_watched_until_deleted_and_gets_no_events() -> None:
    assert not kopf_namespaces._gone(event("MODIFIED", deleting=False))
    assert not kopf_namespaces.terminating("t-ns")
    assert not kopf_namespaces._gone(event("MODIFIED", deleting=True))  # still watched
    assert kopf_namespaces.terminating("t-ns")
    assert kopf_namespaces._gone(event("DELETED", deleting=True))
    assert not kopf_namespaces.terminating("t-ns")
    assert not kopf_namespaces.terminating(None)
