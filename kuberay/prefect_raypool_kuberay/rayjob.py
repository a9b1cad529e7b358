"""Pure: a flow run's job configuration to its KubeRay RayJob manifest."""

from __future__ import annotations

import copy
import re
from typing import Any

from prefect_raypool_kuberay.contract import FLOW_RUN_ID_LABEL, label_value

Obj = dict[str, Any]

#: KubeRay refuses longer RayJob names (its RayCluster gets a 6-character suffix).
MAX_NAME = 47
API_KEY_ENV = "PREFECT_API_KEY"


class ManifestError(ValueError):
    """The RayJob manifest (the pool's template after the job variables) is unusable."""


def rayjob_name(base: str, suffix: str) -> str:
    """A DNS-1035 label of at most 47 characters: `<base slug>-<suffix>`."""
    slug = re.sub(r"[^a-z0-9-]+", "-", base.lower()).strip("-")
    slug = re.sub(r"^[^a-z]+", "", slug)[: MAX_NAME - len(suffix) - 1].rstrip("-")
    return f"{slug or 'flow-run'}-{suffix}"


def _env_list(env: dict[str, str | None], api_key_ref: Obj | None) -> list[Obj]:
    # The key is only ever a reference: a literal one (e.g. the worker's own settings)
    # is dropped rather than written into the RayJob.
    plain = {k: v for k, v in env.items() if v is not None and k != API_KEY_ENV}
    out: list[Obj] = [{"name": k, "value": v} for k, v in sorted(plain.items())]
    if api_key_ref is not None:
        out.append({"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": api_key_ref}})
    return out


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
) -> Obj:
    """The RayJob to create: the templated manifest plus what ties it to the flow run.

    `env` goes onto every Ray container, so the driver (on the head) and the task
    runner's Ray workers all reach the Prefect API; the key only as a secretKeyRef.
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
        if API_KEY_ENV in {e.get("name") for e in _env_of(c)}:
            raise ManifestError(
                f"{API_KEY_ENV} in the RayJob manifest's env: set the job variable "
                "api_key_secret_name (a Secret reference) instead"
            )

    meta = job.setdefault("metadata", {})
    meta.pop("generateName", None)
    meta["name"] = name
    meta["namespace"] = namespace
    # The template's labels may still be the unfilled `{{ labels }}` placeholder.
    own = meta.get("labels") if isinstance(meta.get("labels"), dict) else {}
    meta["labels"] = {k: label_value(str(v)) for k, v in {**own, **labels}.items()}

    spec["entrypoint"] = command
    # The submitter reaches the head's dashboard through its Service: keep it listening
    # beyond loopback whatever the template's head rayStartParams say.
    head_params = cluster.setdefault("headGroupSpec", {}).setdefault("rayStartParams", {})
    if isinstance(head_params, dict):
        head_params.setdefault("dashboard-host", "0.0.0.0")
    if not spec.get("submissionMode"):
        spec["submissionMode"] = "K8sJobMode"
    ref = {"name": api_key_secret[0], "key": api_key_secret[1]} if api_key_secret else None
    env_list = _env_list(env, ref)
    for c in containers:
        names = {e["name"] for e in env_list}
        c["env"] = [e for e in _env_of(c) if e.get("name") not in names] + env_list
    # Pod labels tie every pod to the flow run as well (`kubectl get pods -l ...`).
    pod_labels = {FLOW_RUN_ID_LABEL: meta["labels"].get(FLOW_RUN_ID_LABEL, "")}
    for group in [cluster.get("headGroupSpec", {}), *cluster.get("workerGroupSpecs", [])]:
        tmeta = group.setdefault("template", {}).setdefault("metadata", {})
        tmeta["labels"] = {**(tmeta.get("labels") or {}), **pod_labels}
    return job
