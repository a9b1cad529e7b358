"""`raypool submit FLOW_FILE:FLOW`: run a flow as a Ray Job on a pool's Ray cluster.

The driver runs in the cluster (docs/runner.md, "Ray Jobs"), so the job's runtime_env
applies to it as well as to its tasks, and its RayTaskRunner attaches with no
address. Building the job (address, runtime_env, entrypoint) is pure; `submit_cli`
does the I/O through Ray's JobSubmissionClient: submit, stream the driver's logs,
wait for the final status. Exit 0 only when the job SUCCEEDED.
Its options are declared in cli.py, which parses them before importing this module.

A job's runtime_env is no place for a secret: every job on the cluster and whoever
reaches its dashboard can read it (`ray job list`). So the job carries the submitter's
Prefect API URL and never its API key or auth string; the driver authenticates with
what the cluster's own pods hold (docs/runner.md). And a working directory is uploaded
to the cluster, so a home directory (keys, cloud credentials, profiles) never is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlparse

DRIVER_MODULE = "prefect_raypool.submitted"
#: Seconds between status lines while polling a job whose logs cannot be streamed.
POLL_INTERVAL = 5.0


class SubmitError(Exception):
    """The command line or its environment is wrong; the message says how to fix it."""


@dataclass(frozen=True)
class FlowTarget:
    file: str  # as given
    flow: str


@dataclass(frozen=True)
class JobPlan:
    """What is submitted: everything Ray's submit_job takes, and nothing secret to print."""

    address: str
    entrypoint: str
    runtime_env: dict[str, Any]
    submission_id: str
    metadata: dict[str, str]


def parse_target(text: str) -> FlowTarget:
    path, sep, flow = text.rpartition(":")
    if not sep or not path or not flow.isidentifier():
        raise SubmitError(
            f"expected FLOW_FILE:FLOW (a Python file and the name of the flow function in it), "
            f"got {text!r}; e.g. `raypool submit examples/count_to.py:count_to`"
        )
    if not path.endswith(".py"):
        raise SubmitError(f"FLOW_FILE must be a Python file (.py), got {path!r}")
    return FlowTarget(path, flow)


def _pairs(items: list[str], option: str) -> list[tuple[str, str]]:
    pairs = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SubmitError(f"{option} expects KEY=VALUE, got {item!r}")
        pairs.append((key, value))
    return pairs


def parse_params(items: list[str]) -> dict[str, Any]:
    """`--param k=v`: v is JSON (`n=3`, `xs=[1,2]`, `name="x"`), else the plain string."""
    params: dict[str, Any] = {}
    for key, value in _pairs(items, "--param"):
        if not key.isidentifier():
            raise SubmitError(f"--param {key!r}: a flow parameter name must be an identifier")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


#: Prefect's credentials: never sent in a job's runtime_env, which every job reads.
SECRET_SETTINGS = ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")


def _refuse_credentials(names: Iterable[str], option: str) -> None:
    for name in names:
        if name.upper() in SECRET_SETTINGS:
            raise SubmitError(
                f"{option} {name}: a Ray job's runtime_env is readable by every job on the "
                "cluster and from its dashboard, so raypool submit sends no Prefect "
                "credential: the driver reaches Prefect as the Ray head does (a server "
                "the cluster reaches without a key). Drop the variable; for a Prefect "
                "API that needs a key, deploy the flow to the pool's work pool instead "
                "(`prefect deployment run`), whose worker holds the pool's key"
            )


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for key, value in _pairs(items, "--env"):
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise SubmitError(f"--env {key!r}: not a valid environment variable name")
        env[key] = value
    _refuse_credentials(env, "--env")
    return env


def resolve_address(
    address: str | None, pool: str | None, namespace: str | None, environ: Mapping[str, str]
) -> str:
    """The job server URL: --address, else the pool's head service, else RAY_ADDRESS."""
    from prefect_raypool_operator import naming  # lazily: it loads the spec models

    if address and pool:
        raise SubmitError("give --address or --pool, not both")
    if pool:
        return naming.dashboard_url(pool, namespace or "default")
    url = address or environ.get("RAY_ADDRESS", "").strip()
    origin = "--address" if address else "RAY_ADDRESS"
    if not url:
        raise SubmitError(
            "no Ray job server given: pass --address http://<head>:8265, --pool NAME "
            "[--namespace NS] (in the cluster), or set RAY_ADDRESS; from a laptop run "
            "`kubectl port-forward svc/<pool>-head-svc 8265:8265` and use "
            "--address http://127.0.0.1:8265"
        )
    if not url.startswith(("http://", "https://")):
        raise SubmitError(
            f"{origin}={url!r} is not a Ray job server URL: jobs go to the head's dashboard "
            f"port, e.g. http://<head>:{naming.DASHBOARD_PORT} (not the GCS port "
            f"{naming.GCS_PORT} nor ray://)"
        )
    return url.rstrip("/")


def _is_local_path(working_dir: str) -> bool:
    return "://" not in working_dir


