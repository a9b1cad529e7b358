"""Versions and cache locations of the test-bed binaries, and building them.

The build itself is `build-binaries.sh` beside this file (Go builds from the module
proxy), which takes the versions from the environment: this module is the one place
that names them.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

VERSIONS = {
    "K8S_VERSION": "v1.34.4",
    "ETCD_VERSION": "v3.6.16",
    "KWOK_VERSION": "v0.8.0",
    "KUBERAY_VERSION": "v1.5.1",
    "HELM_VERSION": "v3.19.0",
    "COREDNS_VERSION": "v1.12.1",
    # The real node's NetworkPolicy enforcer (its firewall controller only: iptables
    # and ipsets). kube-network-policies, kind's, needs the kernel's nft `queue`
    # expression (CONFIG_NFT_QUEUE), which this machine kind's kernel lacks.
    "KUBE_ROUTER_VERSION": "v2.1.0",
}

BUILD_SCRIPT = Path(__file__).with_name("build-binaries.sh")


def cache_dir() -> Path:
    return Path(os.environ.get("PREFECT_RAYPOOL_CACHE", Path.home() / ".cache" / "prefect-raypool"))


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kubelet: Path
    kube_proxy: Path
    kube_version_stamp: Path  # written once the version is stamped into the binaries
    kwok: Path
    kwok_stages: Path
    kuberay_operator: Path
    kuberay_crds: Path
    helm: Path
    coredns: Path
    kube_router: Path

    @classmethod
    def from_cache(cls, root: Path | None = None) -> Binaries:
        root = root or cache_dir()
        v = VERSIONS
        kube = root / f"kubernetes-{v['K8S_VERSION']}" / "bin"
        kuberay = root / f"kuberay-{v['KUBERAY_VERSION']}"
        return cls(
            etcd=root / f"etcd-{v['ETCD_VERSION']}" / "bin" / "etcd",
            kube_apiserver=kube / "kube-apiserver",
            kube_controller_manager=kube / "kube-controller-manager",
            kube_scheduler=kube / "kube-scheduler",
            kubectl=kube / "kubectl",
            kubelet=kube / "kubelet",
            kube_proxy=kube / "kube-proxy",
            kube_version_stamp=kube / "VERSION",
            kwok=root / f"kwok-{v['KWOK_VERSION']}" / "bin" / "kwok",
            kwok_stages=root / f"kwok-{v['KWOK_VERSION']}" / "stages.yaml",
            kuberay_operator=kuberay / "bin" / "kuberay-operator",
            kuberay_crds=kuberay / "crds",
            helm=root / f"helm-{v['HELM_VERSION']}" / "bin" / "helm",
            coredns=root / f"coredns-{v['COREDNS_VERSION']}" / "bin" / "coredns",
            kube_router=root / f"kube-router-{v['KUBE_ROUTER_VERSION']}" / "bin" / "kube-router",
        )

    def missing(self) -> list[Path]:
        return [p for p in vars(self).values() if not p.exists()]


def ensure_binaries() -> Binaries:
    """Return the cached binaries, building whatever is missing (minutes when cold)."""
    bins = Binaries.from_cache()
    if bins.missing():
        env = {**os.environ, **VERSIONS, "PREFECT_RAYPOOL_CACHE": str(cache_dir())}
        subprocess.run(["bash", str(BUILD_SCRIPT)], check=True, env=env)
        still = bins.missing()
        if still:
            raise RuntimeError(f"build finished but these are missing: {still}")
    return bins
