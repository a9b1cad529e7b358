"""Pure: a RayJob and its pods to what the flow run's state and logs should say.

The model is Prefect's Kubernetes worker and its observer: a cluster that cannot come
up is a crash with its reason, never a run left Pending or Running for ever. Only the
pods the run cannot do without count: the head (the driver runs there) and the
submitter (it follows the driver). A Ray worker pod that fails is KubeRay's to
replace, and Ray's to retry the tasks it held: a warning, not a crash.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

Obj = dict[str, Any]

#: Container waiting reasons that will not resolve by waiting.
FATAL_WAITING = {
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
    "ErrImageNeverPull",
    "RunContainerError",
}
#: A terminated container's reasons that doom the cluster.
FATAL_TERMINATED = {"OOMKilled", "ContainerCannotRun", "StartError"}
TERMINAL_DEPLOYMENT = {"Complete", "Failed", "ValidationFailed"}
#: Deployment statuses of a RayJob whose cluster KubeRay is still bringing up.
STARTING = {"", "New", "Initializing"}
#: KubeRay's label of a Ray pod's role, and the submitter Job's pods' label.
NODE_TYPE_LABEL = "ray.io/node-type"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


@dataclass(frozen=True)
class RayJobOutcome:
    """Where the RayJob stands: still going, succeeded, or failed with a reason."""

    finished: bool
    succeeded: bool = False
    reason: str = ""


def unschedulable(pod: Obj, now: datetime) -> tuple[str, float] | None:
    """(what the scheduler says, for how many seconds) while the pod has no node.

    Not a failure by itself: a cluster autoscaler may be adding a node for it."""
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if (
            cond.get("type") == "PodScheduled"
            and cond.get("status") == "False"
            and cond.get("reason") == "Unschedulable"
        ):
            name = pod.get("metadata", {}).get("name", "?")
            since = cond.get("lastTransitionTime")
            waited = (now - _timestamp(since)).total_seconds() if since else 0.0
            return f"pod {name} Unschedulable: {cond.get('message', '')}".rstrip(": "), waited
    return None


def _timestamp(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def role(pod: Obj) -> str:
    """`head`, `submitter` or `worker` (any other pod of the cluster)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get(NODE_TYPE_LABEL) == "head":
        return "head"
    if JOB_NAME_LABEL in labels:
        return "submitter"
    return "worker"


def _pod_problem(pod: Obj, now: datetime, schedule_timeout_s: float) -> str | None:
    name = pod.get("metadata", {}).get("name", "?")
    status = pod.get("status") or {}
    if status.get("reason") == "Evicted" or (
        status.get("phase") == "Failed" and status.get("reason")
    ):
        return f"pod {name} {status.get('reason')}: {status.get('message', '')}".rstrip(": ")
    if (waiting_node := unschedulable(pod, now)) and waiting_node[1] >= schedule_timeout_s:
        return f"{waiting_node[0]} (for {waiting_node[1]:.0f}s)"
    for cs in status.get("containerStatuses") or []:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            msg = waiting.get("message", "")
            return f"pod {name} container {cs.get('name')} {waiting['reason']}: {msg}".rstrip(": ")
        term = state.get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
        if term.get("reason") in FATAL_TERMINATED:
            return (
                f"pod {name} container {cs.get('name')} {term['reason']} "
                f"(exit code {term.get('exitCode')})"
            )
    return None


def pod_failure(
    pods: list[Obj], now: datetime | None = None, schedule_timeout_s: float = 0.0
) -> str | None:
    """The first problem of the head or the submitter that will not resolve by waiting,
    named, or None. A pod counts as unschedulable for good after `schedule_timeout_s`
    without a node."""
    now = now or datetime.now(UTC)
    for pod in pods:
        if role(pod) != "worker" and (problem := _pod_problem(pod, now, schedule_timeout_s)):
            return problem
    return None


def worker_pod_problems(
    pods: list[Obj], now: datetime | None = None, schedule_timeout_s: float = 0.0
) -> list[str]:
    """What is wrong with Ray worker pods: worth a warning in the run's logs, no crash."""
    now = now or datetime.now(UTC)
    found = (_pod_problem(p, now, schedule_timeout_s) for p in pods if role(p) == "worker")
    return [problem for problem in found if problem]


def never_started(
    rayjob: Obj, pods: list[Obj], now: datetime, start_timeout_s: float | None
) -> str | None:
    """Why the cluster counts as never started: no head pod `start_timeout_s` after the
    RayJob was created (a quota or an admission webhook refusing the pods, KubeRay
    not running). None while there is time left, once there is a head pod, and once
    KubeRay has moved the RayJob past starting."""
    created = (rayjob.get("metadata") or {}).get("creationTimestamp")
    deployment = (rayjob.get("status") or {}).get("jobDeploymentStatus") or ""
    if start_timeout_s is None or not created or deployment not in STARTING:
        return None
    if any(role(p) == "head" for p in pods):
        return None
    waited = (now - _timestamp(created)).total_seconds()
    if waited < start_timeout_s:
        return None
    return (
        f"no Ray head pod {waited:.0f}s after the RayJob was created (job variable "
        "cluster_start_timeout_seconds): see the RayJob's and its RayCluster's events"
    )


def rayjob_outcome(rayjob: Obj) -> RayJobOutcome:
    """KubeRay's verdict on the RayJob, its own reason and message kept."""
    status = rayjob.get("status") or {}
    deployment = status.get("jobDeploymentStatus", "")
    if deployment not in TERMINAL_DEPLOYMENT:
        return RayJobOutcome(finished=False)
    if deployment == "Complete" and status.get("jobStatus") == "SUCCEEDED":
        return RayJobOutcome(finished=True, succeeded=True)
    reason = status.get("reason") or deployment
    detail = f"RayJob {rayjob['metadata']['name']} {deployment}"
    if job_status := status.get("jobStatus"):
        detail += f" (Ray job {job_status})"
    detail += f": {reason}"
    if message := status.get("message"):
        detail += f": {message}"
    return RayJobOutcome(finished=True, succeeded=False, reason=detail)


def crash_reason(
    rayjob: Obj,
    pods: list[Obj],
    now: datetime | None = None,
    schedule_timeout_s: float = 0.0,
    start_timeout_s: float | None = None,
) -> RayJobOutcome:
    """KubeRay's own verdict first, then the head or the submitter that cannot start or
    was killed, then a head pod never created."""
    outcome = rayjob_outcome(rayjob)
    if outcome.finished:
        return outcome
    now = now or datetime.now(UTC)
    problem = pod_failure(pods, now, schedule_timeout_s) or never_started(
        rayjob, pods, now, start_timeout_s
    )
    if problem:
        return RayJobOutcome(
            finished=True,
            reason=f"Ray cluster of RayJob {rayjob['metadata']['name']} cannot run: {problem}",
        )
    return outcome


def last_lines(text: str, limit: int = 100) -> str:
    """The tail of a driver's output, as much as a flow-run log line should hold."""
    lines = text.rstrip("\n").splitlines()
    return "\n".join(lines[-limit:])
