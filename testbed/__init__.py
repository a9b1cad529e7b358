"""The test bed: real servers for the tests, the benches and `make up`. Dev-only.

Never part of the wheel or an image (tests/testbed/test_packaging.py checks both);
it works from a source checkout, with the `[dev]` extra installed.

- binaries.py      the pinned versions (the one place) and the cached Go builds
- processes.py     start, record, wait for and stop local processes; kubectl/helm
- controlplane.py  etcd, kube-apiserver, controller-manager, scheduler, KubeRay, and
                   kwok's simulated node or a real one
- node.py          the real node: kubelet, containerd, CNI bridge, CoreDNS, kube-proxy,
                   kube-router enforcing NetworkPolicy
- images.py        the project's images built with buildah, cached, loaded into a node
- host_packages.py the Debian packages the node and the image builds need
- cluster.py       a `Cluster` handle and the providers (local, kind, existing)
- prefect_server.py / dataplane.py  a Prefect server, Ray heads and nodes
- operator_process.py  the prefect-raypool operator as a local process
- realstack.py     a real node plus Prefect plus the operator from its chart
- pooldriver.py    pools and flow runs driven as a user would (the operator's
                   cluster tests, the e2e tests, make demo)
- netns.py         the network namespace `make up` runs a real node in
- devenv.py, demo.py  `python -m testbed up|down|status|demo|binaries|images`
- fixtures.py      the pytest plugin tests/conftest.py loads
- waiting.py       `eventually`, the one way to wait
"""

from pathlib import Path

#: The source checkout the test bed lives in.
REPO = Path(__file__).resolve().parent.parent
