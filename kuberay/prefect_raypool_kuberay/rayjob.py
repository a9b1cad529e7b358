"""Pure: a flow run's job configuration to its KubeRay RayJob manifest."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

from prefect_raypool_kuberay.contract import FLOW_RUN_ID_LABEL, label_value

Obj = dict[str, Any]

#: KubeRay refuses longer RayJob names (its RayCluster gets a 6-character suffix).
MAX_NAME = 47
API_KEY_ENV = "PREFECT_API_KEY"
#: Prefect's secret settings: in the RayJob only ever as a secretKeyRef. A literal (the
#: worker's own settings, which Prefect copies into every flow run's env) is dropped.
SECRET_SETTINGS = frozenset({API_KEY_ENV, "PREFECT_API_AUTH_STRING"})
#: Ray's auth settings: the cluster's (rayClusterSpec.authOptions), never a flow run's env.
RAY_AUTH_ENV = frozenset({"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"})
TOKEN = "token"
#: Labels under Prefect's prefix are the worker's (its own and those Prefect's workers
#: set): a user's label there is dropped, so no RayJob can pose as another flow run's.
RESERVED_LABEL_PREFIX = "prefect.io/"


def user_labels(labels: Mapping[str, Any]) -> dict[str, Any]:
    """The user's labels (the `labels` variable) the worker keeps."""
    return {k: v for k, v in labels.items() if not k.startswith(RESERVED_LABEL_PREFIX)}


class ManifestError(ValueError):
    """The RayJob manifest (the pool's template after the job variables) is unusable."""


def rayjob_name(base: str, suffix: str) -> str:
    """A DNS-1035 label of at most 47 characters: `<base slug>-<suffix>`."""
    slug = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")
    slug = re.sub(r"^[^a-z]+", "", slug)[: MAX_NAME - len(suffix) - 1].rstrip("-")
    return f"{slug or 'flow-run'}-{suffix}"


