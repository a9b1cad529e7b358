"""What each Ray pod is built from, by spec field, so a pool can say which running pods
are out of date and why.

KubeRay starts new pods from a changed RayCluster template but never restarts running
ones, so after a change of image, Ray version, resources or placement the cluster runs
the old pods until they die. Each pod template carries a digest of every spec field it
is built from (an annotation, copied onto the pods); observe.py compares the running
pods' digests with the desired ones and names the fields that differ.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from prefect_raypool_operator import naming
from prefect_raypool_operator.builders.common import ray_image
from prefect_raypool_operator.spec import Placement, PrefectRayPoolSpec, WorkerGroup

SPEC_DIGESTS = f"{naming.ANNOTATION_PREFIX}/spec-digests"
# Counts KubeRay changes in place, without restarting pods, or only the operator reads.
_SCALING = {"replicas", "minReplicas", "maxReplicas", "podsPerFlowRun"}


def _common(spec: PrefectRayPoolSpec) -> dict[str, Any]:
    return {
        "ray.version": spec.ray.version,
        "ray.image": ray_image(spec),  # resolved: a new default image is a change too
        "ray.auth": spec.ray.auth.model_dump(mode="json"),
        "pod": spec.pod.model_dump(mode="json"),
    }


def head_inputs(spec: PrefectRayPoolSpec) -> dict[str, Any]:
    inputs = {
        **_common(spec),
        "ray.head": spec.ray.head.model_dump(mode="json"),
        # exclude_none: a field added unset leaves the digests of existing pools alone.
        "ray.autoscaling": spec.ray.autoscaling.model_dump(mode="json", exclude_none=True),
        "placement": spec.placement.value,
    }
    if spec.placement == Placement.HEAD_SIDECAR:  # the Prefect worker is in the head pod
        inputs["prefect"] = spec.prefect.model_dump(mode="json", exclude={"replicas"})
        inputs["ray.taskResources"] = spec.ray.taskResources.model_dump(mode="json")
    return inputs


def worker_inputs(spec: PrefectRayPoolSpec, group: WorkerGroup) -> dict[str, Any]:
    return {
        **_common(spec),
        f"ray.workerGroups[{group.name}]": group.model_dump(mode="json", exclude=_SCALING),
    }


def digests(inputs: dict[str, Any]) -> str:
    """The annotation value: field -> a short digest of its value (no values: a spec
    may hold names a pod's reader need not see)."""
    return json.dumps(
        {
            field: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]
            for field, value in inputs.items()
        },
        sort_keys=True,
        separators=(",", ":"),
    )


def outdated_fields(running: str | None, desired: str | None) -> list[str]:
    """The fields whose digest differs between a running pod and its template; none
    when either lacks digests (a pod made before this annotation existed)."""
    if not running or not desired:
        return []
    try:
        old, new = json.loads(running), json.loads(desired)
    except ValueError:
        return []
    return sorted(field for field in old.keys() | new.keys() if old.get(field) != new.get(field))
