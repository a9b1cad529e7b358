"""Operator settings: environment variables in, kopf settings out.

Namespace scoping is kopf's own command line (`--namespace=a --namespace=b`, or
`--all-namespaces`); the chart passes it. Everything else is read here.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field

import kopf

from prefect_raypool_operator import kinds, naming, urls
from prefect_raypool_operator.owned import OWNED_KINDS

#: The server-side filter on every watch of an owned kind.
MANAGED_SELECTOR = f"{naming.MANAGED_BY_LABEL}={naming.MANAGED_BY}"


def _float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


def _bool(name: str) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if raw not in ("", "true", "false"):
        raise ValueError(f"{name}={raw!r}: expected true or false")
    return raw == "true"


def _url_map(raw: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (p.strip() for p in raw.split(","))):
        source, _, target = item.partition("=")
        if not target:
            raise ValueError(f"RAYPOOL_PREFECT_URL_MAP entry {item!r}: expected FROM=TO")
        pairs.append((source, target))
    return pairs


def _allowlist(raw: str) -> tuple[str, ...]:
    entries = tuple(filter(None, (p.strip() for p in raw.split(","))))
    for entry in entries:
        problem = urls.check_prefix(entry)
        if problem:
            raise ValueError(f"RAYPOOL_PREFECT_API_ALLOWLIST entry {problem}")
    return entries


ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")


def _worker_env(raw: str) -> tuple[tuple[str, str], ...]:
    """RAYPOOL_PREFECT_WORKER_ENV: a JSON object of names to string values."""
    if not raw.strip():
        return ()
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"RAYPOOL_PREFECT_WORKER_ENV: not JSON ({exc})") from exc
    if not isinstance(parsed, dict):
        raise ValueError("RAYPOOL_PREFECT_WORKER_ENV: expected a JSON object, NAME: value")
    for name, value in parsed.items():
        if not ENV_NAME.match(name) or not isinstance(value, str):
            raise ValueError(
                f"RAYPOOL_PREFECT_WORKER_ENV entry {name!r}: expected an env var name "
                "and a string value (chart value prefectWorkerEnv)"
            )
    return tuple(sorted(parsed.items()))


@dataclass(frozen=True)
class Config:
    """What the operator reads from its environment (RAYPOOL_*)."""

    resync_seconds: float = 30.0  # drift repair and status refresh per pool
    # How often a pool suspended while idle (idle.py), or with autoscaled worker groups
    # that follow the queue (rayscaleup.py), asks Prefect for waiting flow runs: part of
    # the time a scheduled run waits for its pool to wake or for its Ray workers.
    queue_poll_seconds: float = 5.0
    kube_request_timeout: float = 30.0
    prefect_timeout: float = 10.0
    # Reconciles running at once (kopf's executor threads; RAYPOOL_WORKERS, the chart's
    # `workers`). They mostly wait on the API server and Prefect, so more threads than
    # cores start a burst of new pools sooner.
    reconcile_threads: int = 32
    # The API server ends each watch after this and kopf re-opens it: the clean end is
    # what a quiet but healthy stream hears at least (kopf_watches.py).
    watch_server_timeout: float = 60.0
    watch_client_timeout: float = 330.0  # and we give up on a watch request after this
    # kopf drops and re-opens a stream that heard nothing (no event, no BOOKMARK) for
    # this long: longer than the server timeout, or quiet streams would never end cleanly.
    watch_inactivity_timeout: float = 70.0
    # The liveness probe fails when an open watch stream has been silent this long
    # (three server timeouts).
    watch_stale_seconds: float = 180.0
    # For an operator outside the cluster (dev): rewrite the pool's in-cluster Prefect
    # URL prefix to one the operator can reach, e.g. "http://prefect.svc:4200=http://127.0.0.1:4200".
    prefect_url_map: list[tuple[str, str]] = field(default_factory=list)
    # The operator's own namespace (the chart sets it from the pod): pools' NetworkPolicies
    # admit the operator's pods there. None outside a cluster: no such rule.
    operator_namespace: str | None = None
    # KubeRay's operator's namespace (chart value kuberayNamespace): Ephemeral pools'
    # NetworkPolicies admit its pods to the dashboard, where it reads RayJob statuses.
    # None: no such rule (KubeRay outside the cluster, as in the test bed).
    kuberay_namespace: str | None = None
    # The `kuberay` worker's ClusterRole (the chart's `<release>-kuberay-worker`), which
    # Ephemeral pools' RoleBindings name: the one role the operator may bind.
    kuberay_worker_cluster_role: str = naming.KUBERAY_WORKER_CLUSTER_ROLE
    # The Prefect API URL prefixes pools may name (chart value prefectApiAllowlist);
    # empty: none, every pool is refused. The operator sends a pool's API key, and reads
    # its answers, only there.
    prefect_api_allowlist: tuple[str, ...] = ()
    # Whether a pool may take a Prefect work pool it did not create, one nobody claims
    # (chart value adoptExistingWorkPools). Off: a pool author cannot take over (and
    # reconfigure) a work pool someone made by hand by naming it.
    adopt_work_pools: bool = False
    # On pool deletion, tries to delete or release its work pool before letting go
    # (a Warning Event then): an unreachable Prefect must not keep a pool forever.
    work_pool_release_tries: int = 5
    work_pool_release_delay: float = 10.0
    # How long KubeRay may leave a RayCluster's new generation unobserved before the
    # pool says KubeRay is not reconciling (observe.kuberay_silent_for).
    kuberay_grace_seconds: float = 60.0
    # An owned object the watch shows as the operator last applied it is not applied
    # again (reconcile.in_sync) for up to this long; then it is, whatever it looks like.
    reapply_seconds: float = 300.0
    # Env every warm pool's Prefect worker gets (chart value prefectWorkerEnv), before
    # the pool's own spec.prefect.env; a name the pool or the operator sets keeps theirs.
    prefect_worker_env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_env(cls) -> Config:
        server_timeout = _float("RAYPOOL_WATCH_SERVER_TIMEOUT", 60.0)
        return cls(
            resync_seconds=_float("RAYPOOL_RESYNC_SECONDS", 30.0),
            queue_poll_seconds=_float("RAYPOOL_QUEUE_POLL_SECONDS", 5.0),
            kube_request_timeout=_float("RAYPOOL_KUBE_REQUEST_TIMEOUT", 30.0),
            prefect_timeout=_float("RAYPOOL_PREFECT_TIMEOUT", 10.0),
            reconcile_threads=int(os.environ.get("RAYPOOL_WORKERS", 32)),
            watch_server_timeout=server_timeout,
            watch_client_timeout=_float("RAYPOOL_WATCH_CLIENT_TIMEOUT", 330.0),
            watch_inactivity_timeout=_float(
                "RAYPOOL_WATCH_INACTIVITY_TIMEOUT", server_timeout + 10
            ),
            watch_stale_seconds=_float("RAYPOOL_WATCH_STALE_SECONDS", 3 * server_timeout),
            prefect_url_map=_url_map(os.environ.get("RAYPOOL_PREFECT_URL_MAP", "")),
            operator_namespace=os.environ.get("RAYPOOL_OPERATOR_NAMESPACE") or None,
            kuberay_namespace=os.environ.get("RAYPOOL_KUBERAY_NAMESPACE") or None,
            kuberay_worker_cluster_role=os.environ.get("RAYPOOL_KUBERAY_WORKER_CLUSTER_ROLE")
            or naming.KUBERAY_WORKER_CLUSTER_ROLE,
            prefect_api_allowlist=_allowlist(os.environ.get("RAYPOOL_PREFECT_API_ALLOWLIST", "")),
            adopt_work_pools=_bool("RAYPOOL_ADOPT_WORK_POOLS"),
            work_pool_release_tries=int(os.environ.get("RAYPOOL_WORK_POOL_RELEASE_TRIES", 5)),
            work_pool_release_delay=_float("RAYPOOL_WORK_POOL_RELEASE_DELAY", 10.0),
            kuberay_grace_seconds=_float("RAYPOOL_KUBERAY_GRACE_SECONDS", 60.0),
            reapply_seconds=_float("RAYPOOL_REAPPLY_SECONDS", 300.0),
            prefect_worker_env=_worker_env(os.environ.get("RAYPOOL_PREFECT_WORKER_ENV", "")),
        )

    def warnings(self) -> list[str]:
        """What the platform engineer should hear at start: settings that refuse every
        pool."""
        if self.prefect_api_allowlist:
            return []
        return [
            "RAYPOOL_PREFECT_API_ALLOWLIST is empty: every pool is refused "
            "(PrefectAPIURLNotAllowed); list the Prefect API URLs pools may name (chart "
            "value prefectApiAllowlist)"
        ]

    def prefect_api_allowed(self, url: str) -> bool:
        """Whether a pool's spec.prefect.apiUrl is on the allow-list (before the URL map:
        the map is the operator's own route to an allowed API)."""
        return urls.allowed(url, self.prefect_api_allowlist)

    def operator_prefect_url(self, url: str) -> str:
        for source, target in self.prefect_url_map:
            if url.startswith(source):
                return target + url[len(source) :]
        return url