def _env_list(env: dict[str, str | None], refs: Mapping[str, tuple[str, str]]) -> list[Obj]:
    """Plain values, except what the pool gives by reference: the API key always (when
    it has one), another setting where `env` holds its literal (the worker's own value,
    read from the Secret); a secret setting without a reference is dropped."""
    plain = {
        k: v for k, v in env.items() if v is not None and k not in SECRET_SETTINGS and k not in refs
    }
    out: list[Obj] = [{"name": k, "value": v} for k, v in sorted(plain.items())]
    for k, (secret, key) in sorted(refs.items()):
        if k == API_KEY_ENV or k in env:
            out.append({"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
    return [e for e in out if e["name"] not in RAY_AUTH_ENV]


def _env_of(container: Obj) -> list[Obj]:
    """A container's own env list; the unfilled `{{ env }}` placeholder counts as none."""
    env = container.get("env")
    return [e for e in env if isinstance(e, dict)] if isinstance(env, list) else []


def _ray_containers(cluster_spec: Obj) -> list[Obj]:
    head = cluster_spec.get("headGroupSpec", {}).get("template", {}).get("spec", {})
    pods = [head] + [
        g.get("template", {}).get("spec", {}) for g in cluster_spec.get("workerGroupSpecs", [])
    ]
    # The Ray container is container 0 of every pod (KubeRay's rule).
    return [p["containers"][0] for p in pods if p.get("containers")]


def build_rayjob(
    *,
    manifest: Obj,
    name: str,
    namespace: str,
    command: str,
    env: dict[str, str | None],
    labels: dict[str, str],
    api_key_secret: tuple[str, str] | None,
    secret_env: Mapping[str, tuple[str, str]] | None = None,
    pod_labels: Mapping[str, str] | None = None,
    ray_auth_mode: str | None = None,
) -> Obj:
    """The RayJob to create: the templated manifest plus what ties it to the flow run.

    `env` goes onto every Ray container, so the driver (on the head) and the task
    runner's Ray workers all reach the Prefect API; the key, and every name in
    `secret_env` (env name to Secret and key, the pool's), only as a secretKeyRef.
    `ray_auth_mode` (the pool's) replaces the template's rayClusterSpec.authOptions.
    """
    job = copy.deepcopy(manifest)
    if job.get("kind") != "RayJob" or not str(job.get("apiVersion", "")).startswith("ray.io/"):
        raise ManifestError(
            "job_configuration.rayjob_manifest must be a ray.io/v1 RayJob; "
            f"got apiVersion={job.get('apiVersion')!r} kind={job.get('kind')!r}"
        )
    spec = job.setdefault("spec", {})
    cluster = spec.get("rayClusterSpec")
    if not isinstance(cluster, dict) or spec.get("clusterSelector"):
        raise ManifestError(
            "job_configuration.rayjob_manifest.spec.rayClusterSpec is required (and "
            "clusterSelector is not allowed): each flow run gets its own Ray cluster"
        )
    containers = _ray_containers(cluster)
    if not containers:
        raise ManifestError(
            "job_configuration.rayjob_manifest.spec.rayClusterSpec.headGroupSpec.template"
            ".spec.containers is empty: the Ray head container must be container 0"
        )
    for c in containers:
        for e in _env_of(c):
            if e.get("name") in SECRET_SETTINGS and "valueFrom" not in e:
                raise ManifestError(
                    f"{e['name']} in the RayJob manifest's env as a literal: give the pool "
                    "a Secret reference instead (spec.prefect.apiKey, spec.prefect.env; "
                    "api_key_secret_name for a work pool made by hand)"
                )

    meta = job.setdefault("metadata", {})
    meta.pop("generateName", None)
    meta["name"] = name
    meta["namespace"] = namespace
    # The template's labels (the user's `labels` variable) may still be the unfilled
    # `{{ labels }}` placeholder; `labels`, the worker's, win.
    own = user_labels(meta["labels"]) if isinstance(meta.get("labels"), dict) else {}
    meta["labels"] = {k: label_value(str(v)) for k, v in {**own, **labels}.items()}

    spec["entrypoint"] = command
    # The submitter reaches the head's dashboard through its Service: keep it listening
    # beyond loopback whatever the template's head rayStartParams say.
    head_params = cluster.setdefault("headGroupSpec", {}).setdefault("rayStartParams", {})
    if isinstance(head_params, dict):
        head_params.setdefault("dashboard-host", "0.0.0.0")
    if not spec.get("submissionMode"):
        spec["submissionMode"] = "K8sJobMode"
    refs = dict(secret_env or {})
    if api_key_secret:
        refs[API_KEY_ENV] = api_key_secret
    if ray_auth_mode is not None:
        cluster["authOptions"] = {"mode": ray_auth_mode}
    # With a token, KubeRay puts RAY_AUTH_MODE and the cluster's own token on every Ray
    # container and the submitter. Without one, RAY_AUTH_MODE=disabled is said outright:
    # a token file in the image would turn auth on.
    token = (cluster.get("authOptions") or {}).get("mode") == TOKEN
    ray_auth = [] if token else [{"name": "RAY_AUTH_MODE", "value": "disabled"}]
    env_list = _env_list(env, refs) + ray_auth
    submitter = spec.get("submitterPodTemplate")
    for c, add in [(c, env_list) for c in containers] + [
        (c, ray_auth) for c in _submitter_containers(submitter)
    ]:
        names = {e["name"] for e in add} | RAY_AUTH_ENV
        c["env"] = [e for e in _env_of(c) if e.get("name") not in names] + add
    # Pod labels tie every pod to the flow run as well (`kubectl get pods -l ...`), and
    # to the pool (its NetworkPolicy selects them).
    labels_of_pods = {
        **(pod_labels or {}),
        FLOW_RUN_ID_LABEL: meta["labels"].get(FLOW_RUN_ID_LABEL, ""),
    }
    groups = [cluster.get("headGroupSpec", {}), *cluster.get("workerGroupSpecs", [])]
    templates = [g.setdefault("template", {}) for g in groups]
    if isinstance(submitter, dict):
        templates.append(submitter)
    for template in templates:
        tmeta = template.setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), **labels_of_pods}
    return job


def _submitter_containers(template: Any) -> list[Obj]:
    pod = template.get("spec") if isinstance(template, dict) else None
    containers = pod.get("containers") if isinstance(pod, dict) else None
    return [c for c in containers or [] if isinstance(c, dict)]


def auth_dropped(sent: Obj, stored: Any) -> bool:
    """Whether the API server stored the RayJob without the token auth that was sent
    (its CRD, from a KubeRay before v1.5.1, has no authOptions)."""

    def mode(job: Any) -> Any:
        spec = job.get("spec") if isinstance(job, dict) else None
        cluster = spec.get("rayClusterSpec") if isinstance(spec, dict) else None
        return (cluster.get("authOptions") or {}).get("mode") if isinstance(cluster, dict) else None

    return mode(sent) == TOKEN and mode(stored) != TOKEN
