"""The `kuberay` worker on the real control plane, the real KubeRay operator and a real
Prefect server. Pods run on kwok's simulated node, so nothing executes: the tests drive
the RayJob's status (and a pod's) the way KubeRay and the kubelet would set them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from kubernetes import client as k8s
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.objects import StateType
from prefect.settings import PREFECT_API_URL, temporary_settings
from prefect.states import AwaitingRetry, Cancelling, Completed, Running

from prefect_raypool_kuberay.job_template import base_job_template
from prefect_raypool_kuberay.ownership import pool_labels
from prefect_raypool_kuberay.policy import JobPolicy
from prefect_raypool_kuberay.rayjob import build_rayjob
from prefect_raypool_kuberay.worker import GROUP, PLURAL, VERSION, KubeRayWorker
from testbed.cluster import Cluster
from testbed.prefect_server import PrefectServer, start_prefect_server
from testbed.waiting import eventually
from tests.kuberay.templates import configuration

pytestmark = [pytest.mark.controlplane, pytest.mark.prefect]

PREFECT = str(Path(sys.executable).with_name("prefect"))


async def _aeventually(what: str, probe: Callable[[], Any], timeout: float = 30) -> Any:
    """`eventually` in a thread, for the async Prefect client's tests."""
    return await anyio.to_thread.run_sync(lambda: eventually(probe, timeout, what, interval=0.2))


def _pool_template(namespace: str) -> dict[str, Any]:
    """The default template with the test's namespace, an API key Secret (the pool's
    to name, not a deployment's) and a fast watch."""
    template = KubeRayWorker.get_default_base_job_template()
    props = template["variables"]["properties"]
    props["namespace"]["default"] = namespace
    props["api_key_secret_name"]["default"] = "prefect-api"
    props["watch_interval_seconds"]["default"] = 0.3
    return template


@pytest.fixture
def pool(prefect_server: PrefectServer, namespace: str) -> str:
    name = f"kr-{uuid.uuid4().hex[:6]}"
    httpx.post(
        f"{prefect_server.api_url}/work_pools/",
        json={"name": name, "type": "kuberay", "base_job_template": _pool_template(namespace)},
        timeout=10,
    ).raise_for_status()
    return name


def _rayjobs(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    api = k8s.CustomObjectsApi(cluster.api_client())
    return list(api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)["items"])


def _patch_status(cluster: Cluster, namespace: str, name: str, status: dict[str, Any]) -> None:
    api = k8s.CustomObjectsApi(cluster.api_client())
    api.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": status}
    )


async def _flow_run(pool: str, job_variables: dict[str, Any] | None = None) -> uuid.UUID:
    async with get_client() as c:
        flow_id = await c.create_flow_from_name("ephemeral-flow")
        deployment_id = await c.create_deployment(
            flow_id=flow_id,
            name=f"d-{uuid.uuid4().hex[:6]}",
            work_pool_name=pool,
            entrypoint="flows.py:ephemeral_flow",
            job_variables=job_variables or {},
        )
        return (await c.create_flow_run_from_deployment(deployment_id)).id


@asynccontextmanager
async def _worker(
    pool: str, cluster: Cluster, policy: JobPolicy | None = None
) -> AsyncIterator[KubeRayWorker]:
    async with KubeRayWorker(
        work_pool_name=pool,
        kube_api_client=cluster.api_client(),
        prefetch_seconds=10,
        job_policy=policy,
    ) as worker:
        yield worker


async def _submit(worker: KubeRayWorker, cluster: Cluster, namespace: str) -> str:
    """Poll once; return the RayJob the flow run got."""
    await worker.get_and_submit_flow_runs()
    jobs = await _aeventually("a RayJob", lambda: _rayjobs(cluster, namespace))
    return str(jobs[0]["metadata"]["name"])


