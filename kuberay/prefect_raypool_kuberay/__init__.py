"""The `kuberay` Prefect worker: each flow run on its own KubeRay RayJob (Ephemeral pools).

Nothing is imported here: the operator, which has no Prefect, imports `contract` and
`job_template`; Prefect imports `worker` through the `prefect.collections` entry point,
which registers the worker type.
"""
