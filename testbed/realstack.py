"""Everything a flow run needs, for real: a control plane with a real node, the images
loaded into it, a Prefect server the pods reach, and the operator installed from its
Helm chart, running as a pod from the image built here.

Used by the end-to-end tests (tests/e2e) and by `make up` where a real node can run.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from testbed import REPO
from testbed.binaries import ensure_binaries
from testbed.controlplane import ControlPlane
from testbed.node import DEBIAN_PACKAGES, NODE_IP, unavailable_reason
from testbed.operator_process import EXAMPLES_PREFECT_URL
from testbed.prefect_server import PrefectServer, start_prefect_server
from testbed.processes import cluster_tool, log
from testbed.waiting import eventually

OPERATOR_NAMESPACE = "raypool-system"
OPERATOR_RELEASE = "raypool-operator"
# The chart's full name for this release: its Deployment's and its Lease's name.
OPERATOR_FULLNAME = f"{OPERATOR_RELEASE}-prefect-raypool-operator"


class RealNodeUnavailable(Exception):
    """A real node cannot run here; the message says why."""


@dataclass
class RealStack:
    control_plane: ControlPlane
    prefect: PrefectServer

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return self.control_plane.kubectl(*args, stdin=stdin, check=check)

    def helm(self, *args: str) -> str:
        return cluster_tool(self.control_plane.binaries.helm, self.kubeconfig)(*args)

    def stop(self) -> None:
        self.control_plane.stop()


def start_real_stack(state_dir: Path, purpose: str = "test", timeout: float = 300) -> RealStack:
    """`purpose` "test" (the suite: scheduling services off) or "dev" (`make up`)."""
    reason = unavailable_reason()
    if reason:
        raise RealNodeUnavailable(reason)
    from testbed.host_packages import missing_debian_packages
    from testbed.images import ensure_images

    # Installed by `make images` on the host network: this namespace has no way out.
    missing = missing_debian_packages(*DEBIAN_PACKAGES)
    if missing:
        raise RuntimeError(f"a real node needs {', '.join(missing)}: run `make images` first")
    images = ensure_images()
    cp = ControlPlane(
        binaries=ensure_binaries(), state_dir=state_dir, node="real", images=images, purpose=purpose
    )
    cp.start()
    try:
        prefect = start_prefect_server(
            state_dir / "prefect", for_tests=purpose == "test", host=NODE_IP, supervisor=cp.procs
        )
        stack = RealStack(cp, prefect)
        # `make up` runs one operator replica: a 2-CPU node has no room to spare for a
        # standby (the chart's default, two, is for high availability).
        install_operator(stack, timeout, replicas=1 if purpose == "dev" else None)
    except BaseException:
        cp.stop()
        raise
    return stack


def install_operator(stack: RealStack, timeout: float, replicas: int | None = None) -> None:
    """`helm install` the operator chart (its CRD included) with the image built here;
    `replicas` None keeps the chart's default. Pools may name the test bed's Prefect
    server as the tests' pods reach it, and as the examples name it (`make up`)."""
    extra = ["--set", f"replicaCount={replicas}"] if replicas is not None else []
    allowed = f"prefectApiAllowlist={{{EXAMPLES_PREFECT_URL},{stack.prefect.api_url}}}"
    stack.helm(
        "install", OPERATOR_RELEASE, str(REPO / "charts" / "prefect-raypool-operator"),
        "--namespace", OPERATOR_NAMESPACE, "--create-namespace",
        "--set", "image.pullPolicy=Never",  # loaded into the node, never pulled
        "--set", allowed,
        *extra,
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        eventually(lambda: operator_pod_ready(stack), timeout, "operator pod from the chart", 0.2)
        log(f"operator pod from the chart ready ({time.monotonic() - t0:.1f}s)")
    except TimeoutError as e:
        pods = stack.kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "wide")
        raise TimeoutError(f"{e}:\n{pods}") from None


def operator_pods(stack: RealStack) -> list[dict[str, Any]]:
    """The operator's pods, as JSON."""
    selector = "app.kubernetes.io/name=prefect-raypool-operator"
    listed = stack.kubectl("get", "pods", "-n", OPERATOR_NAMESPACE, "-o", "json", "-l", selector)
    return list(json.loads(listed)["items"])


def operator_logs(stack: RealStack, since: str) -> dict[str, str]:
    """What every current operator pod logged since `since` (RFC 3339), by pod: its
    containers now and, where one restarted, before (a crash's traceback is there).
    Read anew each time: pods replaced meanwhile (an upgrade) are gone with their logs."""
    texts: dict[str, str] = {}
    for pod in operator_pods(stack):
        if pod.get("status", {}).get("phase") == "Pending":
            continue  # no container has run yet: no log to read
        name = pod["metadata"]["name"]
        logs = ["logs", "-n", OPERATOR_NAMESPACE, name, "--all-containers", f"--since-time={since}"]
        texts[name] = stack.kubectl(*logs)
        statuses = pod["status"].get("containerStatuses") or []
        if any(c.get("restartCount", 0) for c in statuses):
            texts[f"{name} (previous)"] = stack.kubectl(*logs, "--previous")
    return texts


def operator_pod_ready(stack: RealStack) -> bool:
    """Every operator pod Ready: the leader and its standbys."""
    pods = operator_pods(stack)
    return bool(pods) and all(
        any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in pod.get("status", {}).get("conditions", [])
        )
        for pod in pods
    )
