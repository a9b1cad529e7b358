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
