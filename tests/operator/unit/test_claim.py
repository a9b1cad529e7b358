"""Two operators covering one namespace never both act on a pool: each watches only the
pools labelled with its identity, and claims unlabelled ones with a conditional patch."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from kopf._cogs.structs.references import Resource

from prefect_raypool_operator import claim, config, kinds
from prefect_raypool_operator.config import Config

pytestmark = pytest.mark.unit


def _pool(namespace: str, name: str, version: str = "7") -> dict[str, Any]:
    return {
        "apiVersion": kinds.POOL.api_version,
        "kind": kinds.POOL.kind,
        "metadata": {"namespace": namespace, "name": name, "resourceVersion": version},
    }


def test_kopf_watches_only_the_pools_labelled_with_this_operators_identity() -> None:
    settings = kopf.OperatorSettings()
    config.configure_kopf(settings, Config(operator_id="ops.rel-prefect-raypool-operator"))
    pools = Resource(*kinds.POOL.resource)
    selectors = settings.watching.label_selectors.collect(pools)
    assert list(selectors) == ["prefectray.io/operator=ops.rel-prefect-raypool-operator"]
    assert claim.UNCLAIMED == "!prefectray.io/operator"


def test_the_claims_event_names_the_operator_on_the_pool() -> None:
    pool = _pool("a", "etl")
    pool["metadata"]["uid"] = "u1"
    event = claim.claimed_event(pool, "ops.rel", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert event["involvedObject"] == {
        "apiVersion": "prefectray.io/v1alpha1",
        "kind": "PrefectRayPool",
        "name": "etl",
        "namespace": "a",
        "uid": "u1",
    }
    assert (event["type"], event["reason"]) == ("Normal", "Claimed")
    assert "ops.rel" in event["message"] and event["metadata"]["namespace"] == "a"


def test_a_claim_is_conditional_on_the_pool_as_seen() -> None:
    """Two operators seeing one unclaimed pool both patch; the API server takes the
    first and refuses the second (409: the resourceVersion moved on)."""
    assert claim.claim_patch(_pool("a", "etl", "41"), "me") == {
        "metadata": {"labels": {"prefectray.io/operator": "me"}, "resourceVersion": "41"}
    }


@pytest.mark.parametrize(
    ("clusterwide", "patterns", "watched"),
    [
        (True, (), [None]),
        (False, ("team-a", "team-b"), ["team-a", "team-b"]),
        (False, ("t-*",), [None]),  # a pattern: the cluster, filtered as kopf does
        (False, ("team-a", "!kube-*"), [None]),
    ],
)
def test_unclaimed_pools_are_watched_where_the_operator_works(
    clusterwide: bool, patterns: tuple[str, ...], watched: list[str | None]
) -> None:
    assert claim.watched_namespaces(clusterwide, patterns) == watched


def test_in_scope_follows_kopfs_namespace_patterns() -> None:
    assert claim.in_scope("t-abc", False, ("t-*",))
    assert not claim.in_scope("default", False, ("t-*",))
    assert claim.in_scope("anything", True, ())


def test_the_claim_loop_labels_unclaimed_pools_in_scope_and_stops_with_the_operator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    claimed: list[tuple[str, str]] = []
    announced: list[str] = []
    monkeypatch.setattr(
        claim, "claim", lambda api, pool, me: claimed.append((pool["metadata"]["name"], me)) or True
    )
    monkeypatch.setattr(
        claim, "_announce", lambda api, pool, me: announced.append(pool["metadata"]["name"])
    )
    stopping = False

    @contextlib.contextmanager
    def writing() -> Iterator[bool]:
        yield not stopping

    def events(api: Any, namespace: str | None) -> Iterator[dict[str, Any]]:
        nonlocal stopping
        yield {"type": "ADDED", "object": _pool("t-a", "etl")}
        yield {"type": "ADDED", "object": _pool("default", "elsewhere")}  # out of scope
        yield {"type": "DELETED", "object": _pool("t-a", "gone")}
        yield {"type": "MODIFIED", "object": _pool("t-a", "unlabelled-again")}
        stopping = True  # the leader stops: nothing more is written
        yield {"type": "ADDED", "object": _pool("t-a", "late")}

    claim.claim_loop(
        None, "me", None, lambda ns: claim.in_scope(ns, False, ("t-*",)), writing, events
    )
    assert claimed == [("etl", "me"), ("unlabelled-again", "me")]
    assert announced == ["etl", "unlabelled-again"]


def test_a_broken_watch_is_opened_again(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[int] = []
    monkeypatch.setattr(claim, "claim", lambda api, pool, me: True)
    monkeypatch.setattr(claim, "_announce", lambda api, pool, me: None)

    @contextlib.contextmanager
    def writing() -> Iterator[bool]:
        yield len(opened) < 3

    def events(api: Any, namespace: str | None) -> Iterator[dict[str, Any]]:
        opened.append(1)
        raise ConnectionResetError("the API server restarted")
        yield {}

    claim.claim_loop(None, "me", "a", lambda ns: True, writing, events, retry_delay=0)
    assert len(opened) == 3


@pytest.mark.parametrize("bad", ["ops/rel", "-rel", "x" * 64, "rel."])
def test_an_identity_that_is_no_label_value_is_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("RAYPOOL_OPERATOR_ID", bad)
    with pytest.raises(ValueError, match="RAYPOOL_OPERATOR_ID=.*must be a label value"):
        Config.from_env()


def test_without_an_identity_the_operator_is_the_default_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RAYPOOL_OPERATOR_ID", raising=False)
    assert Config.from_env().operator_id == "prefect-raypool-operator"
