"""The `kuberay` Prefect worker: one KubeRay RayJob (its own Ray cluster) per flow run.

The I/O shell around the pure parts: `job_template.py` declares the template's fields,
`rayjob.py` builds the manifest, `policy.py` bounds it, `failures.py` reads the verdict.
Kubernetes calls use
the sync client in a thread. The `prefect.collections` entry point imports this module,
which registers the worker type.
"""

from __future__ import annotations

import os
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import anyio
import anyio.abc
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterId,
)
from prefect.client.schemas.objects import FlowRun, StateType, WorkPool
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import (
    Abort,
    InfrastructureNotAvailable,
    InfrastructureNotFound,
    ObjectNotFound,
)
from prefect.states import Failed
from prefect.utilities.engine import propose_state
from prefect.workers.base import (
    BaseJobConfiguration,
    BaseVariables,
    BaseWorker,
    BaseWorkerResult,
)
from pydantic import PrivateAttr

from prefect_raypool_kuberay.contract import (
    FLOW_RUN_ID_LABEL,
    RAYJOB_GROUP,
    RAYJOB_PLURAL,
    RAYJOB_VERSION,
    WORKER_TYPE,
)
from prefect_raypool_kuberay.failures import (
    RayJobOutcome,
    crash_reason,
    last_lines,
    role,
    unschedulable,
    worker_pod_problems,
)
from prefect_raypool_kuberay.job_template import RayJobFields, RayJobVariables
from prefect_raypool_kuberay.ownership import (
    RunIs,
    SweptRayJob,
    TwiceSeen,
    infrastructure_id,
    pool_labels,
    read_rayjob,
    selector,
    split_infrastructure_id,
    superseded,
    sweep_action,
)
from prefect_raypool_kuberay.policy import (
    POLICY_ENV,
    POOL_ONLY,
    JobPolicy,
    check,
    pool_only_overrides,
)
from prefect_raypool_kuberay.rayjob import auth_dropped, build_rayjob, rayjob_name, user_labels

GROUP, VERSION, PLURAL = RAYJOB_GROUP, RAYJOB_VERSION, RAYJOB_PLURAL
#: How long a RayJob may outlive its finished flow run before it counts as an orphan.
FINAL_GRACE_SECONDS = 30.0
SWEEP_INTERVAL_SECONDS = 15.0
DRIVER_LOG_LINES = 100
#: Every Kubernetes call: (connect, read) seconds. A hung API server must not hang a
#: watch or a sweep for ever.
KUBE_TIMEOUT = (10, 30)
#: The watch retries a failed round (an API server restarting, a Prefect server
#: timing out) after its interval, doubled per failure up to this.
WATCH_BACKOFF_MAX_SECONDS = 60.0


class JobRefused(RuntimeError):
    """The pool's policy refused the flow run's RayJob; nothing was created."""


class RayJobNotCreated(RuntimeError):
    """The Kubernetes API refused the RayJob: its status and reason only, as the API
    server's message can echo the manifest's values."""


