"""The `kuberay` worker's default base job template, as data.

The operator never imports Prefect, so it cannot ask the worker class for its template;
this module holds a copy, regenerated with
`python -m prefect_raypool_operator.kuberay_template --write` (needs Prefect) and
checked against the worker's own by tests/operator/test_ephemeral_builder.py.
"""

from __future__ import annotations

import pprint
import sys
from pathlib import Path
from typing import Any

DEFAULT_BASE_JOB_TEMPLATE: dict[str, Any] = {
    "job_configuration": {
        "api_key_secret_key": "{{ api_key_secret_key }}",
        "api_key_secret_name": "{{ api_key_secret_name }}",
        "command": "{{ command }}",
        "env": "{{ env }}",
        "labels": "{{ labels }}",
        "name": "{{ name }}",
        "namespace": "{{ namespace }}",
        "rayjob_manifest": {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"labels": "{{ labels }}", "namespace": "{{ namespace }}"},
            "spec": {
                "activeDeadlineSeconds": "{{ active_deadline_seconds }}",
                "backoffLimit": 0,
                "entrypoint": "{{ command }}",
                "rayClusterSpec": {
                    "headGroupSpec": {
                        "rayStartParams": {"dashboard-host": "0.0.0.0"},
                        "template": {
                            "spec": {
                                "containers": [
                                    {
                                        "env": [{"name": "RAY_AUTH_MODE", "value": "disabled"}],
                                        "image": "{{ image }}",
                                        "imagePullPolicy": "{{ image_pull_policy }}",
                                        "name": "ray-head",
                                        "resources": {
                                            "limits": {
                                                "cpu": "{{ head_cpu }}",
                                                "memory": "{{ head_memory }}",
                                            },
                                            "requests": {
                                                "cpu": "{{ head_cpu }}",
                                                "memory": "{{ head_memory }}",
                                            },
                                        },
                                        "securityContext": {
                                            "allowPrivilegeEscalation": False,
                                            "capabilities": {"drop": ["ALL"]},
                                            "runAsNonRoot": True,
                                            "seccompProfile": {"type": "RuntimeDefault"},
                                        },
                                        "terminationMessagePolicy": "FallbackToLogsOnError",
                                        "volumeMounts": [{"mountPath": "/dev/shm", "name": "dshm"}],
                                    }
                                ],
                                "securityContext": {
                                    "fsGroup": 100,
                                    "runAsGroup": 100,
                                    "runAsNonRoot": True,
                                    "runAsUser": 1000,
                                    "seccompProfile": {"type": "RuntimeDefault"},
                                },
                                "serviceAccountName": "{{ service_account_name }}",
                                "volumes": [{"emptyDir": {"medium": "Memory"}, "name": "dshm"}],
                            }
                        },
                    },
                    "rayVersion": "{{ ray_version }}",
                    "workerGroupSpecs": [
                        {
                            "groupName": "workers",
                            "maxReplicas": "{{ worker_replicas }}",
                            "minReplicas": "{{ worker_replicas }}",
                            "rayStartParams": {},
                            "replicas": "{{ worker_replicas }}",
                            "template": {
                                "spec": {
                                    "containers": [
                                        {
                                            "env": [{"name": "RAY_AUTH_MODE", "value": "disabled"}],
                                            "image": "{{ image }}",
                                            "imagePullPolicy": "{{ image_pull_policy }}",
                                            "name": "ray-worker",
                                            "resources": {
                                                "limits": {
                                                    "cpu": "{{ worker_cpu }}",
                                                    "memory": "{{ worker_memory }}",
                                                },
                                                "requests": {
                                                    "cpu": "{{ worker_cpu }}",
                                                    "memory": "{{ worker_memory }}",
                                                },
                                            },
                                            "securityContext": {
                                                "allowPrivilegeEscalation": False,
                                                "capabilities": {"drop": ["ALL"]},
                                                "runAsNonRoot": True,
                                                "seccompProfile": {"type": "RuntimeDefault"},
                                            },
                                            "terminationMessagePolicy": "FallbackToLogsOnError",
                                            "volumeMounts": [
                                                {"mountPath": "/dev/shm", "name": "dshm"}
                                            ],
                                        }
                                    ],
                                    "securityContext": {
                                        "fsGroup": 100,
                                        "runAsGroup": 100,
                                        "runAsNonRoot": True,
                                        "runAsUser": 1000,
                                        "seccompProfile": {"type": "RuntimeDefault"},
                                    },
                                    "serviceAccountName": "{{ service_account_name }}",
                                    "volumes": [{"emptyDir": {"medium": "Memory"}, "name": "dshm"}],
                                }
                            },
                        }
                    ],
                },
                "shutdownAfterJobFinishes": True,
                "submissionMode": "K8sJobMode",
                "submitterConfig": {"backoffLimit": 0},
                "ttlSecondsAfterFinished": "{{ ttl_seconds_after_finished }}",
            },
        },
        "watch_interval_seconds": "{{ watch_interval_seconds }}",
    },
    "variables": {
        "description": "The variables users set on the work pool or per deployment "
        "(`job_variables`).",
        "properties": {
            "active_deadline_seconds": {
                "anyOf": [{"exclusiveMinimum": 0, "type": "integer"}, {"type": "null"}],
                "default": None,
                "description": "KubeRay fails the RayJob (and the flow run crashes) past this.",
                "title": "Active Deadline Seconds",
            },
            "api_key_secret_key": {
                "default": "key",
                "description": "The key in that Secret.",
                "title": "Api Key Secret Key",
                "type": "string",
            },
            "api_key_secret_name": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "default": None,
                "description": "Secret holding the "
                "Prefect API key, "
                "handed to the pods "
                "as a secretKeyRef; "
                "the key itself never "
                "appears in the "
                "RayJob.",
                "title": "Api Key Secret Name",
            },
            "command": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "default": None,
                "description": "The command to use when starting "
                "a flow run. In most cases, this "
                "should be left blank and the "
                "command will be automatically "
                "generated by the worker.",
                "title": "Command",
            },
            "env": {
                "additionalProperties": {"anyOf": [{"type": "string"}, {"type": "null"}]},
                "description": "Environment variables to set when starting a flow run.",
                "title": "Environment Variables",
                "type": "object",
            },
            "head_cpu": {
                "default": "1",
                "description": "CPU of the head (the driver runs there).",
                "title": "Head Cpu",
                "type": "string",
            },
            "head_memory": {
                "default": "2Gi",
                "description": "Memory of the head.",
                "title": "Head Memory",
                "type": "string",
            },
            "image": {
                "default": "prefect-raypool-ray:0.1.0",
                "description": "The image of every Ray pod; the flow's code must be in it.",
                "examples": ["registry.example/flows:1.0"],
                "title": "Image",
                "type": "string",
            },
            "image_pull_policy": {
                "default": "IfNotPresent",
                "description": "The pods' imagePullPolicy.",
                "enum": ["IfNotPresent", "Always", "Never"],
                "title": "Image Pull Policy",
                "type": "string",
            },
            "labels": {
                "additionalProperties": {"type": "string"},
                "description": "Labels applied to infrastructure created by a worker.",
                "title": "Labels",
                "type": "object",
            },
            "name": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "default": None,
                "description": "Name given to infrastructure created by a worker.",
                "title": "Name",
            },
            "namespace": {
                "default": "default",
                "description": "Where the RayJob is created.",
                "title": "Namespace",
                "type": "string",
            },
            "ray_version": {
                "default": "2.60.0",
                "description": "Ray in the image.",
                "title": "Ray Version",
                "type": "string",
            },
            "service_account_name": {
                "anyOf": [{"type": "string"}, {"type": "null"}],
                "default": None,
                "description": "The service account of the Ray pods.",
                "title": "Service Account Name",
            },
            "ttl_seconds_after_finished": {
                "default": 60,
                "description": "Seconds the finished cluster is kept before KubeRay deletes it.",
                "minimum": 0,
                "title": "Ttl Seconds After Finished",
                "type": "integer",
            },
            "watch_interval_seconds": {
                "default": 5.0,
                "description": "How often the worker checks the RayJob and its pods.",
                "exclusiveMinimum": 0,
                "title": "Watch Interval Seconds",
                "type": "number",
            },
            "worker_cpu": {
                "default": "1",
                "description": "CPU of each Ray worker pod.",
                "title": "Worker Cpu",
                "type": "string",
            },
            "worker_memory": {
                "default": "2Gi",
                "description": "Memory of each Ray worker pod.",
                "title": "Worker Memory",
                "type": "string",
            },
            "worker_replicas": {
                "default": 1,
                "description": "Ray worker pods.",
                "minimum": 0,
                "title": "Worker Replicas",
                "type": "integer",
            },
        },
        "type": "object",
    },
}


def generate() -> dict[str, Any]:
    from prefect_raypool.kuberay.job_template import base_job_template

    return base_job_template()


if __name__ == "__main__":
    if "--write" in sys.argv:
        path = Path(__file__)
        text = path.read_text()
        head, _, rest = text.partition("DEFAULT_BASE_JOB_TEMPLATE: dict[str, Any] = ")
        _, _, tail = rest.partition("\n\n\ndef generate")
        body = pprint.pformat(generate(), width=92, sort_dicts=True)
        path.write_text(
            f"{head}DEFAULT_BASE_JOB_TEMPLATE: dict[str, Any] = {body}\n\n\ndef generate{tail}"
        )
