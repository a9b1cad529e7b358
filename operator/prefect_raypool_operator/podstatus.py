"""Why a pool's pods do not run, in their own words (pure).

A bare "0/1 Prefect workers ready" helps nobody; the kubelet already knows the
reason: an image it cannot pull, a container that exits at once (its last log lines
are the termination message: the builders set FallbackToLogsOnError), OOMKilled, a
pod no node can take, an eviction. The first such reason found becomes the failing
condition's reason and message, as Prefect's Kubernetes observer does for flow runs.
A past OOMKilled counts only while it is current or recent: a container that was
killed once and has run since is not a pool Degraded for ever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from prefect_raypool_operator.status import Check

Obj = dict[str, Any]

#: Waiting reasons that will not go away by waiting.
STUCK_WAITING = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "ErrImageNeverPull",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
#: At most this much of a container's own message goes into the status.
MESSAGE_CHARS = 300
#: How long a running container's last OOMKilled still counts.
OOM_RECENT = timedelta(minutes=10)


def pod_failure(
    pods: Iterable[Obj], container: Callable[[str], bool], now: datetime | None = None
) -> Check | None:
    """The first reason found why a container that `container(name)` selects cannot
    run, as a failing Check; None when no selected container is stuck. `now` (the
    clock's, unless given) dates a restarted container's last OOMKilled."""
    now = now or datetime.now(UTC)
    for pod in pods:
        name = pod.get("metadata", {}).get("name", "?")
        status = pod.get("status") or {}
        if status.get("reason") == "Evicted":
            message = f"pod {name} was evicted: {status.get('message', '')}"
            return Check(False, "Evicted", message, from_pod=True)
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("reason") == "Unschedulable":
                message = f"pod {name}: {_short(cond.get('message'))}"
                return Check(False, "Unschedulable", message, from_pod=True)
        statuses = [*(status.get("initContainerStatuses") or []),
                    *(status.get("containerStatuses") or [])]  # fmt: skip
        for c in statuses:
            if not container(c.get("name", "")):
                continue
            found = _container_failure(c, now)
            if found:
                reason, detail = found
                message = f"pod {name}, container {c['name']}: {detail}"
                return Check(False, reason, message, from_pod=True)
    return None


def _container_failure(c: Obj, now: datetime) -> tuple[str, str] | None:
    state, last = c.get("state") or {}, c.get("lastState") or {}
    terminated = state.get("terminated") or last.get("terminated") or {}
    if terminated.get("reason") == "OOMKilled" and _oom_counts(state, terminated, now):
        return "OOMKilled", "killed for running out of memory (OOMKilled): raise its memory"
    waiting = state.get("waiting") or {}
    if waiting.get("reason") not in STUCK_WAITING:
        return None
    detail = f"{waiting['reason']}: {_short(waiting.get('message'))}"
    if terminated:
        code = terminated.get("exitCode")
        said = _short(terminated.get("message")) or terminated.get("reason", "")
        detail += f"; it last exited with code {code}: {said}"
    return waiting["reason"], detail


def _oom_counts(state: Obj, terminated: Obj, now: datetime) -> bool:
    """An OOMKilled counts while the container is not running again (terminated now,
    or waiting to restart), or ran out of memory within OOM_RECENT."""
    if "running" not in state:
        return True
    finished = terminated.get("finishedAt")
    if not finished:
        return False
    return now - datetime.fromisoformat(str(finished).replace("Z", "+00:00")) < OOM_RECENT


def _short(text: str | None) -> str:
    """The end of a message (where a log's error is), on one line."""
    flat = " ".join((text or "").split())
    return flat if len(flat) <= MESSAGE_CHARS else "..." + flat[-MESSAGE_CHARS:]
