"""The test bed: real servers for the tests, the benches and `make up`. Dev-only.

Never part of the wheel or an image (tests/testbed/test_packaging.py checks both);
it works from a source checkout, with the `[dev]` extra installed.

- binaries.py      the pinned versions (the one place) and the cached Go builds
- processes.py     start, record, wait for and stop local processes
- controlplane.py  etcd, kube-apiserver, controller-manager, scheduler, kwok, KubeRay
- cluster.py       a `Cluster` handle and the providers (local, kind, existing)
- prefect_server.py / dataplane.py  a Prefect server, Ray heads and nodes
- operator_process.py  the prefect-raypool operator as a local process
- devenv.py        `python -m testbed up|down|status`, what `make up` runs
- fixtures.py      the pytest plugin tests/conftest.py loads
"""

from pathlib import Path

#: The source checkout the test bed lives in.
REPO = Path(__file__).resolve().parent.parent