# Prefect's base last: pydantic lists the last base's fields first, as Prefect's
# schema and template have always had them.
class KubeRayJobConfiguration(RayJobFields, BaseJobConfiguration):
    """What the worker needs for one flow run, after the template is filled in."""

    # The pool-only variables (policy.POOL_ONLY) a deployment or flow run set anyway.
    _pool_only_overrides: list[str] = PrivateAttr(default_factory=list)

    @classmethod
    async def resolve_for_flow_run(
        cls,
        flow_run: FlowRun,
        *,
        client: PrefectClient,
        work_pool: WorkPool,
        worker_name: str,
        worker_id: UUID | None = None,
        deployment: DeploymentResponse | None = None,
    ) -> KubeRayJobConfiguration:
        """Prefect's, remembering which pool-only variables the deployment or the flow
        run set to another value than the work pool's: run() refuses those."""
        if deployment is None and flow_run.deployment_id:
            deployment = await client.read_deployment(flow_run.deployment_id)
        configuration = await super().resolve_for_flow_run(
            flow_run,
            client=client,
            work_pool=work_pool,
            worker_name=worker_name,
            worker_id=worker_id,
            deployment=deployment,
        )
        set_here = {
            **((deployment.job_variables if deployment else None) or {}),
            **(flow_run.job_variables or {}),
        }
        props = (work_pool.base_job_template.get("variables") or {}).get("properties") or {}
        pool = {name: (props.get(name) or {}).get("default") for name in POOL_ONLY}
        configuration._pool_only_overrides = pool_only_overrides(set_here, pool)
        return configuration

    def prepare_for_flow_run(self, flow_run: FlowRun, *args: Any, **kwargs: Any) -> None:
        """Prefect's, except that the worker's own labels (prefect.io/flow-run-id, the
        work pool's, ...) beat the user's: Prefect lets the `labels` variable win."""
        user, self.labels = dict(self.labels or {}), {}
        super().prepare_for_flow_run(flow_run, *args, **kwargs)
        own = self.labels
        self.labels = {**user_labels(user), **own}


class KubeRayVariables(RayJobVariables, BaseVariables):
    """The variables users set on the work pool or per deployment (`job_variables`)."""


class KubeRayWorkerResult(BaseWorkerResult):
    """identifier: `<namespace>/<RayJob>`; status_code 0 when the Ray job succeeded."""


@dataclass
class _Watching:
    """One RayJob's watch, between rounds."""

    namespace: str
    name: str
    state_id: UUID | None  # the run's Pending state when the RayJob was made
    final_since: float | None = None
    gone_reads: int = 0  # the flow run not found, rounds in a row
    failures: int = 0  # rounds in a row that raised
    told: set[str] = field(default_factory=set)  # warnings already in the run's logs

    @property
    def id(self) -> str:
        return infrastructure_id(self.namespace, self.name)


def _default_api_client() -> k8s.ApiClient:
    try:
        k8s_config.load_incluster_config()
    except k8s_config.ConfigException:
        k8s_config.load_kube_config()
    return k8s.ApiClient()


