"""A job configuration from the default template, as `from_template_and_values` makes it."""

from __future__ import annotations

from typing import Any

from prefect.utilities.templating import apply_values

from prefect_raypool_kuberay.worker import KubeRayJobConfiguration, KubeRayWorker


def configuration(**values: Any) -> KubeRayJobConfiguration:
    """The default template's variables' defaults plus `values`, without a server."""
    template = KubeRayWorker.get_default_base_job_template()
    props = template["variables"]["properties"]
    merged = {k: v["default"] for k, v in props.items() if v.get("default") is not None}
    merged.update(values)
    return KubeRayJobConfiguration(**apply_values(template["job_configuration"], merged))
