"""What the `kuberay` worker and the operator that deploys it must agree on, said once.

Standard library only: the operator (no Prefect, no Ray, no kopf needed here) and the
worker both import it, so a label, a security setting or a right the worker needs
cannot drift between them.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
from typing import Any

Obj = dict[str, Any]

#: The Prefect worker type (`prefect work-pool create --type kuberay`).
WORKER_TYPE = "kuberay"

#: The image pools run unless a pool names another (images/ray/Dockerfile): Ray at
#: DEFAULT_RAY_VERSION, Prefect, and this version of prefect-raypool. The one place
#: that spells it; the test bed builds it under this name.
DEFAULT_IMAGE_REPOSITORY = "prefect-raypool-ray"
DEFAULT_IMAGE = f"{DEFAULT_IMAGE_REPOSITORY}:{importlib.metadata.version('prefect-raypool')}"
#: The Ray in DEFAULT_IMAGE.
DEFAULT_RAY_VERSION = "2.60.0"
GPU_RESOURCE = "nvidia.com/gpu"

# ---- labels ---------------------------------------------------------------------------

#: Prefect's own labels, which the worker puts on each RayJob: the operator counts a
#: pool's RayJobs by the work pool's.
FLOW_RUN_ID_LABEL = "prefect.io/flow-run-id"
WORK_POOL_LABEL = "prefect.io/work-pool-name"


#: The worker's own labels on each RayJob, which its sweep and watch select on: the work
#: pool's id (a UUID, already a valid label value, where two names can clean up to the
#: same value: `etl` and `etl.`, or two long ones cut at 63 characters) and the Prefect
#: server's (two servers, e.g. one restored from the other's database, share ids).
WORK_POOL_ID_LABEL = "prefectray.io/work-pool-id"
PREFECT_SERVER_LABEL = "prefectray.io/prefect-server"


def server_label(api_url: str) -> str:
    """A short hash of the Prefect API URL: a label value, and no URL on the object."""
    return hashlib.sha256(api_url.rstrip("/").encode()).hexdigest()[:16]


def label_value(value: str) -> str:
    """Kubernetes label values: 63 characters of [A-Za-z0-9._-], alphanumeric at both ends."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", value)[:63].strip("-._")


# ---- pods -----------------------------------------------------------------------------

#: Every generated pod: Ray's own images and ours run as the `ray` user, uid 1000 in
#: group 100, so the kubelet can check runAsNonRoot even for rayproject/ray, whose
#: USER is a name.
POD_SECURITY: Obj = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 100,
    "fsGroup": 100,
    "seccompProfile": {"type": "RuntimeDefault"},
}
#: Every generated container, so pods are admitted where namespaces enforce the
#: `restricted` Pod Security Standard.
CONTAINER_SECURITY: Obj = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "runAsNonRoot": True,
    "seccompProfile": {"type": "RuntimeDefault"},
}
#: Ray's object store lives in /dev/shm, which a container gets only 64 MiB of.
SHM_VOLUME: Obj = {"name": "dshm", "emptyDir": {"medium": "Memory"}}
SHM_MOUNT: Obj = {"name": "dshm", "mountPath": "/dev/shm"}

# ---- the worker's rights ----------------------------------------------------------------

#: KubeRay's RayJob, the only custom resource the worker touches.
RAYJOB_GROUP, RAYJOB_VERSION, RAYJOB_PLURAL = "ray.io", "v1", "rayjobs"

#: Exactly the calls worker.py makes, for the operator chart's worker ClusterRole
#: (templates/kuberay-worker-rbac.yaml, kept equal by a test): RayJobs
#: created, read (get while watching, list when sweeping orphans) and deleted
#: (cancellation, orphans); pods listed (a RayJob's pods, the submitter's) and the
#: submitter's log read.
WORKER_RULES: list[Obj] = [
    {
        "apiGroups": [RAYJOB_GROUP],
        "resources": [RAYJOB_PLURAL],
        "verbs": ["create", "get", "list", "delete"],
    },
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]},
    {"apiGroups": [""], "resources": ["pods/log"], "verbs": ["get"]},
]
