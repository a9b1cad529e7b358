"""The Helm charts against the real API server: accepted as rendered, a pool installed
by the pool chart becomes Ready."""

from __future__ import annotations

import subprocess

import pytest

from testbed import REPO
from testbed.cluster import Cluster
from testbed.pooldriver import PoolDriver

pytestmark = pytest.mark.controlplane


@pytest.mark.parametrize("scope", [[], ["--set", "watchNamespaces={NS}"]], ids=["all", "scoped"])
def test_operator_chart_is_accepted_by_the_api_server(
    kube_cluster: Cluster, pool_crd: None, namespace: str, scope: list[str]
) -> None:
    from testbed.binaries import Binaries

    helm = Binaries.from_cache().helm
    args = [a.replace("NS", namespace) for a in scope]
    rendered = subprocess.run(
        [
            str(helm),
            "template",
            "op",
            str(REPO / "charts" / "prefect-raypool-operator"),
            "--namespace",
            namespace,
            "--kube-version",
            "1.34.4",
            "--include-crds",
            *args,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    out = kube_cluster.kubectl(
        "apply",
        "--dry-run=server",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        stdin=rendered,
    )
    for kind in ("customresourcedefinition", "serviceaccount", "deployment.apps"):
        assert kind in out, out
    assert ("clusterrole.rbac" in out) if not scope else ("role.rbac" in out)


def test_pool_chart_installs_a_pool_that_becomes_ready(env: PoolDriver) -> None:
    from testbed.binaries import Binaries

    helm = Binaries.from_cache().helm
    installed = subprocess.run(
        [
            str(helm),
            *("--kubeconfig", str(env.kubeconfig)),
            *("install", "charted", str(REPO / "charts" / "prefect-raypool")),
            *("--namespace", env.namespace),
            *("--set", f"spec.prefect.apiUrl={env.prefect_api_url}"),
        ],
        capture_output=True,
        text=True,
    )
    assert installed.returncode == 0, installed.stderr
    # NOTES.txt: what to do next, for this pool.
    assert f"kubectl -n {env.namespace} get prp charted -w" in installed.stdout, installed.stdout
    assert "prefect deploy --pool charted" in installed.stdout
    env.wait_condition("charted", "Ready", "True")


def test_a_second_release_over_the_same_namespace_is_refused(
    kube_cluster: Cluster, pool_crd: None, namespace: str
) -> None:
    """Two releases acting on one namespace would both reconcile its pools: a release
    whose watchNamespaces overlap another's (all namespaces included) fails before it
    writes anything; disjoint scopes and an upgrade of the same release pass."""
    from testbed.binaries import Binaries

    other = f"{namespace}-b"
    kube_cluster.kubectl("create", "namespace", other)

    def helm(verb: str, release: str, *values: str) -> subprocess.CompletedProcess[str]:
        chart = str(REPO / "charts" / "prefect-raypool-operator")
        args = [verb, release] + ([chart] if verb != "uninstall" else [])
        return subprocess.run(
            [str(Binaries.from_cache().helm), f"--kubeconfig={kube_cluster.kubeconfig}",
             *args, "--namespace", namespace, *values],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    def releases() -> str:
        return kube_cluster.kubectl("get", "clusterrolebindings", "-o", "name")

    scoped = ["--set", f"watchNamespaces={{{namespace}}}"]
    installed: list[str] = []
    try:
        first = helm("install", "op-a", *scoped)
        assert first.returncode == 0, first.stderr
        installed.append("op-a")
        # Another namespace: no overlap.
        disjoint = helm("install", "op-b", "--set", f"watchNamespaces={{{other}}}")
        assert disjoint.returncode == 0, disjoint.stderr
        installed.append("op-b")
        # The same release again (an upgrade) is not another release.
        again = helm("upgrade", "op-a", *scoped)
        assert again.returncode == 0, again.stderr

        before = releases()
        for values, shared in (
            (scoped, namespace),  # the same namespace
            ([], namespace),  # all namespaces covers op-a's
        ):
            refused = helm("install", "op-c", *values)
            assert refused.returncode != 0
            assert f"release {namespace}/op-a already watches {shared}" in refused.stderr
            assert "watchNamespaces" in refused.stderr
        # Nothing of op-c was written.
        assert releases() == before
        assert "op-c" not in before
    finally:
        for release in installed:
            helm("uninstall", release)
        kube_cluster.kubectl("delete", "namespace", other, "--wait=false")
