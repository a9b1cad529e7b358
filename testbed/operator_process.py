"""The prefect-raypool operator as a local process, and its CRD, for tests and `make up`.

In a cluster the operator runs from its image through the chart; here it runs from
the source checkout with the same command line (`operator_argv`). Every operator is
told which Prefect APIs its pools may name (`allow_prefect`): an operator without an
allow-list refuses every pool.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from prefect_raypool_kuberay.contract import WORKER_RULES
from prefect_raypool_operator import crd, kinds, naming
from testbed import REPO
from testbed.processes import http_ok, spawn_logged
from testbed.waiting import eventually

CRD_NAME = f"{kinds.PLURAL}.{kinds.GROUP}"

#: The examples name the in-cluster Prefect Service that Prefect's own chart installs
#: (the operator chart's default allow-list); the test bed routes it to its server.
EXAMPLES_PREFECT_URL = "http://prefect-server.prefect.svc:4200/api"


def allow_prefect(*api_urls: str) -> dict[str, str]:
    """The operator's environment that allows pools to name these Prefect APIs."""
    return {"RAYPOOL_PREFECT_API_ALLOWLIST": ",".join(api_urls)}


def operator_argv(health_url: str, scope: tuple[str, ...] = ("--all-namespaces",)) -> list[str]:
    """The operator's command line: what the image and the chart run too."""
    return [sys.executable, "-m", "prefect_raypool_operator", *scope, f"--liveness={health_url}"]


def operator_env(kubeconfig: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1", **(extra or {})}


def worker_cluster_role() -> dict[str, object]:
    """The `kuberay` worker's ClusterRole as the operator chart ships it, under the name
    an operator run without the chart binds (naming.KUBERAY_WORKER_CLUSTER_ROLE)."""
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": naming.KUBERAY_WORKER_CLUSTER_ROLE},
        "rules": WORKER_RULES,
    }


def apply_pool_crd(kubectl: Path | str, kubeconfig: Path, timeout: float = 60) -> None:
    """Apply what the operator chart installs cluster-wide apart from the operator: the
    committed PrefectRayPool CRD (then wait until it is Established and its pools can be
    listed) and the `kuberay` worker's ClusterRole, which Ephemeral pools bind.

    Polled from the JSON rather than by `kubectl wait` or a jsonpath filter, which
    both error out on a CRD so fresh it has no status.conditions yet. Established
    comes before the API server's storage for the new kind is ready (made on the
    first request): an operator started then has its first list refused (429
    "storage is (re)initializing") and logs an ERROR for kopf's retry.
    """

    def run(*args: str, stdin: str | None = None) -> str:
        out = subprocess.run(
            [str(kubectl), f"--kubeconfig={kubeconfig}", *args],
            capture_output=True,
            text=True,
            input=stdin,
        )
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
        return out.stdout

    run("apply", "--server-side", "-f", str(REPO / "crds" / crd.CRD_FILE))
    run("apply", "--server-side", "-f", "-", stdin=json.dumps(worker_cluster_role()))

    def established() -> bool:
        status = json.loads(run("get", "crd", CRD_NAME, "-o", "json")).get("status") or {}
        return any(
            c["type"] == "Established" and c["status"] == "True"
            for c in status.get("conditions") or []
        )

    eventually(established, timeout, f"CRD {CRD_NAME}", interval=0.2)
    # kubectl waits out the 429 itself (it honours Retry-After).
    run("get", kinds.PLURAL, "--all-namespaces", "--request-timeout=30s")


class OperatorProcess:
    """`start()` returns once the liveness endpoint answers; `kill()` is SIGKILL."""

    def __init__(
        self,
        kubeconfig: Path,
        log: Path,
        port: int,
        extra_env: dict[str, str],
        extra_args: tuple[str, ...] = (),
        scope: tuple[str, ...] = ("--all-namespaces",),
    ):
        self.kubeconfig, self.log, self.port = kubeconfig, log, port
        self.extra_env, self.extra_args, self.scope = extra_env, extra_args, scope
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/healthz"

    def start(self, timeout: float = 60) -> None:
        argv = [*operator_argv(self.health_url, self.scope), *self.extra_args]
        self.proc = spawn_logged(argv, self.log, operator_env(self.kubeconfig, self.extra_env))
        self.wait_healthy(self.proc, timeout)

    def wait_healthy(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Until the liveness endpoint answers; an error with the log's tail if `proc`
        exits first or it never does."""

        def alive() -> None:
            if proc.poll() is not None:
                raise RuntimeError(f"operator exited early:\n{self.tail()}")

        try:
            eventually(lambda: http_ok(self.health_url), timeout, "operator", 0.2, alive)
        except TimeoutError as e:
            raise RuntimeError(f"{e}:\n{self.tail()}") from None

    def kill(self) -> None:
        """SIGKILL: no cleanup, as if the pod were evicted mid-reconcile."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""
