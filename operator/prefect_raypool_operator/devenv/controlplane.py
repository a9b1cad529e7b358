"""Start and stop a local Kubernetes control plane with KubeRay, as processes.

Everything listens on 127.0.0.1 with ports picked at start; the state directory
holds certificates, data, logs, the kubeconfig and `processes.json`, which is what
`stop()` (and `raypool dev down` from another process) uses to stop exactly what
was started here and nothing else.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import signal
import socket
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from prefect_raypool_operator.devenv.binaries import Binaries

NODE_NAME = "kwok-node-0"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
PROCESSES_FILE = "processes.json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _log(msg: str) -> None:
    print(f"[controlplane {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class ControlPlane:
    """A control plane rooted at `state_dir`; `start()` returns once KubeRay is ready.

    With `external_kubeconfig` (a kind cluster, a user's cluster) only the KubeRay
    operator is run here, against that cluster.
    """

    binaries: Binaries
    state_dir: Path
    with_kuberay: bool = True
    external_kubeconfig: Path | None = None
    processes: dict[str, int] = field(default_factory=dict)
    apiserver_port: int = 0
    token: str = ""

    @property
    def kubeconfig(self) -> Path:
        return self.external_kubeconfig or self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    # ---- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 180) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        (self.state_dir / "logs").mkdir(exist_ok=True)
        if (self.state_dir / PROCESSES_FILE).exists():
            raise RuntimeError(
                f"{self.state_dir} already holds a running control plane; "
                "stop it first (`make down` or `raypool dev down`)"
            )
        t0 = time.monotonic()
        try:
            if not self.external_kubeconfig:
                self._write_credentials()
                self._start_etcd(timeout)
                self._start_apiserver(timeout)
                self._write_kubeconfig()
                self._spawn("kube-controller-manager", self._controller_manager_args())
                self._spawn("kube-scheduler", self._scheduler_args())
                self._start_kwok(timeout)
            if self.with_kuberay:
                self._start_kuberay(timeout)
        except BaseException:
            self.stop()
            raise
        _log(f"ready in {time.monotonic() - t0:.1f}s; kubeconfig {self.kubeconfig}")

    def stop(self) -> None:
        """Stop every process this state dir started, newest first."""
        stop_recorded(self.state_dir)
        self.processes.clear()

    # ---- pieces ----------------------------------------------------------------

    def _write_credentials(self) -> None:
        pki = self.state_dir / "pki"
        pki.mkdir(exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        (pki / "sa.pub").write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.token = secrets.token_hex(16)
        # A static token in system:masters: the test bed's single admin identity.
        (pki / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
        os.chmod(pki / "tokens.csv", 0o600)

    def _start_etcd(self, timeout: float) -> None:
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                f"--data-dir={self.state_dir / 'etcd'}",
                f"--listen-client-urls={self.etcd_url}",
                f"--advertise-client-urls={self.etcd_url}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=default=http://127.0.0.1:{peer}",
                "--unsafe-no-fsync",  # a throwaway test database: durability buys nothing
                "--log-level=warn",
            ],
        )
        _wait("etcd", lambda: _http_ok(f"{self.etcd_url}/health"), timeout, self._check_alive)

    def _start_apiserver(self, timeout: float) -> None:
        self.apiserver_port = free_port()
        pki = self.state_dir / "pki"
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={pki}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "-v=0",
            ],
        )
        _wait(
            "kube-apiserver",
            lambda: _http_ok(f"{self.server}/readyz", token=self.token),
            timeout,
            self._check_alive,
        )

    def _write_kubeconfig(self) -> None:
        # The apiserver made a self-signed CA and serving cert in --cert-dir; its
        # chain file holds both, so clients verify TLS instead of skipping it.
        ca = base64.b64encode((self.state_dir / "pki" / "apiserver.crt").read_bytes()).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "raypool-dev",
                    "cluster": {"server": self.server, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.token}}],
            "contexts": [
                {"name": "raypool-dev", "context": {"cluster": "raypool-dev", "user": "admin"}}
            ],
            "current-context": "raypool-dev",
        }
        self.kubeconfig.write_text(json.dumps(cfg, indent=2))
        os.chmod(self.kubeconfig, 0o600)

    def _controller_manager_args(self) -> list[str]:
        pki = self.state_dir / "pki"
        return [
            str(self.binaries.kube_controller_manager),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'apiserver.crt'}",
            "--use-service-account-credentials=false",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
        ]

    def _scheduler_args(self) -> list[str]:
        return [
            str(self.binaries.kube_scheduler),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
        ]

    def _start_kwok(self, timeout: float) -> None:
        self._spawn(
            "kwok",
            [
                str(self.binaries.kwok),
                f"--kubeconfig={self.kubeconfig}",
                f"--config={self.binaries.kwok_stages}",
                "--node-lease-duration-seconds=40",
                "--manage-all-nodes=false",
                f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
                "--node-ip=127.0.0.1",
                f"--node-port={free_port()}",
                f"--server-address=127.0.0.1:{free_port()}",
            ],
        )
        self.kubectl("apply", "-f", "-", stdin=json.dumps(_fake_node()))
        _wait("simulated node", self._node_ready, timeout, self._check_alive)

    def _start_kuberay(self, timeout: float) -> None:
        self.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(self.binaries.kuberay_crds)
        )
        # Polled rather than `kubectl wait`, which errors on a CRD whose status is
        # still empty instead of waiting for it.
        _wait("KubeRay CRDs", self._crds_established, timeout, self._check_alive)
        probe = free_port()
        self._spawn(
            "kuberay-operator",
            [
                str(self.binaries.kuberay_operator),
                f"--kubeconfig={self.kubeconfig}",
                "--metrics-addr=0",
                f"--health-probe-bind-address=127.0.0.1:{probe}",
                "--enable-leader-election=false",
            ],
        )
        _wait(
            "KubeRay operator",
            lambda: _http_ok(f"http://127.0.0.1:{probe}/readyz"),
            timeout,
            self._check_alive,
        )

    # ---- helpers ---------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run(
            [str(self.binaries.kubectl), f"--kubeconfig={self.kubeconfig}", *args],
            input=stdin,
            capture_output=True,
            text=True,
        )
        if out.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def _crds_established(self) -> bool:
        names = ["rayclusters.ray.io", "rayjobs.ray.io", "rayservices.ray.io"]
        crds = json.loads(self.kubectl("get", "crd", *names, "-o", "json"))["items"]
        return len(crds) == len(names) and all(_condition(c, "Established") for c in crds)

    def _node_ready(self) -> bool:
        try:
            node = json.loads(self.kubectl("get", "node", NODE_NAME, "-o", "json"))
        except RuntimeError:
            return False
        return _condition(node, "Ready")

    def _spawn(self, name: str, argv: list[str]) -> None:
        _log(f"starting {name}")
        log = open(self.state_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - child owns it
        # A new session, so `make up` can return while these keep running, and so
        # stop() can signal each one's whole process group.
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        log.close()
        self.processes[name] = proc.pid
        (self.state_dir / PROCESSES_FILE).write_text(json.dumps(self.processes, indent=2))

    def _check_alive(self) -> None:
        for name, pid in self.processes.items():
            if not _pid_alive(pid):
                tail = (self.state_dir / "logs" / f"{name}.log").read_text(errors="replace")
                raise RuntimeError(f"{name} exited during start-up; its log ends:\n{tail[-3000:]}")


def stop_recorded(state_dir: Path, grace: float = 10) -> list[str]:
    """Stop the processes recorded in `state_dir`, newest first; return their names."""
    path = state_dir / PROCESSES_FILE
    if not path.exists():
        return []
    procs: dict[str, int] = json.loads(path.read_text())
    for name, pid in reversed(list(procs.items())):
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
        _log(f"stopped {name}")
    path.unlink()
    return list(procs)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _pid_alive(pid: int) -> bool:
    try:
        # Reap it if it is our child, so a dead child does not linger as a zombie.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def _condition(obj: dict[str, Any], kind: str) -> bool:
    conds = obj.get("status", {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conds)


def _http_ok(url: str, token: str | None = None) -> bool:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _wait(what: str, ready: Callable[[], bool], timeout: float, check: Callable[[], None]) -> None:
    t0 = time.monotonic()
    while not ready():
        check()
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what} not ready after {timeout:.0f}s")
        time.sleep(0.2)
    _log(f"{what} ready ({time.monotonic() - t0:.1f}s)")


def _fake_node() -> dict[str, object]:
    """A Node that kwok manages: it reports Ready and runs every pod bound to it."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": NODE_NAME,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": NODE_NAME,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "500", "nvidia.com/gpu": "8"},
            "capacity": {"cpu": "64", "memory": "256Gi", "pods": "500", "nvidia.com/gpu": "8"},
        },
    }
