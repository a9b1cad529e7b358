"""`raypool submit`: flows run as Ray Jobs on a real Ray head (token auth, job server)
and record their runs in a real Prefect server.

Each case runs the real command in a fresh process, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.objects import StateType
from ray.job_submission import JobSubmissionClient

from prefect_raypool.cli import main
from testbed.dataplane import RayCluster
from testbed.prefect_server import PrefectServer
from tests.runner.conftest import LOOPBACK_ENV, REPO, task_runs_of

pytestmark = [pytest.mark.ray, pytest.mark.prefect]

PLANTED = {"PREFECT_API_KEY": "pnu_planted", "PREFECT_API_AUTH_STRING": "admin:planted"}
FLOW_RUN_LINE = re.compile(r"raypool submit: flow run ([0-9a-f-]{36}) ended (\w+)")


def raypool_submit(
    cluster: RayCluster,
    argv: list[str],
    token: str | None = None,
    cwd: Path = REPO,
    extra_env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`raypool submit --address <the head's job server> ...` with the cluster's token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(LOOPBACK_ENV)
    env.update(extra_env or {})
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token or cluster.token or ""})
    assert cluster.dashboard_url
    cmd = [sys.executable, "-m", "prefect_raypool.cli", "submit"]
    return subprocess.run(
        [*cmd, *argv, "--address", cluster.dashboard_url],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=240,
    )


def flow_run_of(result: subprocess.CompletedProcess[str]) -> tuple[uuid.UUID, str]:
    found = FLOW_RUN_LINE.search(result.stdout)
    assert found, f"no flow run line in the job's logs:\n{result.stdout}\n{result.stderr}"
    return uuid.UUID(found.group(1)), found.group(2)


def submission_id_of(result: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"^submitted (\S+)$", result.stderr, re.MULTILINE)
    assert found, result.stderr
    return found.group(1)


def test_count_to_runs_as_a_ray_job_and_is_recorded_in_prefect(
    ray_jobs_head: RayCluster, prefect_server: PrefectServer, client: SyncPrefectClient
) -> None:
    result = raypool_submit(
        ray_jobs_head, ["examples/count_to.py:count_to", "--param", "highest_number=4"]
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCEEDED" in result.stderr
    flow_run_id, state = flow_run_of(result)
    assert state == "Completed"

    flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state is not None and flow_run.state.type == StateType.COMPLETED
    task_runs = task_runs_of(client, flow_run_id)
    assert len(task_runs) == 4
    assert all(t.state is not None and t.state.type == StateType.COMPLETED for t in task_runs)
    # The tasks' prints come back through Ray's log forwarding, prefixed with the
    # Ray worker process that ran them.
    plain = re.sub(r"\x1b\[[0-9;]*m", "", result.stdout)  # Ray colours the prefixes
    printed = re.findall(r"^\(shout pid=\d+\) #(\d)$", plain, re.MULTILINE)
    assert sorted(printed) == ["0", "1", "2", "3"], result.stdout


def write_project(root: Path) -> Path:
    """A flow that reports where it and its tasks ran, what env and code reached them."""
    (root / "flows").mkdir()
    (root / "flows" / "data.txt").write_text("shipped with the working dir\n")
    (root / "flows" / "helper.py").write_text("GREETING = 'from a sibling module'\n")
    lib = root / "libs" / "raypool_test_lib"
    lib.mkdir(parents=True)
    (lib / "__init__.py").write_text("VERSION = 'py_modules reached me'\n")
    (root / "flows" / "where.py").write_text(
        textwrap.dedent(
            """
            import json
            import os
            from pathlib import Path

            import ray
            from prefect import flow, task

            from helper import GREETING
            from prefect_raypool import RayTaskRunner


            def here():
                import raypool_test_lib

                ctx = ray.get_runtime_context()
                return {
                    "job": ctx.get_job_id(),
                    "pid": os.getpid(),
                    "mark": os.environ.get("RAYPOOL_MARK"),
                    "lib": raypool_test_lib.VERSION,
                }


            @task
            def place(i: int) -> dict:
                return here()


            @flow(task_runner=RayTaskRunner())
            def where(n: int, label: str) -> None:
                tasks = place.map(range(n)).result()
                report = {
                    "driver": here(),
                    "ray_address": os.environ.get("RAY_ADDRESS"),
                    "data": Path("data.txt").read_text().strip(),
                    "greeting": GREETING,
                    "label": label,
                    "tasks": tasks,
                }
                print("REPORT " + json.dumps(report))


            @flow(task_runner=RayTaskRunner())
            def broken() -> None:
                raise ValueError("the flow failed on purpose")
            """
        )
    )
    return root


def test_runtime_env_reaches_the_driver_and_tasks_attach_to_the_jobs_cluster(
    ray_jobs_head: RayCluster,
    prefect_server: PrefectServer,
    client: SyncPrefectClient,
    tmp_path: Path,
) -> None:
    root = write_project(tmp_path)
    runtime_env = {"py_modules": [str(root / "libs" / "raypool_test_lib")]}
    result = raypool_submit(
        ray_jobs_head,
        [
            "flows/where.py:where",
            "--param",
            "n=3",
            "--param",
            "label=plain string",
            "--env",
            "RAYPOOL_MARK=set by --env",
            "--runtime-env-json",
            json.dumps(runtime_env),
        ],
        cwd=root,
        # The submitter's credentials (this Prefect server needs none): planted, to
        # show they stay here.
        extra_env=PLANTED,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    line = next(x for x in result.stdout.splitlines() if x.startswith("REPORT "))
    report: dict[str, Any] = json.loads(line.removeprefix("REPORT "))

    # working_dir (the flow file's directory, uploaded) is the driver's cwd and on its path.
    assert report["data"] == "shipped with the working dir"
    assert report["greeting"] == "from a sibling module"
    assert report["label"] == "plain string"
    # env_vars and py_modules reach the driver, and the job's tasks too.
    for place in [report["driver"], *report["tasks"]]:
        assert place["mark"] == "set by --env"
        assert place["lib"] == "py_modules reached me"
    # The driver ran as the submitted Ray job, in the cluster; the runner attached to it
    # with no address (Ray's job supervisor set RAY_ADDRESS to the head's GCS).
    assert report["ray_address"] == ray_jobs_head.address
    jobs = JobSubmissionClient(
        ray_jobs_head.dashboard_url, headers={"Authorization": f"Bearer {ray_jobs_head.token}"}
    )
    job = jobs.get_job_info(submission_id_of(result))
    assert job.status.value == "SUCCEEDED"
    # Every job on the cluster can read a job's runtime_env: no credential in it, and
    # none printed.
    shown = json.dumps(job.runtime_env) + result.stdout + result.stderr
    leaks = [ln for ln in shown.splitlines() if any(v in ln for v in PLANTED.values())]
    assert not leaks, leaks
    assert set(job.runtime_env["env_vars"]) == {"PREFECT_API_URL", "RAYPOOL_MARK"}
    assert report["driver"]["job"] == job.job_id
    assert len(report["tasks"]) == 3
    for place in report["tasks"]:
        assert place["job"] == job.job_id  # the same Ray job on the same cluster
        assert place["pid"] != report["driver"]["pid"]  # in Ray workers, not the driver

    flow_run_id, state = flow_run_of(result)
    assert state == "Completed"
    flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state is not None and flow_run.state.type == StateType.COMPLETED
    assert flow_run.parameters == {"n": 3, "label": "plain string"}


def test_a_failed_flow_fails_the_job_and_the_command(
    ray_jobs_head: RayCluster,
    prefect_server: PrefectServer,
    client: SyncPrefectClient,
    tmp_path: Path,
) -> None:
    root = write_project(tmp_path)
    result = raypool_submit(ray_jobs_head, ["flows/where.py:broken"], cwd=root)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the flow failed on purpose" in result.stdout
    assert re.search(r"^job \S+ FAILED", result.stderr, re.MULTILINE), result.stderr
    flow_run_id, state = flow_run_of(result)
    assert state == "Failed"
    flow_run = client.read_flow_run(flow_run_id)
    assert flow_run.state is not None and flow_run.state.type == StateType.FAILED


def test_a_wrong_token_is_refused_before_anything_runs(
    ray_jobs_head: RayCluster,
    prefect_server: PrefectServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    jobs = JobSubmissionClient(
        ray_jobs_head.dashboard_url, headers={"Authorization": f"Bearer {ray_jobs_head.token}"}
    )
    before = len(jobs.list_jobs())
    bad = "not-the-token-4f1c"
    monkeypatch.setenv("RAY_AUTH_TOKEN", bad)
    assert ray_jobs_head.dashboard_url
    target = str(REPO / "examples" / "count_to.py") + ":count_to"
    code = main(["submit", target, "--address", ray_jobs_head.dashboard_url])
    out = capsys.readouterr()
    assert code == 2, out
    assert "RAY_AUTH_TOKEN" in out.err and "-ray-token" in out.err
    assert bad not in out.out + out.err  # a token is never printed
    assert len(jobs.list_jobs()) == before
