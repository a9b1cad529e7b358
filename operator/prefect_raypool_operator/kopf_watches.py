"""Watch freshness: when each open watch stream last heard from the API server.

A kopf operator can hang with a green probe (kopf #1276, dask-kubernetes #620): a
watch connection goes silent, kopf's timers keep reconciling the cached bodies, so
reconcile freshness says nothing about whether the operator still sees changes.
Here every watch stream counts as heard when the API server sends it anything (an
event or a BOOKMARK, which kopf drops before handlers) or ends one of its watch
requests cleanly, as it does after `timeoutSeconds` (config.py's server timeout).
Bookmarks alone are not enough: the API server sends one only once the resource's
revision moved past the watcher's, so a quiet resource may get none for minutes
(seen on kube-apiserver 1.34); the clean end comes every server timeout.

Patched in kopf 1.45's `watching` module: `infinite_watch`, the whole life of one
stream (resource, namespace), says which streams are due; `api.stream` as watching
uses it, one watch request of a stream, says when each was heard.
"""

from __future__ import annotations

import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from kopf._cogs.clients import watching

StreamKey = str  # the watch URL's path: one per (resource, namespace)


def describe(resource: object, namespace: str | None) -> str:
    return f"{resource!r} in {namespace}" if namespace else f"{resource!r} cluster-wide"


@dataclass
class _Stream:
    name: str
    heard_at: float
    paused: Callable[[], bool]


def _not_paused() -> bool:
    return False


class Streams:
    """The open watch streams and when each was last heard (locked: kopf's loop writes,
    the probe, a sync handler, reads from an executor thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[StreamKey, _Stream] = {}

    def opened(
        self, key: StreamKey, name: str, now: float, paused: Callable[[], bool] = _not_paused
    ) -> object:
        """A stream starts: as fresh as a heard event. Returns a token for `closed`."""
        stream = _Stream(name, now, paused)
        with self._lock:
            self._open[key] = stream
        return stream

    def heard(self, key: StreamKey, now: float) -> None:
        with self._lock:
            stream = self._open.get(key)
            if stream is not None:
                stream.heard_at = now

    def closed(self, key: StreamKey, token: object) -> None:
        """A stream ends (its namespace is gone, the operator stops): no longer due.
        Only the stream that opened it: a newer one under the same key stays."""
        with self._lock:
            if self._open.get(key) is token:
                del self._open[key]

    def ages(self, now: float) -> dict[str, float]:
        """Seconds since each open stream (by name) was last heard. A paused stream
        (kopf's peering freeze) is silent on purpose: it counts as heard now."""
        with self._lock:
            for stream in self._open.values():
                if stream.paused():
                    stream.heard_at = now
            return {stream.name: now - stream.heard_at for stream in self._open.values()}


def stale(ages: dict[str, float], bound: float) -> list[tuple[str, float]]:
    """The streams silent for longer than the bound, the oldest first."""
    return sorted(((k, a) for k, a in ages.items() if a > bound), key=lambda ka: -ka[1])


def check(ages: dict[str, float], bound: float) -> dict[str, Any]:
    """The probe's payload; raises, naming the silent streams, when any is stale."""
    silent = stale(ages, bound)
    if silent:
        names = ", ".join(f"{name} for {age:.0f}s" for name, age in silent)
        raise StaleWatch(f"watch streams silent longer than {bound:.0f}s: {names}")
    oldest = max(ages.values(), default=0.0)
    return {"streams": len(ages), "oldest_silence_s": round(oldest, 1), "bound_s": bound}


class StaleWatch(RuntimeError):
    pass


STREAMS = Streams()


def _path(url: str) -> StreamKey:
    return url.partition("?")[0]


class _TrackedApi:
    """kopf's `api` module as `watching` sees it, with `stream` noting what is heard."""

    def __init__(
        self, api: Any, streams: Streams, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._api, self._streams, self._clock = api, streams, clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    async def stream(self, url: str, **kwargs: Any) -> AsyncIterator[Any]:
        key = _path(url)
        async for item in self._api.stream(url, **kwargs):
            self._streams.heard(key, self._clock())
            yield item
        # Ended without an error: the server closed the watch (its timeout), or kopf
        # paused it. A stalled connection ends in kopf's inactivity timeout instead.
        self._streams.heard(key, self._clock())


def track_watch_streams(streams: Streams = STREAMS) -> None:
    """Route every kopf watch stream through `streams` (idempotent)."""
    original = watching.infinite_watch
    if getattr(original, "_tracked", False):
        return

    async def infinite_watch(**kwargs: Any) -> AsyncIterator[Any]:
        resource, namespace = kwargs["resource"], kwargs.get("namespace")
        key = _path(resource.get_url(namespace=namespace))
        toggles = kwargs.get("operator_paused")
        paused = toggles.is_on if toggles is not None else _not_paused
        token = streams.opened(key, describe(resource, namespace), time.monotonic(), paused)
        try:
            async for item in original(**kwargs):
                yield item
        finally:
            streams.closed(key, token)

    infinite_watch._tracked = True  # type: ignore[attr-defined]
    watching.infinite_watch = infinite_watch  # type: ignore[assignment]
    watching.api = _TrackedApi(watching.api, streams)  # type: ignore[assignment]