def _refuse_home(directory: Path, chosen: str | None, home: Path | None) -> None:
    """A working directory is uploaded whole, for every job on the cluster to read: not
    the file system's root, a home directory, nor a directory that holds one."""
    too_wide = directory == Path(directory.anchor) or (
        home is not None and home.is_relative_to(directory)
    )
    if too_wide:
        given = f"--working-dir {chosen}" if chosen else f"the flow file's directory {directory}"
        raise SubmitError(
            f"{given} would upload {directory} (your home directory or a directory above "
            "it, with its keys, cloud credentials and Prefect profiles) to the cluster, "
            "where every job can read it. Put the flow in a project directory, or pass "
            "--working-dir DIR naming a directory that holds only the flow's code"
        )


def build_runtime_env(
    target: FlowTarget,
    base: dict[str, Any],
    working_dir: str | None,
    env: dict[str, str],
    prefect_env: dict[str, str],
    home: Path | None = None,
) -> tuple[dict[str, Any], str]:
    """The job's runtime_env and the flow file's path inside its working directory.

    Precedence: --working-dir over the runtime_env's working_dir over the flow
    file's directory (uploaded); --env over the runtime_env's env_vars over the
    submitter's Prefect settings (`prefect_env`). `home` (the submitter's) and every
    directory above it are never uploaded.
    """
    runtime_env = dict(base)
    _refuse_credentials(dict(runtime_env.get("env_vars") or {}), "--runtime-env-json env_vars")
    chosen = working_dir or runtime_env.get("working_dir")
    if chosen and not _is_local_path(str(chosen)):
        # A package already uploaded (s3://, gs://, https://...zip): the file is a
        # path inside it, as given.
        runtime_env["working_dir"] = chosen
        entry_file = target.file
    else:
        flow_file = Path(target.file).resolve()
        if not flow_file.is_file():
            raise SubmitError(f"no such flow file: {target.file}")
        directory = Path(chosen).resolve() if chosen else flow_file.parent
        if not directory.is_dir():
            raise SubmitError(f"--working-dir {chosen}: not a directory")
        if not flow_file.is_relative_to(directory):
            raise SubmitError(
                f"the flow file {target.file} is outside the working directory {chosen}: "
                "the working directory is what gets uploaded, so it must contain the file"
            )
        _refuse_home(directory, str(chosen) if chosen else None, home)
        runtime_env["working_dir"] = str(directory)
        entry_file = flow_file.relative_to(directory).as_posix()
    env_vars = {**prefect_env, **dict(runtime_env.get("env_vars") or {}), **env}
    if env_vars:
        runtime_env["env_vars"] = env_vars
    return runtime_env, entry_file


def build_entrypoint(entry_file: str, flow: str, params: dict[str, Any]) -> str:
    argv = ["python", "-m", DRIVER_MODULE, entry_file, flow, json.dumps(params)]
    return shlex.join(argv)


def submission_id(flow: str) -> str:
    """`raypool-<flow>-<random>`: a job that names its flow in `ray job list`."""
    slug = re.sub(r"[^a-z0-9]+", "-", flow.lower()).strip("-")[:40] or "flow"
    return f"raypool-{slug}-{uuid.uuid4().hex[:8]}"


def plan_job(
    args: argparse.Namespace, environ: Mapping[str, str], prefect_env: dict[str, str]
) -> JobPlan:
    target = parse_target(args.target)
    try:
        base = json.loads(args.runtime_env_json) if args.runtime_env_json else {}
    except json.JSONDecodeError as e:
        raise SubmitError(f"--runtime-env-json is not valid JSON: {e}") from None
    if not isinstance(base, dict):
        raise SubmitError('--runtime-env-json must be a JSON object, e.g. \'{"pip": ["pandas"]}\'')
    runtime_env, entry_file = build_runtime_env(
        target, base, args.working_dir, parse_env(args.env), prefect_env, _home(environ)
    )
    if "PREFECT_API_URL" not in runtime_env.get("env_vars", {}):
        raise SubmitError(
            "PREFECT_API_URL is not set: the driver records its flow run in the Prefect API "
            "it names. Set it (or a Prefect profile) here, or pass --env PREFECT_API_URL=..."
        )
    return JobPlan(
        address=resolve_address(args.address, args.pool, args.namespace, environ),
        entrypoint=build_entrypoint(entry_file, target.flow, parse_params(args.param)),
        runtime_env=runtime_env,
        submission_id=submission_id(target.flow),
        metadata={"raypool.flow": f"{entry_file}:{target.flow}"},
    )


def _home(environ: Mapping[str, str]) -> Path | None:
    home = environ.get("HOME") or str(Path.home())
    return Path(home).resolve() if home else None


def prefect_env_of_submitter(settings: Any = None) -> dict[str, str]:
    """The submitter's Prefect API URL (profiles included), for the driver; never its
    API key or auth string, which the job's runtime_env would show every job.
    `settings`: Prefect's Settings, the current ones by default."""
    from prefect.settings import get_current_settings

    api = (settings or get_current_settings()).api
    return {"PREFECT_API_URL": api.url} if api.url else {}


