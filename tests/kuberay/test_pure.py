"""The pure parts of the `kuberay` worker: template, RayJob builder, failure mapping."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import anyio
import pytest

from prefect_raypool_kuberay import contract
from prefect_raypool_kuberay.failures import (
    crash_reason,
    last_lines,
    never_started,
    pod_failure,
    worker_pod_problems,
)
from prefect_raypool_kuberay.job_template import base_job_template
from prefect_raypool_kuberay.rayjob import ManifestError, auth_dropped, build_rayjob, rayjob_name
from prefect_raypool_kuberay.worker import KubeRayJobConfiguration, KubeRayWorker
from tests.kuberay.templates import configuration as _configuration

pytestmark = pytest.mark.unit


def _build(cfg: KubeRayJobConfiguration, env: dict[str, str | None] | None = None) -> Any:
    secret = cfg.api_key_secret_name
    return build_rayjob(
        manifest=cfg.rayjob_manifest,
        name="my-flow-abcde",
        namespace=cfg.namespace,
        command="prefect flow-run execute",
        env=env if env is not None else {"PREFECT_API_URL": "http://prefect:4200/api"},
        labels={"prefect.io/flow-run-id": "1234", "prefect.io/flow-run-name": "happy cat"},
        api_key_secret=(secret, cfg.api_key_secret_key) if secret else None,
    )


def test_the_template_built_without_prefect_is_the_workers() -> None:
    """The operator gives Ephemeral pools `base_job_template()`; Prefect's CLI and the
    worker use `get_default_base_job_template()`: the same, key order included."""
    ours, prefects = base_job_template(), KubeRayWorker.get_default_base_job_template()
    assert ours == prefects
    assert json.dumps(ours) == json.dumps(prefects)


def test_the_contract_and_the_template_import_no_prefect_or_ray() -> None:
    """What the operator imports of the worker's package (the policy too); the contract
    is stdlib only."""
    code = (
        "import sys\n"
        "import prefect_raypool_kuberay.contract, prefect_raypool_kuberay.job_template\n"
        "import prefect_raypool_kuberay.policy\n"
        "assert not {'prefect', 'ray', 'kopf'} & set(sys.modules), sorted(sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    tree = ast.parse(Path(contract.__file__).read_text())
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    imported += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    assert {m.split(".")[0] for m in imported} <= sys.stdlib_module_names, imported


def test_variables_fill_the_rayjob() -> None:
    cfg = _configuration(
        image="flows:1",
        namespace="team-a",
        service_account_name="ray-sa",
        head_cpu="2",
        worker_memory="3Gi",
        worker_replicas=3,
        ray_version="2.60.0",
        active_deadline_seconds=600,
        ttl_seconds_after_finished=30,
    )
    job = _build(cfg)
    spec = job["spec"]
    assert job["metadata"]["name"] == "my-flow-abcde"
    assert job["metadata"]["namespace"] == "team-a"
    assert job["metadata"]["labels"]["prefect.io/flow-run-name"] == "happy-cat"
    assert spec["entrypoint"] == "prefect flow-run execute"
    assert spec["submissionMode"] == "K8sJobMode"
    assert spec["shutdownAfterJobFinishes"] is True
    assert (spec["ttlSecondsAfterFinished"], spec["activeDeadlineSeconds"]) == (30, 600)
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    head = cluster["headGroupSpec"]["template"]
    assert head["spec"]["serviceAccountName"] == "ray-sa"
    assert head["metadata"]["labels"] == {"prefect.io/flow-run-id": "1234"}
    container = head["spec"]["containers"][0]
    assert container["image"] == "flows:1"
    assert container["resources"]["limits"]["cpu"] == "2"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"name": "PREFECT_API_URL", "value": "http://prefect:4200/api"} in container["env"]
    # Token auth by default, the token KubeRay's (it sets RAY_AUTH_* on each container).
    assert cluster["authOptions"] == {"mode": "token"}
    assert not any(e["name"].startswith("RAY_AUTH") for e in container["env"])
    group = cluster["workerGroupSpecs"][0]
    assert group["replicas"] == group["maxReplicas"] == 3
    assert group["template"]["spec"]["containers"][0]["resources"]["requests"]["memory"] == "3Gi"


def test_gpus_start_params_and_placement_reach_every_ray_pod() -> None:
    tolerations = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    cfg = _configuration(
        worker_gpu=1,
        head_ray_start_params={"num-cpus": "0"},
        worker_ray_start_params={"num-cpus": "4"},
        node_selector={"pool": "gpu"},
        tolerations=tolerations,
    )
    cluster = _build(cfg)["spec"]["rayClusterSpec"]
    head, group = cluster["headGroupSpec"], cluster["workerGroupSpecs"][0]
    # The submitter reaches the dashboard whatever the head's own flags say.
    assert head["rayStartParams"] == {"num-cpus": "0", "dashboard-host": "0.0.0.0"}
    assert group["rayStartParams"] == {"num-cpus": "4"}
    worker = group["template"]["spec"]
    assert worker["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert head["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 0
    for pod in (head["template"]["spec"], worker):
        assert pod["nodeSelector"] == {"pool": "gpu"}
        assert pod["tolerations"] == tolerations


def test_unset_optionals_leave_no_empty_fields() -> None:
    job = _build(_configuration())
    assert "activeDeadlineSeconds" not in job["spec"]
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert "serviceAccountName" not in head


def test_api_key_only_as_a_secret_reference() -> None:
    cfg = _configuration(api_key_secret_name="prefect-api", api_key_secret_key="token")
    job = _build(cfg, env={"PREFECT_API_KEY": "pnu_secret", "PREFECT_API_URL": "u"})
    assert "pnu_secret" not in repr(job)
    for c in [
        job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0],
        job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0],
    ]:
        key = [e for e in c["env"] if e["name"] == "PREFECT_API_KEY"]
        assert key == [
            {
                "name": "PREFECT_API_KEY",
                "valueFrom": {"secretKeyRef": {"name": "prefect-api", "key": "token"}},
            }
        ]
    # Without a Secret the literal key is dropped, never copied.
    assert "pnu_secret" not in repr(_build(_configuration(), env={"PREFECT_API_KEY": "pnu_secret"}))


def test_bad_manifests_name_the_field() -> None:
    cfg = _configuration()
    wrong_kind = {**cfg.rayjob_manifest, "kind": "Job"}
    with pytest.raises(ManifestError, match="must be a ray.io/v1 RayJob"):
        _build(cfg.model_copy(update={"rayjob_manifest": wrong_kind}))
    selector = {**cfg.rayjob_manifest, "spec": {"clusterSelector": {"ray.io/cluster": "x"}}}
    with pytest.raises(ManifestError, match="rayClusterSpec is required"):
        _build(cfg.model_copy(update={"rayjob_manifest": selector}))
    manifest = _build(cfg)
    manifest["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0][
        "env"
    ] = [{"name": "PREFECT_API_KEY", "value": "x"}]
    with pytest.raises(ManifestError, match="api_key_secret_name"):
        _build(cfg.model_copy(update={"rayjob_manifest": manifest}))


def test_rayjob_names_fit_kuberay() -> None:
    name = rayjob_name("A Very_Long flow run name " * 4, "x1y2z")
    assert len(name) <= 47 and name.endswith("-x1y2z") and name[0].isalpha()
    assert rayjob_name("123 !!", "abcde") == "flow-run-abcde"


def _rayjob(**status: Any) -> dict[str, Any]:
    return {"metadata": {"name": "rj"}, "status": status}


HEAD = {"ray.io/node-type": "head", "ray.io/cluster": "rj-c"}
WORKER = {"ray.io/node-type": "worker", "ray.io/cluster": "rj-c"}
SUBMITTER = {"batch.kubernetes.io/job-name": "rj"}


def _pod(
    status: dict[str, Any], labels: dict[str, str] = HEAD, name: str = "rj-head-x"
) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels}, "status": status}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({"jobDeploymentStatus": "Running"}, None),
        ({"jobDeploymentStatus": "Complete", "jobStatus": "SUCCEEDED"}, ""),
        (
            {"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "message": "past 60s"},
            "RayJob rj Failed: DeadlineExceeded: past 60s",
        ),
        (
            {"jobDeploymentStatus": "Failed", "jobStatus": "FAILED", "reason": "AppFailed"},
            "RayJob rj Failed (Ray job FAILED): AppFailed",
        ),
        (
            {"jobDeploymentStatus": "ValidationFailed", "message": "name too long"},
            "RayJob rj ValidationFailed: ValidationFailed: name too long",
        ),
    ],
)
def test_kuberay_verdicts(status: dict[str, Any], expected: str | None) -> None:
    outcome = crash_reason(_rayjob(**status), [])
    assert outcome.finished is (expected is not None)
    if expected is not None:
        assert outcome.reason == expected
        assert outcome.succeeded is (expected == "")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (
            {"containerStatuses": [{"name": "ray-head", "state": {"waiting": {
                "reason": "ImagePullBackOff", "message": "flows:nope not found"}}}]},
            "pod rj-head-x container ray-head ImagePullBackOff: flows:nope not found",
        ),
        (
            {"containerStatuses": [{"name": "ray-head", "state": {"running": {}}, "lastState": {
                "terminated": {"reason": "OOMKilled", "exitCode": 137}}}]},
            "pod rj-head-x container ray-head OOMKilled (exit code 137)",
        ),
        (
            {"phase": "Failed", "reason": "Evicted", "message": "low on memory"},
            "pod rj-head-x Evicted: low on memory",
        ),
        (
            {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": "0/1 nodes: Insufficient cpu"}]},
            "pod rj-head-x Unschedulable: 0/1 nodes: Insufficient cpu (for 0s)",
        ),
        (
            {"containerStatuses": [{"name": "ray-head", "state": {"waiting": {
                "reason": "ErrImageNeverPull", "message": "flows:1 not present"}}}]},
            "pod rj-head-x container ray-head ErrImageNeverPull: flows:1 not present",
        ),
        (
            {"containerStatuses": [{"name": "ray-head", "state": {"waiting": {
                "reason": "RunContainerError", "message": "exec: no such file"}}}]},
            "pod rj-head-x container ray-head RunContainerError: exec: no such file",
        ),
        ({"phase": "Pending", "containerStatuses": [{"name": "c", "state": {"waiting": {
            "reason": "ContainerCreating"}}}]}, None),
    ],
)  # fmt: skip
def test_pods_that_cannot_run(status: dict[str, Any], expected: str | None) -> None:
    assert pod_failure([_pod(status)]) == expected
    outcome = crash_reason(_rayjob(jobDeploymentStatus="Initializing"), [_pod(status)])
    assert outcome.finished is (expected is not None)
    if expected:
        assert outcome.reason == f"Ray cluster of RayJob rj cannot run: {expected}"


def test_an_unschedulable_pod_is_given_time_for_a_node() -> None:
    """A cluster autoscaler may be adding a node: fatal only after the timeout."""
    since = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    pod = _pod({"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes: Insufficient nvidia.com/gpu",
        "lastTransitionTime": "2026-01-01T12:00:00Z"}]})  # fmt: skip
    job = _rayjob(jobDeploymentStatus="Initializing")
    early = crash_reason(job, [pod], since + timedelta(seconds=299), schedule_timeout_s=300)
    assert not early.finished
    late = crash_reason(job, [pod], since + timedelta(seconds=301), schedule_timeout_s=300)
    assert late.finished and not late.succeeded
    assert late.reason == (
        "Ray cluster of RayJob rj cannot run: pod rj-head-x Unschedulable: "
        "0/3 nodes: Insufficient nvidia.com/gpu (for 301s)"
    )


OOM_ONCE = {"containerStatuses": [{"name": "ray-worker", "state": {"running": {}},
             "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}]}  # fmt: skip
PULL = {"containerStatuses": [{"name": "c", "state": {"waiting": {"reason": "ErrImagePull"}}}]}


def test_only_the_head_or_the_submitter_crashes_the_run() -> None:
    """A Ray worker pod KubeRay replaces (OOMKilled once, evicted, an image it cannot
    pull) is a warning; the same on the submitter or the head is a crash."""
    job = _rayjob(jobDeploymentStatus="Running")
    workers = [
        _pod(OOM_ONCE, WORKER, "rj-worker-a"),
        _pod({"phase": "Failed", "reason": "Evicted"}, WORKER, "rj-worker-b"),
        _pod(PULL, {}, "unlabelled"),  # not known to be the head or the submitter
    ]
    assert not crash_reason(job, workers).finished
    assert pod_failure(workers) is None
    assert worker_pod_problems(workers) == [
        "pod rj-worker-a container ray-worker OOMKilled (exit code 137)",
        "pod rj-worker-b Evicted",
        "pod unlabelled container c ErrImagePull",
    ]
    submitter = _pod(PULL, SUBMITTER, "rj-submit")
    outcome = crash_reason(job, [*workers, submitter])
    assert outcome.finished and "pod rj-submit container c ErrImagePull" in outcome.reason
    head = _pod(OOM_ONCE, HEAD)
    assert crash_reason(job, [*workers, head]).finished


CREATED = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def _created(deployment: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "rj", "creationTimestamp": "2026-01-01T12:00:00Z"},
        "status": {"jobDeploymentStatus": deployment},
    }


def test_a_cluster_whose_head_pod_is_never_created_crashes_after_the_deadline() -> None:
    """A quota or a webhook refusing the pods: nothing to wait for, only a deadline."""
    job, late = _created("Initializing"), CREATED + timedelta(seconds=601)
    assert never_started(job, [], CREATED + timedelta(seconds=599), 600) is None
    outcome = crash_reason(job, [], late, start_timeout_s=600)
    assert outcome.finished and not outcome.succeeded
    assert outcome.reason == (
        "Ray cluster of RayJob rj cannot run: no Ray head pod 601s after the RayJob was "
        "created (job variable cluster_start_timeout_seconds): see the RayJob's and its "
        "RayCluster's events"
    )
    # A head pod (still pulling its image) is a start, however slow.
    starting = _pod({"phase": "Pending"}, HEAD)
    assert not crash_reason(job, [starting], late, start_timeout_s=600).finished
    # Worker pods are no head; a RayJob KubeRay moved on is no cluster still starting.
    assert never_started(job, [_pod({}, WORKER)], late, 600) is not None
    assert never_started(_created("Running"), [], late, 600) is None
    assert never_started(job, [], late, None) is None


def test_kuberay_verdict_beats_pods() -> None:
    pods = [_pod({"phase": "Failed", "reason": "Evicted"})]
    outcome = crash_reason(_rayjob(jobDeploymentStatus="Failed", reason="AppFailed"), pods)
    assert outcome.reason == "RayJob rj Failed: AppFailed"


def test_last_lines() -> None:
    assert last_lines("\n".join(str(i) for i in range(500)) + "\n", 3) == "497\n498\n499"


def test_the_entry_point_is_found_and_does_not_import_ray() -> None:
    """Prefect imports every `prefect.collections` entry point in every process that
    loads its plugins (the CLI, workers, flows): ours must cost no Ray import."""
    code = (
        "import sys\n"
        "from importlib.metadata import entry_points\n"
        "from prefect.workers.base import BaseWorker\n"
        # Ours alone: prefect-ray's entry point (make bench installs it) imports Ray.
        "[ours] = entry_points(group='prefect.collections', name='prefect_raypool')\n"
        "ours.load()\n"
        "types = {w.type for w in BaseWorker.__subclasses__()}\n"
        "assert 'kuberay' in types, types\n"
        "assert 'ray' not in sys.modules, 'ray was imported'\n"
        "from prefect_raypool import RayTaskRunner  # the drop-in names still resolve\n"
        "assert 'ray' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_secret_setting_stays_a_secret_reference() -> None:
    """The worker's env (PREFECT_API_AUTH_STRING read from a Secret) is copied into every
    flow run's by Prefect: the pool's reference replaces the literal."""
    refs = {"PREFECT_API_AUTH_STRING": ("prefect-auth", "auth"), "UNUSED": ("other", "k")}
    env = {"PREFECT_API_AUTH_STRING": "admin:hunter2", "PREFECT_API_URL": "u"}
    job = build_rayjob(
        manifest=_configuration().rayjob_manifest,
        name="my-flow-abcde",
        namespace="default",
        command="prefect flow-run execute",
        env=env,
        labels={},
        api_key_secret=None,
        secret_env=refs,
    )
    assert "hunter2" not in repr(job)
    head = job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    by_name = {e["name"]: e for e in head["env"]}
    assert by_name["PREFECT_API_AUTH_STRING"] == {
        "name": "PREFECT_API_AUTH_STRING",
        "valueFrom": {"secretKeyRef": {"name": "prefect-auth", "key": "auth"}},
    }
    assert "UNUSED" not in by_name  # the pool's other Secrets stay with the worker
    # Without a reference the literal is dropped, never copied.
    bare = _build(_configuration(), env=env)
    assert "hunter2" not in repr(bare)


def test_user_labels_cannot_overwrite_the_workers_own() -> None:
    from prefect.client.schemas.objects import FlowRun

    run = FlowRun(flow_id=uuid4(), name="happy-cat")
    cfg = _configuration(
        labels={"prefect.io/flow-run-id": "someone-else", "prefect.io/x": "y", "team": "a"}
    )
    cfg.prepare_for_flow_run(run)
    assert cfg.labels["prefect.io/flow-run-id"] == str(run.id)
    assert cfg.labels["team"] == "a"
    assert "prefect.io/x" not in cfg.labels
    job = build_rayjob(
        manifest=cfg.rayjob_manifest,  # its labels: the user's variable, as given
        name="my-flow-abcde",
        namespace="default",
        command="prefect flow-run execute",
        env={},
        labels=cfg.labels,
        api_key_secret=None,
    )
    labels = job["metadata"]["labels"]
    assert labels["prefect.io/flow-run-id"] == str(run.id) and labels["team"] == "a"
    assert "prefect.io/x" not in labels


def test_the_api_servers_refusal_text_stays_in_the_workers_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It can quote the manifest; the flow run gets the status and a pointer."""
    from kubernetes.client import ApiException

    from prefect_raypool_kuberay.worker import RayJobNotCreated

    worker = KubeRayWorker(work_pool_name="pool", kube_api_client=object())  # type: ignore[arg-type]

    async def refuse(*args: Any, **kwargs: Any) -> Any:
        e = ApiException(status=422, reason="Unprocessable Entity")
        e.body = '{"message": "env[0].value: Invalid value: \\"pnu_planted\\""}'
        raise e

    worker._kube = refuse  # type: ignore[method-assign]
    with pytest.raises(RayJobNotCreated) as raised, caplog.at_level("ERROR"):
        anyio.run(worker._create, "ns", "rj-abcde", {})
    message = str(raised.value)
    assert "HTTP 422 Unprocessable Entity" in message and "log of worker" in message
    assert "pnu_planted" not in message
    assert raised.value.__suppress_context__  # no chained ApiException in tracebacks
    assert "pnu_planted" in caplog.text


def test_a_rayjob_stored_without_its_token_auth_is_noticed() -> None:
    """A KubeRay before v1.5.1 has no authOptions in its CRD: the API server drops it,
    and the worker must not let that cluster run open."""
    sent = _build(_configuration())
    assert sent["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    pruned = json.loads(json.dumps(sent))
    del pruned["spec"]["rayClusterSpec"]["authOptions"]
    assert auth_dropped(sent, pruned)
    assert not auth_dropped(sent, sent)
    off = json.loads(json.dumps(pruned))
    assert not auth_dropped(off, pruned)  # nothing asked for, nothing dropped
