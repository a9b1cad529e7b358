"""Watch freshness (pure): which open streams are stale, and what counts as heard."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from prefect_raypool_operator import config, kopf_watches
from prefect_raypool_operator.kopf_watches import StaleWatch, Streams, check

pytestmark = pytest.mark.unit

POOLS = "/apis/prefectray.io/v1alpha1/namespaces/a/prefectraypools"
NAMESPACES = "/api/v1/namespaces"


def test_a_stream_silent_past_the_bound_fails_the_check_by_name() -> None:
    streams = Streams()
    streams.opened(POOLS, "prefectraypools in a", now=0)
    streams.opened(NAMESPACES, "namespaces.v1 cluster-wide", now=0)
    streams.heard(NAMESPACES, now=100)
    assert check(streams.ages(now=110), bound=180)["streams"] == 2
    with pytest.raises(StaleWatch, match=r"longer than 180s: prefectraypools in a for 200s$"):
        check(streams.ages(now=200), bound=180)
    streams.heard(POOLS, now=200)
    payload = check(streams.ages(now=201), bound=180)
    assert payload == {"streams": 2, "oldest_silence_s": 101.0, "bound_s": 180}


def test_a_closed_stream_is_no_longer_due_but_a_newer_one_stays() -> None:
    streams = Streams()
    old = streams.opened(POOLS, "pools", now=0)
    streams.opened(POOLS, "pools", now=50)  # the namespace came back: a new stream
    streams.closed(POOLS, old)
    assert streams.ages(now=60) == {"pools": 10}
    streams.heard("/never/opened", now=60)  # a watch request of no open stream: ignored
    assert list(streams.ages(now=60)) == ["pools"]


def test_a_paused_stream_counts_as_heard_until_it_resumes() -> None:
    streams, paused = Streams(), [True]
    streams.opened(POOLS, "pools", now=0, paused=lambda: paused[0])
    assert check(streams.ages(now=1000), bound=180)["oldest_silence_s"] == 0
    paused[0] = False
    assert streams.ages(now=1100) == {"pools": 100}


def test_no_open_streams_is_healthy() -> None:
    assert check({}, bound=1) == {"streams": 0, "oldest_silence_s": 0.0, "bound_s": 1}


class FakeApi:
    """kopf's api module as far as `stream` goes: lines, then a clean end or an error."""

    def __init__(self, lines: list[Any], error: BaseException | None = None) -> None:
        self.lines, self.error = lines, error
        self.other = "passed through"

    async def stream(self, url: str, **_: Any) -> AsyncIterator[Any]:
        for line in self.lines:
            await asyncio.sleep(0)
            yield line
        if self.error:
            raise self.error


def drain(api: Any, url: str) -> list[Any]:
    async def run() -> list[Any]:
        return [line async for line in api.stream(url, settings=None)]

    return asyncio.run(run())


def test_events_and_a_clean_end_are_heard_an_interrupted_watch_is_not() -> None:
    ticks = iter(range(10, 1000, 10))
    clock = ticks.__next__
    streams = Streams()
    streams.opened(POOLS, "pools", now=0)
    url = f"{POOLS}?watch=true&timeoutSeconds=60"

    quiet = kopf_watches._TrackedApi(FakeApi([]), streams, clock)
    assert drain(quiet, url) == [] and streams.ages(now=10) == {"pools": 0}
    assert quiet.other == "passed through"

    bookmark = {"type": "BOOKMARK", "object": {}}
    stalled = kopf_watches._TrackedApi(FakeApi([bookmark], TimeoutError()), streams, clock)
    with pytest.raises(TimeoutError):
        drain(stalled, url)
    assert streams.ages(now=100) == {"pools": 80}  # heard the bookmark at 20, not the end


def test_defaults_leave_room_for_a_quiet_stream_to_end_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("RAYPOOL_WATCH_SERVER_TIMEOUT", "40")
    derived = config.Config.from_env()
    assert derived.watch_inactivity_timeout == 50 and derived.watch_stale_seconds == 120
    default = config.Config()
    assert default.watch_inactivity_timeout > default.watch_server_timeout
    assert default.watch_stale_seconds == 3 * default.watch_server_timeout