def ray_token(environ: Mapping[str, str]) -> str | None:
    """The Ray auth token, found where Ray itself looks: RAY_AUTH_TOKEN, then its file."""
    if environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    if environ.get("RAY_AUTH_TOKEN", "").strip():
        return environ["RAY_AUTH_TOKEN"].strip()
    path = environ.get("RAY_AUTH_TOKEN_PATH") or (
        str(Path.home() / ".ray" / "auth_token") if environ.get("RAY_AUTH_MODE") == "token" else ""
    )
    if path and Path(path).is_file():
        return Path(path).read_text().strip() or None
    return None


def auth_headers(environ: Mapping[str, str]) -> dict[str, str]:
    token = ray_token(environ)
    return {"Authorization": f"Bearer {token}"} if token else {}


def loopback_warning(plan: JobPlan) -> str | None:
    """A Prefect API on this machine's loopback is unreachable from a remote driver."""
    api_host = urlparse(plan.runtime_env["env_vars"]["PREFECT_API_URL"]).hostname or ""
    ray_host = urlparse(plan.address).hostname or ""
    loopback = ("localhost", "127.0.0.1", "::1")
    if api_host in loopback and ray_host not in loopback:
        return (
            f"note: PREFECT_API_URL points at {api_host}, which the driver on the cluster "
            "cannot reach; pass --env PREFECT_API_URL=<an address the cluster reaches>"
        )
    return None


_USERINFO = re.compile(r"(?<=://)[^/@\s\"]+@")


def describe(plan: JobPlan) -> str:
    """What is submitted, without the values of environment variables (they may be
    secret) nor the user:password of a URL (a pip index, a package URI)."""
    env_names = sorted(plan.runtime_env.get("env_vars", {}))
    shown = {k: v for k, v in plan.runtime_env.items() if k != "env_vars"}
    shown = json.loads(_USERINFO.sub("***@", json.dumps(shown)))
    return (
        f"submitting {plan.submission_id} to {plan.address}\n"
        f"  entrypoint: {plan.entrypoint}\n"
        f"  runtime_env: {json.dumps(shown)} env_vars: {', '.join(env_names) or '(none)'}"
    )


def follow(client: Any, job_id: str, out: TextIO) -> Any:
    """Stream the driver's logs until the job ends; return its final JobStatus."""
    import asyncio

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            out.write(lines)
            out.flush()

    try:
        asyncio.run(tail())
    except Exception as e:  # the log stream failed: poll the status instead
        print(f"raypool submit: cannot stream logs ({e}); polling the job status", file=sys.stderr)
    started = time.monotonic()
    while not (status := client.get_job_status(job_id)).is_terminal():
        print(f"  {job_id}: {status.value} ({time.monotonic() - started:.0f}s)", file=sys.stderr)
        time.sleep(POLL_INTERVAL)
    return status


def _connect(address: str, environ: Mapping[str, str]) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address, headers=auth_headers(environ))
    except ConnectionError as e:
        raise SubmitError(
            f"cannot reach the Ray job server at {address} ({e}). From outside the "
            "cluster, run `kubectl port-forward -n <ns> svc/<pool>-head-svc 8265:8265` and "
            "pass --address http://127.0.0.1:8265"
        ) from None


def _auth_hint(e: Exception) -> str:
    return (
        f"the Ray job server refused the request ({type(e).__name__}). The pool's cluster "
        "uses token auth: set RAY_AUTH_TOKEN to its token, e.g. `export RAY_AUTH_TOKEN="
        "$(kubectl get secret -n <ns> <pool>-ray-token -o jsonpath='{.data.token}' | base64 -d)`"
        " (or the Secret named by the pool's spec.ray.auth.secretKeyRef)"
    )


def submit_cli(args: argparse.Namespace) -> int:
    from ray.exceptions import AuthenticationError

    environ = os.environ
    try:
        plan = plan_job(args, environ, prefect_env_of_submitter())
        print(describe(plan), file=sys.stderr)
        if warning := loopback_warning(plan):
            print(warning, file=sys.stderr)
        client = _connect(plan.address, environ)
        job_id = client.submit_job(
            entrypoint=plan.entrypoint,
            runtime_env=plan.runtime_env,
            submission_id=plan.submission_id,
            metadata=plan.metadata,
        )
    except SubmitError as e:
        print(f"raypool submit: {e}", file=sys.stderr)
        return 2
    except AuthenticationError as e:
        print(f"raypool submit: {_auth_hint(e)}", file=sys.stderr)
        return 2
    print(f"submitted {job_id}", file=sys.stderr)
    if args.no_wait:
        print(
            f"follow it with: ray job logs --address {plan.address} --follow {job_id}\n"
            f"stop it with: ray job stop --address {plan.address} {job_id}",
            file=sys.stderr,
        )
        return 0
    try:
        status = follow(client, job_id, sys.stdout)
    except KeyboardInterrupt:
        print(
            f"\nraypool submit: stopped following; {job_id} keeps running "
            f"(ray job stop --address {plan.address} {job_id})",
            file=sys.stderr,
        )
        return 130
    info = client.get_job_info(job_id)
    print(f"job {job_id} {status.value}: {info.message or ''}".rstrip(), file=sys.stderr)
    return 0 if status.value == "SUCCEEDED" else 1