async def _final_state(flow_run_id: uuid.UUID, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    async with get_client() as c:
        while True:
            run = await c.read_flow_run(flow_run_id)
            if run.state is not None and run.state.is_final():
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"flow run still {run.state}")
            await anyio.sleep(0.2)


async def _log_text(flow_run_id: uuid.UUID) -> str:
    from prefect.logging.handlers import APILogWorker

    await anyio.to_thread.run_sync(lambda: APILogWorker.drain_all(timeout=10))
    async with get_client() as c:
        logs = await c.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    return "\n".join(log.message for log in logs)


def test_work_pool_template_round_trips(prefect_server: PrefectServer) -> None:
    """`prefect work-pool create --type kuberay` finds the worker through its entry point;
    the pool gets the template the operator gives Ephemeral pools (built without Prefect)."""
    name = f"kr-{uuid.uuid4().hex[:6]}"
    out = subprocess.run(
        [PREFECT, "work-pool", "create", name, "--type", "kuberay"],
        env={**os.environ, **prefect_server.env()},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    pool = httpx.get(f"{prefect_server.api_url}/work_pools/{name}", timeout=10).json()
    assert pool["type"] == "kuberay"
    assert pool["base_job_template"] == KubeRayWorker.get_default_base_job_template()
    assert pool["base_job_template"] == base_job_template()


def test_flow_run_gets_rayjob_then_kuberay_failure_crashes_it(
    kube_cluster: Cluster, namespace: str, pool: str
) -> None:
    async def scenario() -> None:
        run_id = await _flow_run(
            pool,
            {
                "image": "flows:1",
                "worker_replicas": 2,
                "active_deadline_seconds": 600,
                "env": {"PREFECT_API_KEY": "pnu_never_in_the_rayjob", "MY_SETTING": "x"},
            },
        )
        async with _worker(pool, kube_cluster) as worker:
            name = await _submit(worker, kube_cluster, namespace)
            job = _rayjobs(kube_cluster, namespace)[0]
            labels = job["metadata"]["labels"]
            assert labels["prefect.io/flow-run-id"] == str(run_id)
            assert labels["prefect.io/work-pool-name"] == pool
            # What the sweep selects on: the work pool's id and the server's.
            assert {k: labels[k] for k in _own(pool)} == _own(pool)
            spec = job["spec"]
            assert spec["entrypoint"] == "prefect flow-run execute"
            assert spec["shutdownAfterJobFinishes"] is True
            assert spec["activeDeadlineSeconds"] == 600
            assert "pnu_never_in_the_rayjob" not in json.dumps(job)
            head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
            env = {e["name"]: e for e in head["env"]}
            assert env["PREFECT__FLOW_RUN_ID"]["value"] == str(run_id)
            assert env["MY_SETTING"]["value"] == "x"
            assert env["PREFECT_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "prefect-api"
            assert spec["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 2
            # The real KubeRay accepted it and made the flow run's Ray cluster.
            cluster_name = await _aeventually(
                "KubeRay's RayCluster",
                lambda: (_rayjobs(kube_cluster, namespace)[0].get("status") or {}).get(
                    "rayClusterName"
                ),
            )
            _token_of_its_own(kube_cluster, namespace, cluster_name)
            async with get_client() as c:
                pid = (await c.read_flow_run(run_id)).infrastructure_pid
                assert pid == f"{namespace}/{name}"
            _fake_submitter_output(kube_cluster, namespace, name, "Traceback...\nValueError: boom")
            _patch_status(
                kube_cluster,
                namespace,
                name,
                {
                    "jobDeploymentStatus": "Failed",
                    "reason": "DeadlineExceeded",
                    "message": "The RayJob has passed the activeDeadlineSeconds.",
                    "endTime": "2020-01-01T00:00:00Z",
                },
            )
            run = await _final_state(run_id)
        assert run.state.type == StateType.CRASHED
        assert "DeadlineExceeded" in run.state.message
        assert "activeDeadlineSeconds" in run.state.message
        logs = await _log_text(run_id)
        assert "DeadlineExceeded" in logs
        # The driver's last output, copied before the cluster goes.
        assert f"Driver output of RayJob {namespace}/{name}" in logs
        assert "ValueError: boom" in logs
        assert cluster_name

    anyio.run(scenario)


def _token_of_its_own(cluster: Cluster, namespace: str, ray_cluster: str) -> None:
    """The flow run's cluster runs Ray token auth with a token of its own: KubeRay made
    a Secret the RayCluster owns and hands it to the head pod by reference."""
    core = k8s.CoreV1Api(cluster.api_client())
    secret = eventually(
        lambda: core.read_namespaced_secret(ray_cluster, namespace), 30, "the token Secret"
    )
    [owner] = secret.metadata.owner_references
    assert (owner.kind, owner.name, owner.controller) == ("RayCluster", ray_cluster, True)
    pods = eventually(
        lambda: (
            core.list_namespaced_pod(
                namespace, label_selector=f"ray.io/cluster={ray_cluster},ray.io/node-type=head"
            ).items
        ),
        60,
        "the head pod",
    )
    env = {e.name: e for e in pods[0].spec.containers[0].env}
    assert env["RAY_AUTH_MODE"].value == "token"
    ref = env["RAY_AUTH_TOKEN"].value_from.secret_key_ref
    assert (ref.name, ref.key) == (ray_cluster, "auth_token")


def test_job_variables_beyond_the_pools_bounds_fail_the_run_and_create_nothing(
    kube_cluster: Cluster, namespace: str, pool: str
) -> None:
    """The escalations a deployment author could try, each refused with the variable
    and the bound named; no RayJob (nor anything else) is created."""
    defaults = _pool_template(namespace)["variables"]["properties"]
    policy = JobPolicy(
        namespace=namespace,
        service_account_name=None,
        image_repositories=("prefect-raypool-ray",),
        max_worker_replicas=defaults["worker_replicas"]["default"],
        max_cpu="1",
        max_memory="2Gi",
        max_gpu=0,
    )
    attempts = [
        (
            {"worker_replicas": 50},
            "job variable worker_replicas=50 is above the pool's maximum 1 "
            "(spec.jobVariables.maxWorkerReplicas)",
        ),
        ({"service_account_name": f"kr-{pool}-kuberay-worker"}, "service_account_name"),
        ({"api_key_secret_name": "someone-elses"}, "api_key_secret_name"),
        (
            {"node_selector": {"node-role.kubernetes.io/control-plane": ""}},
            "node-role.kubernetes.io/control-plane= is not allowed",
        ),
        ({"image": "elsewhere.example/x:1"}, "spec.jobVariables.imageRepositories"),
    ]

    async def scenario() -> None:
        runs = [(await _flow_run(pool, variables), expected) for variables, expected in attempts]
        async with _worker(pool, kube_cluster, policy) as worker:
            await worker.get_and_submit_flow_runs()
            for run_id, expected in runs:
                run = await _final_state(run_id)
                assert run.state.type == StateType.FAILED, run.state
                assert expected in run.state.message, run.state.message
        assert _rayjobs(kube_cluster, namespace) == []
        core = k8s.CoreV1Api(kube_cluster.api_client())
        assert core.list_namespaced_pod(namespace).items == []

    anyio.run(scenario)


def test_deleted_rayjob_crashes_the_flow_run(
    kube_cluster: Cluster, namespace: str, pool: str
) -> None:
    async def scenario() -> None:
        run_id = await _flow_run(pool)
        async with _worker(pool, kube_cluster) as worker:
            name = await _submit(worker, kube_cluster, namespace)
            k8s.CustomObjectsApi(kube_cluster.api_client()).delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name
            )
            run = await _final_state(run_id)
        assert run.state.type == StateType.CRASHED
        assert f"RayJob {namespace}/{name} was deleted" in run.state.message

    anyio.run(scenario)


def test_head_pod_that_cannot_start_crashes_the_flow_run(
    kube_cluster: Cluster, namespace: str, pool: str
) -> None:
    async def scenario() -> None:
        run_id = await _flow_run(pool, {"image": "flows:does-not-exist"})
        async with _worker(pool, kube_cluster) as worker:
            await _submit(worker, kube_cluster, namespace)
            core = k8s.CoreV1Api(kube_cluster.api_client())

            def head() -> Any:
                pods = core.list_namespaced_pod(namespace, label_selector="ray.io/node-type=head")
                return pods.items[0] if pods.items else None

            pod = await _aeventually("the head pod", head)
            core.patch_namespaced_pod_status(
                pod.metadata.name,
                namespace,
                {
                    "status": {
                        "phase": "Pending",
                        "containerStatuses": [
                            {
                                "name": "ray-head",
                                "image": "flows:does-not-exist",
                                "imageID": "",
                                "ready": False,
                                "restartCount": 0,
                                "state": {
                                    "waiting": {
                                        "reason": "ImagePullBackOff",
                                        "message": 'Back-off pulling image "flows:does-not-exist"',
                                    }
                                },
                            }
                        ],
                    }
                },
            )
            run = await _final_state(run_id)
        assert run.state.type == StateType.CRASHED
        assert "ImagePullBackOff" in run.state.message
        assert "flows:does-not-exist" in run.state.message

    anyio.run(scenario)


def test_cancelling_deletes_the_rayjob(kube_cluster: Cluster, namespace: str, pool: str) -> None:
    async def scenario() -> None:
        run_id = await _flow_run(pool)
        async with _worker(pool, kube_cluster) as worker:
            await _submit(worker, kube_cluster, namespace)
            async with get_client() as c:
                await c.set_flow_run_state(run_id, Running(), force=True)
                await c.set_flow_run_state(run_id, Cancelling(), force=True)
            run = await _final_state(run_id)
            assert await _aeventually(
                "the RayJob deleted", lambda: not _rayjobs(kube_cluster, namespace)
            )
        assert run.state.type == StateType.CANCELLED

    anyio.run(scenario)


def test_orphans_both_ways(kube_cluster: Cluster, namespace: str, pool: str) -> None:
    async def scenario() -> None:
        done_id = await _flow_run(pool)
        running_id = await _flow_run(pool)
        # Another worker made these, then went away.
        async with get_client() as c:
            await c.set_flow_run_state(done_id, Completed(), force=True)
            await c.set_flow_run_state(running_id, Running(), force=True)
            await c.update_flow_run(running_id, infrastructure_pid="vanished-abcde")
        api = k8s.CustomObjectsApi(kube_cluster.api_client())
        for name, run_id in [("done-run", done_id), ("gone-run", uuid.uuid4())]:
            api.create_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, _orphan(name, namespace, pool, run_id)
            )
        async with _worker(pool, kube_cluster) as worker:
            await worker.sweep_orphans()
            # The finished run's RayJob goes at once; the vanished ones wait a sweep.
            names = {j["metadata"]["name"] for j in _live_rayjobs(kube_cluster, namespace)}
            assert names == {"gone-run"}
            async with get_client() as c:
                assert (await c.read_flow_run(running_id)).state.type == StateType.RUNNING
            await worker.sweep_orphans()
        assert _rayjobs(kube_cluster, namespace) == [] or all(
            j["metadata"].get("deletionTimestamp") for j in _rayjobs(kube_cluster, namespace)
        )
        async with get_client() as c:
            running = await c.read_flow_run(running_id)
        assert running.state.type == StateType.CRASHED
        assert f"RayJob {namespace}/vanished-abcde vanished" in running.state.message

    anyio.run(scenario)


def _fake_submitter_output(cluster: Cluster, namespace: str, rayjob: str, output: str) -> None:
    """The submitter pod as it ends on a real node: kwok runs no container, so its
    termination message (FallbackToLogsOnError: the log tail) is set by hand."""
    core = k8s.CoreV1Api(cluster.api_client())
    pod = core.create_namespaced_pod(
        namespace,
        {
            "metadata": {
                "name": f"{rayjob}-submitter",
                "labels": {"batch.kubernetes.io/job-name": rayjob},
            },
            "spec": {
                "restartPolicy": "Never",
                "nodeName": "does-not-exist",  # no kubelet: the logs API cannot answer
                "containers": [{"name": "ray-job-submitter", "image": "flows:1"}],
            },
        },
    )
    terminated = {"exitCode": 1, "reason": "Error", "message": output}
    core.patch_namespaced_pod_status(
        pod.metadata.name,
        namespace,
        {
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "ray-job-submitter",
                        "image": "flows:1",
                        "imageID": "",
                        "ready": False,
                        "restartCount": 0,
                        "state": {"terminated": terminated},
                    }
                ],
            }
        },
    )


