"""Start the operator beside a local control plane and apply the example pools.

For `make up` (`raypool dev up` calls `start_operator` after the control plane and
the Prefect server are up): the CRD is applied, `kopf run` is spawned through the
devenv Supervisor (so `make down` stops it), and examples/pools/*.yaml are applied
into `default`. The examples name the in-cluster Prefect service; the operator runs
on the host, so RAYPOOL_PREFECT_URL_MAP points that URL at the local server.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from prefect_raypool_operator import crd
from prefect_raypool_operator.devenv.processes import http_ok

REPO = Path(__file__).resolve().parents[3]
CRD_NAME = "prefectraypools.prefectray.io"
EXAMPLES_PREFECT_URL = "http://prefect-server.prefect.svc:4200/api"


class Spawner(Protocol):
    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None: ...

    def wait(self, what: str, ready: Callable[[], bool], timeout: float) -> None: ...


def _kubectl(kubectl: Path, kubeconfig: Path, *args: str) -> str:
    out = subprocess.run(
        [str(kubectl), f"--kubeconfig={kubeconfig}", *args], capture_output=True, text=True
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def wait_established(kubectl: Path, kubeconfig: Path, timeout: float = 60) -> None:
    """Poll the CRD's Established condition (`kubectl wait` errors out on a CRD so
    fresh it has no status.conditions yet)."""
    deadline = time.monotonic() + timeout
    jsonpath = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'
    while True:
        out = subprocess.run(
            [str(kubectl), f"--kubeconfig={kubeconfig}", "get", "crd", CRD_NAME, "-o", jsonpath],
            capture_output=True,
            text=True,
        )
        if out.stdout.strip() == "True":
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"CRD {CRD_NAME} not Established after {timeout:.0f}s")
        time.sleep(0.2)


def start_operator(
    sup: Spawner,
    kubeconfig: Path,
    kubectl: Path,
    prefect_api_url: str,
    liveness_port: int = 8089,
    examples: Path = REPO / "examples" / "pools",
    timeout: float = 120,
) -> list[str]:
    """Apply the CRD, run the operator, apply the examples; return the pools' names
    once `kubectl get prp` shows every one Ready."""
    _kubectl(kubectl, kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds" / crd.CRD_FILE))
    wait_established(kubectl, kubeconfig)
    health = f"http://127.0.0.1:{liveness_port}/healthz"
    env = {
        **os.environ,
        "KUBECONFIG": str(kubeconfig),
        "RAYPOOL_PREFECT_URL_MAP": f"{EXAMPLES_PREFECT_URL}={prefect_api_url.rstrip('/')}",
        "PYTHONUNBUFFERED": "1",
    }
    kopf = str(Path(sys.executable).with_name("kopf"))
    sup.spawn(
        "prefect-raypool-operator",
        [kopf, "run", "-m", "prefect_raypool_operator.main", "--standalone",
         "--all-namespaces", f"--liveness={health}"],
        env=env,
    )  # fmt: skip
    sup.wait("prefect-raypool operator", lambda: http_ok(health), timeout)
    files = sorted(examples.glob("*.yaml"))
    for path in files:
        _kubectl(kubectl, kubeconfig, "apply", "-n", "default", "-f", str(path))
    names = [
        line.split("/", 1)[1]
        for line in _kubectl(
            kubectl, kubeconfig, "get", "prp", "-n", "default", "-o", "name"
        ).split()
    ]

    def all_ready() -> bool:
        out = _kubectl(
            kubectl, kubeconfig, "get", "prp", "-n", "default", "-o",
            'jsonpath={range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\\n"}{end}',
        )  # fmt: skip
        statuses = out.split()
        return len(statuses) == len(names) and all(s == "True" for s in statuses)

    sup.wait(f"example pools {', '.join(names)} Ready", all_ready, timeout)
    return names
