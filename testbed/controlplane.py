"""Start and stop a local Kubernetes control plane with KubeRay, as processes.

With kwok's simulated node everything listens on 127.0.0.1; with a real node
(node.py) the API server listens on the node's address too, so pods reach it. Ports
are picked at start; the state directory holds certificates, data, logs and the
kubeconfig. Processes are run and recorded by a `Supervisor` (processes.py).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from testbed import node
from testbed.binaries import Binaries
from testbed.node import NODE_IP, SERVICE_CIDR, RealNode
from testbed.node import NODE_NAME as REAL_NODE_NAME
from testbed.processes import (
    PROCESSES_FILE,
    Supervisor,
    cluster_tool,
    free_port,
    http_ok,
    log,
    pid_alive,
    stop_recorded,
)

NODE_NAME = "kwok-node-0"
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"


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
    #: "kwok" (simulated, the default) or "real" (node.py; needs the images it runs)
    node: str = "kwok"
    images: dict[str, Path] = field(default_factory=dict)
    purpose: str = "test"  # "test" or "dev": which cached image store a real node uses
    #: The API server's audit log (a JSON line per request, metadata level: who, verb,
    #: URI, code; never a body), e.g. to count one client's requests; None: no audit.
    audit_log: Path | None = None
    #: More identities (system:masters, each its own token, `user_kubeconfig(name)`), so
    #: the audit log tells one client's requests from the rest; audited alone when set.
    users: tuple[str, ...] = ()
    #: More flags for the KubeRay operator, e.g. `--reconcile-concurrency=10` (its Helm
    #: chart's `reconcileConcurrency`, default 1) for hundreds of RayClusters.
    kuberay_args: tuple[str, ...] = ()
    #: More flags for kube-controller-manager, e.g. a higher `--kube-api-qps` (20 by
    #: default, shared by all its controllers) for thousands of Deployments.
    controller_manager_args: tuple[str, ...] = ()
    apiserver_port: int = 0
    token: str = ""
    user_tokens: dict[str, str] = field(init=False, default_factory=dict)
    procs: Supervisor = field(init=False)
    real_node: RealNode | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.procs = Supervisor(self.state_dir)
        if self.node == "real":
            self.real_node = RealNode(
                self.binaries, self.state_dir / "node", self.procs, self.kubeconfig, self.purpose
            )

    @property
    def node_name(self) -> str:
        return REAL_NODE_NAME if self.real_node else NODE_NAME

    @property
    def host(self) -> str:
        """Where the API server (and, for a real node, the host's services) listen."""
        return NODE_IP if self.real_node else "127.0.0.1"

    @property
    def kubeconfig(self) -> Path:
        return self.external_kubeconfig or self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://{self.host}:{self.apiserver_port}"

    # ---- lifecycle -------------------------------------------------------------

    def start(self, timeout: float = 180) -> None:
        self.procs.claim()
        t0 = time.monotonic()
        try:
            if not self.external_kubeconfig:
                self._write_credentials()
                if self.real_node:
                    self.real_node.prepare_network()
                self._start_etcd(timeout)
                self._start_apiserver(timeout)
                self._write_kubeconfig()
                self.procs.spawn("kube-controller-manager", self._controller_manager_args())
                self.procs.spawn("kube-scheduler", self._scheduler_args())
                if self.real_node:
                    self.real_node.start(self.images, timeout)
                    self.procs.wait("real node Ready", self._node_ready, timeout)
                else:
                    self._start_kwok(timeout)
            if self.with_kuberay:
                self._start_kuberay(timeout)
        except BaseException:
            self.stop()
            raise
        log(f"ready in {time.monotonic() - t0:.1f}s; kubeconfig {self.kubeconfig}")

    def stop(self) -> None:
        """Stop every process this state dir started, newest first."""
        stop_control_plane(self.state_dir)

    # ---- faults (tests/operator/cluster/test_faults.py) -------------------------

    def restart_apiserver(self, timeout: float = 120) -> None:
        """Stop kube-apiserver and start it again on the same port and etcd: clients
        see their connections drop, then the same server (and data) come back."""
        self.stop_process("kube-apiserver")
        self._start_apiserver(timeout, port=self.apiserver_port)

    def stop_kuberay(self) -> None:
        """Stop the KubeRay operator; its CRDs and the RayClusters stay."""
        self.stop_process("kuberay-operator")

    def start_kuberay(self, timeout: float = 120) -> None:
        """Start the KubeRay operator again (its CRDs are still there)."""
        self._start_kuberay_operator(timeout)

    def stop_process(self, name: str, grace: float = 10) -> None:
        """SIGTERM one recorded process's group, SIGKILL after `grace` s."""
        pid = self.procs.processes.pop(name)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, sig)
            deadline = time.monotonic() + grace
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.1)
            if not pid_alive(pid):
                break
        (self.state_dir / PROCESSES_FILE).write_text(json.dumps(self.procs.processes, indent=2))
        log(f"stopped {name}")

    # ---- pieces ----------------------------------------------------------------

    def _write_credentials(self) -> None:
        pki = self.state_dir / "pki"
        pki.mkdir(exist_ok=True)
        # The API server makes its serving certificate only where none exists, for the
        # address it advertises now: one left by a start with the other kind of node
        # names the wrong address, and clients then refuse it.
        for made_by_apiserver in ("apiserver.crt", "apiserver.key"):
            (pki / made_by_apiserver).unlink(missing_ok=True)
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
        self.user_tokens = {user: secrets.token_hex(16) for user in self.users}
        # Static tokens in system:masters: the test bed's admin identity, and `users`.
        identities = {"admin": self.token, **self.user_tokens}
        (pki / "tokens.csv").write_text(
            "".join(
                f'{token},{user},{user},"system:masters"\n' for user, token in identities.items()
            )
        )
        os.chmod(pki / "tokens.csv", 0o600)

    def _start_etcd(self, timeout: float) -> None:
        # Every start is a new cluster: objects left from an earlier `make up` would
        # come back with credentials that no longer exist.
        shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
        client, peer = free_port(), free_port()
        self.etcd_url = f"http://127.0.0.1:{client}"
        self.procs.spawn(
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
        self.procs.wait("etcd", lambda: http_ok(f"{self.etcd_url}/health"), timeout)

    def _start_apiserver(self, timeout: float, port: int | None = None) -> None:
        self.apiserver_port = port or free_port()
        pki = self.state_dir / "pki"
        self.procs.spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                f"--etcd-servers={self.etcd_url}",
                f"--bind-address={'0.0.0.0' if self.real_node else '127.0.0.1'}",
                f"--advertise-address={self.host}",
                "--kubelet-preferred-address-types=InternalIP",
                f"--secure-port={self.apiserver_port}",
                f"--cert-dir={pki}",
                f"--token-auth-file={pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                *self._audit_args(),
                "-v=0",
            ],
        )
        self.procs.wait(
            "kube-apiserver",
            lambda: http_ok(f"{self.server}/readyz", token=self.token),
            timeout,
        )

    def _audit_args(self) -> list[str]:
        if self.audit_log is None:
            return []
        rules: list[dict[str, Any]] = [{"level": "Metadata"}]
        if self.users:
            rules = [{"level": "Metadata", "users": list(self.users)}, {"level": "None"}]
        policy = self.state_dir / "audit-policy.json"
        policy.write_text(
            json.dumps(
                {
                    "apiVersion": "audit.k8s.io/v1",
                    "kind": "Policy",
                    # One line when a request arrives, one when it completes (a watch
                    # completes when it ends).
                    "omitStages": ["ResponseStarted"],
                    "rules": rules,
                }
            )
        )
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-maxsize=1000000",  # MB: one file (0 is 100 MB, then rotated)
            "--audit-log-mode=blocking",
        ]

    def user_kubeconfig(self, user: str) -> Path:
        """The kubeconfig of one of `users` (written at start)."""
        return self.state_dir / f"kubeconfig-{user}"

    def _write_kubeconfig(self) -> None:
        self._write_kubeconfig_for(self.kubeconfig, "admin", self.token)
        for user, token in self.user_tokens.items():
            self._write_kubeconfig_for(self.user_kubeconfig(user), user, token)

    def _write_kubeconfig_for(self, path: Path, user: str, token: str) -> None:
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
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {"name": "raypool-dev", "context": {"cluster": "raypool-dev", "user": user}}
            ],
            "current-context": "raypool-dev",
        }
        path.write_text(json.dumps(cfg, indent=2))
        os.chmod(path, 0o600)

    def _controller_manager_args(self) -> list[str]:
        pki = self.state_dir / "pki"
        return [
            *self._component_args(self.binaries.kube_controller_manager),
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'apiserver.crt'}",
            "--use-service-account-credentials=false",
            "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            *self.controller_manager_args,
        ]

    def _scheduler_args(self) -> list[str]:
        return self._component_args(self.binaries.kube_scheduler)

    def _component_args(self, binary: Path) -> list[str]:
        """What controller-manager and scheduler share: one admin kubeconfig for
        everything, no leader election, their own serving port on loopback."""
        return [
            str(binary),
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            f"--secure-port={free_port()}",
        ]

    def _start_kwok(self, timeout: float) -> None:
        self.procs.spawn(
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
        self.procs.wait("simulated node", self._node_ready, timeout)

    def _start_kuberay(self, timeout: float) -> None:
        self.kubectl(
            "apply", "--server-side", "--force-conflicts", "-f", str(self.binaries.kuberay_crds)
        )
        # Polled rather than `kubectl wait`, which errors on a CRD whose status is
        # still empty instead of waiting for it.
        self.procs.wait("KubeRay CRDs", self._crds_established, timeout)
        self._start_kuberay_operator(timeout)

    def _start_kuberay_operator(self, timeout: float) -> None:
        probe = free_port()
        self.procs.spawn(
            "kuberay-operator",
            [
                str(self.binaries.kuberay_operator),
                f"--kubeconfig={self.kubeconfig}",
                "--metrics-addr=0",
                f"--health-probe-bind-address=127.0.0.1:{probe}",
                "--enable-leader-election=false",
                # KubeRay asks each RayJob's dashboard for its Ray job's status. In a
                # cluster it runs as a pod and resolves the head Service through the
                # cluster DNS; here it is a process beside the API server, which
                # reaches the Service's endpoints for it (services/proxy).
                "--use-kubernetes-proxy",
                *self.kuberay_args,
            ],
        )
        self.procs.wait(
            "KubeRay operator",
            lambda: http_ok(f"http://127.0.0.1:{probe}/readyz"),
            timeout,
        )

    # ---- helpers ---------------------------------------------------------------

    def kubectl(self, *args: str, stdin: str | None = None, check: bool = True) -> str:
        return cluster_tool(self.binaries.kubectl, self.kubeconfig)(*args, stdin=stdin, check=check)

    def _crds_established(self) -> bool:
        names = ["rayclusters.ray.io", "rayjobs.ray.io", "rayservices.ray.io"]
        crds = json.loads(self.kubectl("get", "crd", *names, "-o", "json"))["items"]
        return len(crds) == len(names) and all(_condition(c, "Established") for c in crds)

    def _node_ready(self) -> bool:
        try:
            node = json.loads(self.kubectl("get", "node", self.node_name, "-o", "json"))
        except RuntimeError:
            return False
        return _condition(node, "Ready")


def stop_control_plane(state_dir: Path) -> list[str]:
    """Stop what a control plane in `state_dir` started (from any process: `make down`
    has no ControlPlane object), a real node's containers included; return names."""
    node_dir = state_dir / "node"
    real = node_dir.exists()
    if real:
        node.stop_pods(node_dir)
    stopped = stop_recorded(state_dir)
    if real:
        node.release(node_dir)
    return stopped


def _condition(obj: dict[str, Any], kind: str) -> bool:
    conds = obj.get("status", {}).get("conditions") or []
    return any(c["type"] == kind and c["status"] == "True" for c in conds)


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
