"""End-to-end fixtures: a control plane with a real node running the generated pods.

`real_stack` (once for this package): the control plane with a real node (kubelet,
containerd, CNI, CoreDNS, kube-proxy, kube-router enforcing NetworkPolicy), the
project's images loaded into it, a Prefect server the pods reach at the node's
address, and the operator installed from its chart. Skipped, with the reason, where
a real node cannot run.
"""

from __future__ import annotations

import datetime as dt
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from testbed import operator_log
from testbed.pooldriver import PoolDriver
from testbed.realstack import RealNodeUnavailable, RealStack, operator_logs, start_real_stack


@pytest.fixture(scope="package")
def real_stack() -> Iterator[RealStack]:
    state = Path(tempfile.mkdtemp(prefix="raypool-real-"))
    try:
        stack = start_real_stack(state)
    except RealNodeUnavailable as e:
        pytest.skip(f"no real node here: {e}")
    try:
        yield stack
    finally:
        stack.stop()
        shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def pools(real_stack: RealStack) -> Iterator[PoolDriver]:
    """A fresh namespace on the real node and helpers to run pools and flows in it."""
    driver = PoolDriver(
        real_stack.kubeconfig,
        real_stack.kubectl,
        real_stack.prefect.api_url,
        f"e2e-{uuid.uuid4().hex[:6]}",
    )
    driver.create_namespace()
    try:
        yield driver
    finally:
        driver.delete()


@pytest.fixture(autouse=True)
def operator_log_clean(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[None]:
    """Tests on the real stack fail if an operator pod (leader or standby) logged an
    error they did not declare with @pytest.mark.operator_log_allows (as the operator
    tests do: testbed/operator_log.py). Its pods' logs since the test began are read
    after it (and after its namespace is gone), kept in `tmp_path/operator.log`."""
    if "real_stack" not in request.fixturenames:
        yield
        return
    stack: RealStack = request.getfixturevalue("real_stack")
    since = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    yield
    texts = operator_logs(stack, since)
    (tmp_path / "operator.log").write_text(operator_log.merged(texts))
    allowed = [*operator_log.ALWAYS, *operator_log.allowed_patterns(request)]
    operator_log.report(operator_log.unexpected_in(texts, allowed), "the operator's pods")