CONFIG = Config.from_env()


def configure_kopf(settings: kopf.OperatorSettings, config: Config = CONFIG) -> None:
    """kopf settings for real clusters: our own prefixes, timeouts and backoff."""
    settings.persistence.finalizer = naming.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=naming.ANNOTATION_PREFIX
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=naming.ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    settings.watching.server_timeout = int(config.watch_server_timeout)
    settings.watching.client_timeout = int(config.watch_client_timeout)
    settings.watching.connect_timeout = 10
    settings.watching.inactivity_timeout = config.watch_inactivity_timeout
    # The API server filters the owned kinds' lists and watches by our label: a
    # cluster's other Deployments, ServiceAccounts, RayClusters... are never sent to
    # (or held in memory by) the operator. Not the pools: every one is ours.
    # The same for pods: the pools' pods, for their status, without a list per resync.
    for resource in [*(owned.kind.resource for owned in OWNED_KINDS), kinds.POD.resource]:
        settings.watching.label_selectors[resource] = MANAGED_SELECTOR
    settings.networking.request_timeout = config.kube_request_timeout
    settings.networking.connect_timeout = 10
    settings.networking.error_backoffs = (1, 2, 5, 10, 20, 30)
    settings.batching.error_delays = (1, 2, 5, 10, 20, 30, 60)
    # Our handlers post their own Events (kopf.event); kopf's per-handler INFO lines
    # ("Handler ... succeeded") would add two API writes per pool per change.
    settings.posting.level = logging.WARNING
    settings.execution.max_workers = config.reconcile_threads
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per Prefect call otherwise