class KubeRayWorker(BaseWorker[KubeRayJobConfiguration, KubeRayVariables, KubeRayWorkerResult]):
    type = WORKER_TYPE
    job_configuration = KubeRayJobConfiguration
    job_configuration_variables = KubeRayVariables
    _description = (
        "Runs each flow run as a KubeRay RayJob: its own Ray cluster, torn down afterwards."
    )

    def __init__(
        self,
        *args: Any,
        kube_api_client: k8s.ApiClient | None = None,
        job_policy: JobPolicy | None = None,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self._api_client = kube_api_client
        # The pool's bounds on job variables, from the operator (policy.py); a worker
        # started by hand without POLICY_ENV has none beyond the template.
        policy_json = os.environ.get(POLICY_ENV)
        self._policy = job_policy or (JobPolicy.from_json(policy_json) if policy_json else None)
        self._watched: set[str] = set()  # infrastructure ids a run() of this process watches
        self._namespaces: set[str] = set()
        self._forbidden: set[str] = set()  # namespaces already warned about
        self._malformed: set[str] = set()  # RayJobs with a bad label, already warned about
        self._gone_runs: TwiceSeen[SweptRayJob] = TwiceSeen()
        self._vanished: TwiceSeen[tuple[UUID, str, UUID | None]] = TwiceSeen()
        self._last_sweep = 0.0

    # ---- Kubernetes, in a thread --------------------------------------------------

    @property
    def _api(self) -> k8s.ApiClient:
        if self._api_client is None:
            self._api_client = _default_api_client()
        return self._api_client

    async def _kube(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("_request_timeout", KUBE_TIMEOUT)
        return await anyio.to_thread.run_sync(lambda: fn(*args, **kwargs))

    def _own_labels(self) -> dict[str, str]:
        """This work pool's, on this Prefect server: what the sweep selects on."""
        return pool_labels(self.work_pool.id, str(self.client.api_url))

    async def _get_rayjob(self, namespace: str, name: str) -> dict[str, Any] | None:
        api = k8s.CustomObjectsApi(self._api)
        try:
            return await self._kube(
                api.get_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
        except k8s.ApiException as e:
            if e.status == 404:
                return None
            raise

    async def _delete_rayjob(self, namespace: str, name: str) -> bool:
        """Delete it and what it owns (cluster, submitter Job); False when already gone."""
        api = k8s.CustomObjectsApi(self._api)
        try:
            await self._kube(
                api.delete_namespaced_custom_object,
                GROUP,
                VERSION,
                namespace,
                PLURAL,
                name,
                propagation_policy="Background",
            )
            return True
        except k8s.ApiException as e:
            if e.status == 404:
                return False
            raise

    async def _pods(self, namespace: str, rayjob: dict[str, Any]) -> list[dict[str, Any]]:
        core = k8s.CoreV1Api(self._api)
        selectors = [f"batch.kubernetes.io/job-name={rayjob['metadata']['name']}"]
        if cluster := (rayjob.get("status") or {}).get("rayClusterName"):
            selectors.append(f"ray.io/cluster={cluster}")
        pods: list[dict[str, Any]] = []
        for pod_selector in selectors:
            found = await self._kube(
                core.list_namespaced_pod, namespace, label_selector=pod_selector
            )
            pods += [self._api.sanitize_for_serialization(p) for p in found.items]
        return pods

    # ---- one flow run -------------------------------------------------------------

    async def run(  # type: ignore[override]  # the infrastructure id is a string
        self,
        flow_run: FlowRun,
        configuration: KubeRayJobConfiguration,
        task_status: anyio.abc.TaskStatus[str] | None = None,
    ) -> KubeRayWorkerResult:
        suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
        name = rayjob_name(configuration.name or flow_run.name, suffix)
        namespace = configuration.namespace
        secret = configuration.api_key_secret_name
        manifest = build_rayjob(
            manifest=configuration.rayjob_manifest,
            name=name,
            namespace=namespace,
            command=configuration.command or "prefect flow-run execute",
            env=configuration.env,
            labels={**configuration.labels, **self._own_labels()},
            api_key_secret=(secret, configuration.api_key_secret_key) if secret else None,
            secret_env=self._policy.secret_env if self._policy else None,
            pod_labels=self._policy.pod_labels if self._policy else None,
            ray_auth_mode=self._policy.ray_auth_mode if self._policy else None,
        )
        refusals = configuration._pool_only_overrides + (
            check(manifest, self._policy) if self._policy else []
        )
        if refusals:
            return await self._refuse(flow_run, refusals, task_status)
        # The Pending state this submission put the run in; a retry's is another one.
        attempt = (await self.client.read_flow_run(flow_run.id)).state
        await self._create(namespace, name, manifest)
        pending = attempt is not None and attempt.type == StateType.PENDING
        watching = _Watching(namespace, name, attempt.id if attempt and pending else None)
        self._namespaces.add(namespace)
        self._watched.add(watching.id)
        logger = self.get_flow_run_logger(flow_run)
        logger.info(f"Created RayJob {namespace}/{name}")
        if task_status is not None:
            task_status.started(watching.id)  # the infrastructure id
        try:
            code = await self._watch(flow_run, configuration, watching)
        finally:
            self._watched.discard(watching.id)
        return KubeRayWorkerResult(identifier=watching.id, status_code=code)

    async def _refuse(
        self,
        flow_run: FlowRun,
        refusals: list[str],
        task_status: anyio.abc.TaskStatus[str] | None,
    ) -> KubeRayWorkerResult:
        """Fail the flow run with the refusals; nothing is created. Failed, not Crashed:
        the deployment's job variables are wrong, retrying the same will not help."""
        message = "; ".join(refusals)
        self.get_flow_run_logger(flow_run).error(f"No RayJob created: {message}")
        try:
            await propose_state(self.client, Failed(message=message), flow_run_id=flow_run.id)
        except Abort:
            pass  # already final
        if task_status is not None:
            task_status.started(JobRefused(message))  # type: ignore[arg-type]  # not started
        return KubeRayWorkerResult(identifier="", status_code=1)

    async def _create(self, namespace: str, name: str, manifest: dict[str, Any]) -> None:
        """Create the RayJob. The API server's refusal text goes to the worker's log
        only: it can quote the manifest, and the flow run's state and logs are read by
        everyone who may see the deployment."""
        api = k8s.CustomObjectsApi(self._api)
        try:
            stored = await self._kube(
                api.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, manifest
            )
        except k8s.ApiException as e:
            self._logger.error(
                f"The Kubernetes API refused RayJob {namespace}/{name}: HTTP {e.status} "
                f"{e.reason}: {e.body}"
            )
            raise RayJobNotCreated(
                f"the Kubernetes API refused RayJob {namespace}/{name}: HTTP {e.status} "
                f"{e.reason}; its message is in the log of worker {self.name!r}"
            ) from None
        if auth_dropped(manifest, stored):
            # A KubeRay older than v1.5.1: its CRD has no authOptions, which the API
            # server dropped, so the run's cluster would be open. Fail closed.
            await self._kube(
                api.delete_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name
            )
            raise RayJobNotCreated(
                f"RayJob {namespace}/{name} was deleted again: the cluster's KubeRay dropped "
                "rayClusterSpec.authOptions (KubeRay before v1.5.1), so the flow run's Ray "
                "cluster would run without token auth; upgrade KubeRay to v1.5.1 or later, "
                "or set the pool's spec.ray.auth.mode to disabled"
            )

    async def _watch(
        self, flow_run: FlowRun, configuration: KubeRayJobConfiguration, watching: _Watching
    ) -> int:
        """Follow the RayJob until it finishes, vanishes, the flow run moves on to another
        attempt, or is cancelled. A round that fails (an API server restarting, a
        timeout) is retried, backing off; each round reads everything afresh."""
        logger = self.get_flow_run_logger(flow_run)
        while True:
            await anyio.sleep(watch_delay(configuration.watch_interval_seconds, watching.failures))
            try:
                code = await self._watch_round(flow_run, configuration, watching)
            except Exception as e:
                watching.failures += 1
                logger.warning(
                    f"Watching RayJob {watching.id} failed ({_short_error(e)}); "
                    f"retrying (failure {watching.failures} in a row)"
                )
                continue
            watching.failures = 0
            if code is not None:
                return code

    async def _watch_round(
        self, flow_run: FlowRun, configuration: KubeRayJobConfiguration, w: _Watching
    ) -> int | None:
        """One look at the flow run, the RayJob and its pods: an exit code once done."""
        namespace, name = w.namespace, w.name
        logger = self.get_flow_run_logger(flow_run)
        try:
            current = await self.client.read_flow_run(flow_run.id)
        except ObjectNotFound:
            # Deleted, or a server being restored: believed at the second read in a row.
            w.gone_reads += 1
            if w.gone_reads < 2:
                return None
            await self._delete_rayjob(namespace, name)
            return 1
        w.gone_reads = 0
        state = current.state
        if superseded(
            w.id,
            w.state_id,
            current.infrastructure_pid,
            state.type.value if state else None,
            state.id if state else None,
        ):
            logger.info(f"The flow run moved on to another attempt: no longer watching {w.id}")
            return 0
        if state is not None and state.type == StateType.CANCELLING:
            await self._delete_rayjob(namespace, name)
            logger.info(f"Flow run cancelled: deleted RayJob {namespace}/{name}")
            await self._mark_flow_run_as_cancelled(
                current, {"message": f"Cancelled: RayJob {namespace}/{name} deleted."}
            )
            return 0
        final = state is not None and state.is_final()
        # Scheduled again (a retry, a driver that rescheduled itself): what is left of
        # this attempt says nothing about the next one.
        rescheduled = state is not None and state.type == StateType.SCHEDULED
        rayjob = await self._get_rayjob(namespace, name)
        labels = ((rayjob or {}).get("metadata") or {}).get("labels") or {}
        if rayjob is not None and self._own_labels().items() - labels.items():
            rayjob = None  # another's RayJob under this name: ours is gone
        if rayjob is None:
            if final:
                return 0 if state is not None and state.is_completed() else 1
            if rescheduled:
                return 0
            message = f"RayJob {namespace}/{name} was deleted before the flow run finished"
            logger.error(message)
            await self._propose_crashed_state(current, message)
            return 1
        pods = [] if final else await self._pods(namespace, rayjob)
        now = datetime.now(UTC)
        timeout = configuration.pod_schedule_timeout_seconds
        outcome = crash_reason(
            rayjob, pods, now, timeout, configuration.cluster_start_timeout_seconds
        )
        if outcome.finished:
            if rescheduled:
                logger.info(f"RayJob {w.id} ended; the flow run is scheduled again")
                return 0
            return await self._finish(current, namespace, rayjob, outcome)
        self._warn_pods(logger, w, pods, now, timeout)
        if final:
            # The driver ended the flow run but the Ray job never finished: an orphan.
            w.final_since = w.final_since or time.monotonic()
            if time.monotonic() - w.final_since > FINAL_GRACE_SECONDS:
                await self._delete_rayjob(namespace, name)
                return 0 if state is not None and state.is_completed() else 1
        return None

    @staticmethod
    def _warn_pods(
        logger: Any, w: _Watching, pods: list[dict[str, Any]], now: datetime, timeout: float
    ) -> None:
        """Once each, in the run's logs: the head or submitter waiting for a node (it
        crashes the run after `timeout`), a Ray worker pod in trouble (it does not)."""
        waiting = [u for pod in pods if role(pod) != "worker" and (u := unschedulable(pod, now))]
        if waiting and "unschedulable" not in w.told:
            w.told.add("unschedulable")
            logger.warning(
                f"{waiting[0][0]}; waiting up to {timeout:.0f}s for a node "
                "(job variable pod_schedule_timeout_seconds)"
            )
        for problem in worker_pod_problems(pods, now):
            key = problem.split(":")[0]
            if key not in w.told:
                w.told.add(key)
                logger.warning(
                    f"Ray worker {problem}; KubeRay replaces Ray worker pods, the flow run "
                    "goes on (its Ray tasks wait for a worker)"
                )

    async def _finish(
        self, flow_run: FlowRun, namespace: str, rayjob: dict[str, Any], outcome: RayJobOutcome
    ) -> int:
        """Copy the driver's last output, then report a failure as a crash with its reason."""
        logger = self.get_flow_run_logger(flow_run)
        name = rayjob["metadata"]["name"]
        if output := await self._driver_output(namespace, rayjob):
            logger.info(f"Driver output of RayJob {namespace}/{name} (last lines):\n{output}")
        if outcome.succeeded:
            return 0
        logger.error(outcome.reason)
        await self._propose_crashed_state(flow_run, outcome.reason)
        return 1

    async def _driver_output(self, namespace: str, rayjob: dict[str, Any]) -> str:
        """The submitter pod follows the Ray job's logs: its log tail, else its
        termination message (FallbackToLogsOnError), is the driver's last output."""
        core = k8s.CoreV1Api(self._api)
        name = rayjob["metadata"]["name"]
        try:
            found = await self._kube(
                core.list_namespaced_pod,
                namespace,
                label_selector=f"batch.kubernetes.io/job-name={name}",
            )
        except k8s.ApiException:
            return ""
        for pod in found.items:
            try:
                text = await self._kube(
                    core.read_namespaced_pod_log,
                    pod.metadata.name if pod.metadata else "",
                    namespace,
                    tail_lines=DRIVER_LOG_LINES,
                )
                if text:
                    return last_lines(text, DRIVER_LOG_LINES)
            except k8s.ApiException:
                pass  # no kubelet to ask (node gone): fall back to the status
            for cs in (pod.status and pod.status.container_statuses) or []:
                term = cs.state and cs.state.terminated
                if term and term.message:
                    return last_lines(term.message, DRIVER_LOG_LINES)
        return ""

    async def kill_infrastructure(
        self,
        infrastructure_pid: str,
        configuration: KubeRayJobConfiguration,
        grace_seconds: int = 30,
    ) -> None:
        """Cancellation: delete the RayJob; KubeRay stops the Ray job and the cluster.

        Only the run's own: an id that names another run's RayJob deletes nothing."""
        namespace, name = split_infrastructure_id(infrastructure_pid, configuration.namespace)
        rayjob = await self._get_rayjob(namespace, name)
        if rayjob is None:
            raise InfrastructureNotFound(f"RayJob {namespace}/{name} not found")
        run_id = configuration.labels.get(FLOW_RUN_ID_LABEL)
        if (rayjob["metadata"].get("labels") or {}).get(FLOW_RUN_ID_LABEL) != run_id:
            raise InfrastructureNotAvailable(
                f"RayJob {namespace}/{name} is not flow run {run_id}'s: left alone"
            )
        if not await self._delete_rayjob(namespace, name):
            raise InfrastructureNotFound(f"RayJob {namespace}/{name} not found")

    # ---- orphans, both ways -------------------------------------------------------

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        runs = await super().get_and_submit_flow_runs()
        if time.monotonic() - self._last_sweep >= SWEEP_INTERVAL_SECONDS:
            self._last_sweep = time.monotonic()
            try:
                await self.sweep_orphans()
            except Exception:
                self._logger.exception("Sweeping orphaned RayJobs failed; retrying next poll")
        return runs

    def _pool_namespace(self) -> str:
        props = (self.work_pool.base_job_template.get("variables") or {}).get("properties", {})
        return str((props.get("namespace") or {}).get("default") or "default")

    async def sweep_orphans(self) -> None:
        """Remove RayJobs whose flow run is over or gone; crash running flow runs whose
        RayJob vanished. Only RayJobs labelled with this work pool's id and this Prefect
        server count; what a run() of this process watches is left to it; a vanished
        run or RayJob is acted on when two sweeps in a row found it so."""
        custom = k8s.CustomObjectsApi(self._api)
        own = selector(self._own_labels())
        live: set[str] = set()  # infrastructure ids
        unreadable: set[str] = set()
        gone: set[SweptRayJob] = set()
        for namespace in sorted({self._pool_namespace(), *self._namespaces}):
            try:
                found = await self._kube(
                    custom.list_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    PLURAL,
                    label_selector=own,
                )
            except k8s.ApiException as e:
                if e.status != 403:
                    raise
                unreadable.add(namespace)
                self._forbidden_once(namespace)
                continue
            for item in dict(found).get("items", []):
                live.add(infrastructure_id(namespace, item["metadata"]["name"]))
                rayjob = read_rayjob(item, namespace)
                if isinstance(rayjob, str):
                    self._malformed_once(rayjob)
                elif rayjob.id not in self._watched:
                    try:
                        await self._sweep_rayjob(rayjob, gone)
                    except Exception as e:
                        self._logger.warning(
                            f"Sweeping RayJob {rayjob.id} failed ({_short_error(e)}); "
                            "retrying next sweep"
                        )
        self._gone_runs.step(gone)
        await self._crash_vanished(live, unreadable)

    def _forbidden_once(self, namespace: str) -> None:
        """One warning per namespace, naming the fix, rather than a traceback per sweep."""
        if namespace in self._forbidden:
            return
        self._forbidden.add(namespace)
        self._logger.warning(
            f"Cannot list RayJobs in namespace {namespace!r} (403 Forbidden), so orphans "
            "there are not swept: grant this worker's service account list on "
            "rayjobs.ray.io in it, or set the work pool's `namespace` to one it may use"
        )

    def _malformed_once(self, problem: str) -> None:
        """A RayJob whose labels someone edited is skipped, said once; the rest are swept."""
        if problem not in self._malformed:
            self._malformed.add(problem)
            self._logger.warning(f"Not sweeping {problem}: fix or delete it by hand")

    async def _sweep_rayjob(self, rayjob: SweptRayJob, gone: set[SweptRayJob]) -> None:
        try:
            flow_run: FlowRun | None = await self.client.read_flow_run(rayjob.flow_run_id)
        except ObjectNotFound:
            flow_run = None
        state = flow_run.state if flow_run is not None else None
        if flow_run is None:
            run = RunIs.GONE
            gone.add(rayjob)
        elif state is not None and state.is_final():
            run = RunIs.FINAL
        elif state is not None and state.type == StateType.CANCELLING:
            run = RunIs.CANCELLING
        else:
            run = RunIs.ACTIVE
        why = sweep_action(run, gone_before=rayjob in self._gone_runs)
        if why is None:
            return
        if await self._delete_rayjob(rayjob.namespace, rayjob.name):
            self._logger.info(f"Deleted orphaned RayJob {rayjob.id}: {why}")
        if flow_run is not None and run is RunIs.CANCELLING:
            await self._mark_flow_run_as_cancelled(
                flow_run, {"message": f"Cancelled: RayJob {rayjob.id} deleted."}
            )

    async def _crash_vanished(self, live: set[str], unreadable: set[str]) -> None:
        runs = await self.client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(id=WorkPoolFilterId(any_=[self.work_pool.id])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(
                    type=FlowRunFilterStateType(any_=[StateType.RUNNING, StateType.PENDING])
                )
            ),
        )
        # (flow run, infrastructure id, state): a retry's new state or RayJob starts over.
        vanished: dict[tuple[UUID, str, UUID | None], FlowRun] = {}
        for flow_run in runs:
            pid = flow_run.infrastructure_pid
            if not pid or flow_run.id in self._submitting_flow_run_ids:
                continue
            namespace, name = split_infrastructure_id(pid, "")
            namespace = namespace or await self._namespace_of(flow_run)  # an older worker's
            rid = infrastructure_id(namespace, name)
            if rid in live or rid in self._watched or namespace in unreadable:
                continue
            # A RayJob the worker may not read has not vanished.
            try:
                if await self._get_rayjob(namespace, name) is not None:
                    continue
            except k8s.ApiException as e:
                if e.status != 403:
                    raise
                self._forbidden_once(namespace)
                continue
            vanished[(flow_run.id, rid, flow_run.state.id if flow_run.state else None)] = flow_run
        for key in self._vanished.step(vanished):
            flow_run = vanished[key]
            message = f"RayJob {key[1]} vanished while the flow run was not finished"
            self.get_flow_run_logger(flow_run).error(message)
            await self._propose_crashed_state(flow_run, message)

    async def _namespace_of(self, flow_run: FlowRun) -> str:
        try:
            configuration = await self.job_configuration.resolve_for_flow_run(
                flow_run, client=self.client, work_pool=self.work_pool, worker_name=self.name
            )
            return configuration.namespace
        except ObjectNotFound:
            return self._pool_namespace()


def watch_delay(interval: float, failures: int) -> float:
    """The pause before a watch round: the interval, doubled per failed round in a row,
    up to WATCH_BACKOFF_MAX_SECONDS (or the interval, where that is longer)."""
    return min(interval * 2 ** min(failures, 16), max(interval, WATCH_BACKOFF_MAX_SECONDS))


def _short_error(e: Exception) -> str:
    """An error in a line, for a log: the API server's body (which can echo a manifest)
    left out."""
    if isinstance(e, k8s.ApiException):
        return f"Kubernetes API {e.status} {e.reason}"
    return f"{type(e).__name__}: {str(e)[:200]}"