def _own(pool: str, server: str | None = None) -> dict[str, str]:
    """The labels the worker of `pool` on `server` (PREFECT_API_URL's) gives its RayJobs."""
    url = server or PREFECT_API_URL.value()
    work_pool = httpx.get(f"{url}/work_pools/{pool}", timeout=10).json()
    return pool_labels(work_pool["id"], url)


def _live_rayjobs(cluster: Cluster, namespace: str) -> list[dict[str, Any]]:
    return [j for j in _rayjobs(cluster, namespace) if not j["metadata"].get("deletionTimestamp")]


def _orphan(
    name: str, namespace: str, pool: str, run_id: uuid.UUID, server: str | None = None
) -> dict[str, Any]:
    """A RayJob as another worker of the pool made it for `run_id`."""
    return build_rayjob(
        manifest=configuration(namespace=namespace, worker_replicas=0).rayjob_manifest,
        name=name,
        namespace=namespace,
        command="prefect flow-run execute",
        env={},
        labels={
            "prefect.io/flow-run-id": str(run_id),
            "prefect.io/work-pool-name": pool,
            **_own(pool, server),
        },
        api_key_secret=None,
    )


def test_a_namespace_the_worker_may_not_read_is_skipped_not_crashed(
    kube_cluster: Cluster, namespace: str, pool: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 403 on the pool's namespace: one warning naming the fix, no traceback, and a
    running flow run there is not crashed for a RayJob the worker could not look at."""

    async def scenario() -> None:
        running_id = await _flow_run(pool)
        async with get_client() as c:
            await c.set_flow_run_state(running_id, Running(), force=True)
            await c.update_flow_run(running_id, infrastructure_pid="unseen-abcde")
        # A user with no RBAC at all: every RayJob list in the namespace is refused.
        nobody = kube_cluster.api_client()
        nobody.set_default_header("Impersonate-User", "system:serviceaccount:nowhere:nobody")
        async with KubeRayWorker(work_pool_name=pool, kube_api_client=nobody) as worker:
            await worker.sweep_orphans()
            await worker.sweep_orphans()
        async with get_client() as c:
            running = await c.read_flow_run(running_id)
        assert running.state.type == StateType.RUNNING

    with caplog.at_level("WARNING"):
        anyio.run(scenario)
    warnings = [r.getMessage() for r in caplog.records if "403 Forbidden" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert f"namespace {namespace!r}" in warnings[0] and "rayjobs.ray.io" in warnings[0]


def test_same_work_pool_name_on_two_prefect_servers_touch_not_each_others_rayjobs(
    kube_cluster: Cluster, namespace: str, pool: str, tmp_path: Path
) -> None:
    """Two Ephemeral work pools named alike, on two Prefect servers, one namespace: the
    second's worker sweeps (its own orphan goes) and leaves the first's running RayJob
    alone, which it used to take for an orphan of a flow run that does not exist."""

    async def scenario() -> None:
        other = await anyio.to_thread.run_sync(start_prefect_server, tmp_path / "other")
        try:
            httpx.post(
                f"{other.api_url}/work_pools/",
                json={
                    "name": pool,
                    "type": "kuberay",
                    "base_job_template": _pool_template(namespace),
                },
                timeout=10,
            ).raise_for_status()
            run_id = await _flow_run(pool)
            async with _worker(pool, kube_cluster) as worker:
                name = await _submit(worker, kube_cluster, namespace)
                async with get_client() as c:
                    await c.set_flow_run_state(run_id, Running(), force=True)
                api = k8s.CustomObjectsApi(kube_cluster.api_client())
                orphan = _orphan("other-gone", namespace, pool, uuid.uuid4(), other.api_url)
                api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, orphan)
                with temporary_settings({PREFECT_API_URL: other.api_url}):
                    async with _worker(pool, kube_cluster) as on_other:
                        for _ in range(3):
                            await on_other.sweep_orphans()
                names = {j["metadata"]["name"] for j in _live_rayjobs(kube_cluster, namespace)}
                assert names == {name}
                await worker.sweep_orphans()
                await worker.sweep_orphans()
                assert {j["metadata"]["name"] for j in _live_rayjobs(kube_cluster, namespace)} == {
                    name
                }
                async with get_client() as c:
                    assert (await c.read_flow_run(run_id)).state.type == StateType.RUNNING
                    await c.set_flow_run_state(run_id, Cancelling(), force=True)
                run = await _final_state(run_id)
            assert run.state.type == StateType.CANCELLED
        finally:
            other.stop()

    anyio.run(scenario)


def test_a_retry_on_another_worker_replica_is_not_crashed_by_the_old_rayjob(
    kube_cluster: Cluster, namespace: str, pool: str
) -> None:
    """Two replicas of the pool's worker. The run's driver reschedules it (AwaitingRetry,
    as on SIGTERM) while its first RayJob is still up; the second replica submits the
    retry; then KubeRay fails the first RayJob. The first replica's watch must see that
    the run moved on and crash nothing; the sweeps of both leave the new RayJob be."""

    async def scenario() -> None:
        run_id = await _flow_run(pool)
        async with _worker(pool, kube_cluster) as first, _worker(pool, kube_cluster) as second:
            old = await _submit(first, kube_cluster, namespace)
            async with get_client() as c:
                await c.set_flow_run_state(run_id, Running(), force=True)
                await c.set_flow_run_state(
                    run_id, AwaitingRetry(scheduled_time=datetime.now(UTC)), force=True
                )
            await second.get_and_submit_flow_runs()

            def new_rayjob() -> str | None:
                names = {j["metadata"]["name"] for j in _rayjobs(kube_cluster, namespace)}
                return next(iter(names - {old}), None)

            new = await _aeventually("the retry's RayJob", new_rayjob)
            async with get_client() as c:  # the second replica records the retry's id
                for _ in range(50):
                    pid = (await c.read_flow_run(run_id)).infrastructure_pid
                    if pid == f"{namespace}/{new}":
                        break
                    await anyio.sleep(0.2)
            assert pid == f"{namespace}/{new}"
            _patch_status(
                kube_cluster,
                namespace,
                old,
                {"jobDeploymentStatus": "Failed", "reason": "AppFailed", "message": "SIGTERM"},
            )
            await anyio.sleep(3)  # ten watch rounds of the first replica
            for worker in (first, second, first, second):
                await worker.sweep_orphans()
            async with get_client() as c:
                run = await c.read_flow_run(run_id)
            assert run.state.type == StateType.PENDING, run.state
            names = {j["metadata"]["name"] for j in _live_rayjobs(kube_cluster, namespace)}
            assert new in names
            assert f"no longer watching {namespace}/{old}" in await _log_text(run_id)
            async with get_client() as c:
                await c.set_flow_run_state(run_id, Cancelling(), force=True)
            run = await _final_state(run_id)
        assert run.state.type == StateType.CANCELLED

    anyio.run(scenario)
