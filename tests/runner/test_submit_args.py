"""`raypool submit`: arguments, address, runtime_env and entrypoint, without a cluster.

The job itself runs against a real Ray head in tests/runner/test_submit.py.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from prefect_raypool.cli import build_parser
from prefect_raypool.submit import (
    JobPlan,
    SubmitError,
    auth_headers,
    describe,
    loopback_warning,
    plan_job,
    prefect_env_of_submitter,
    resolve_address,
)

pytestmark = pytest.mark.unit

PREFECT = {"PREFECT_API_URL": "http://prefect.prefect.svc:4200/api"}


@pytest.fixture
def flow_dir(tmp_path: Path) -> Path:
    (tmp_path / "flows").mkdir()
    (tmp_path / "flows" / "etl.py").write_text("# a flow file\n")
    return tmp_path


def plan(argv: list[str], environ: dict[str, str] | None = None, **prefect: str) -> JobPlan:
    args = build_parser().parse_args(["submit", *argv])
    return plan_job(args, environ or {"RAY_ADDRESS": "http://head:8265"}, prefect or PREFECT)


def entry_argv(job: JobPlan) -> list[str]:
    return shlex.split(job.entrypoint)


def test_default_uploads_the_flow_files_directory(flow_dir: Path) -> None:
    job = plan([f"{flow_dir}/flows/etl.py:etl", "--param", "n=3", "--param", "name=world"])
    assert job.runtime_env["working_dir"] == str(flow_dir / "flows")
    argv = entry_argv(job)
    assert argv[:5] == ["python", "-m", "prefect_raypool.submitted", "etl.py", "etl"]
    # JSON-decoded values; what is not JSON stays a string.
    assert json.loads(argv[5]) == {"n": 3, "name": "world"}
    assert job.submission_id.startswith("raypool-etl-")
    assert job.runtime_env["env_vars"] == PREFECT


def test_working_dir_above_the_file_gives_a_relative_entry_file(flow_dir: Path) -> None:
    job = plan([f"{flow_dir}/flows/etl.py:etl", "--working-dir", str(flow_dir)])
    assert job.runtime_env["working_dir"] == str(flow_dir)
    assert entry_argv(job)[3] == "flows/etl.py"


def test_remote_working_dir_takes_the_file_as_a_path_inside_it() -> None:
    job = plan(["src/etl.py:etl", "--working-dir", "s3://bucket/code.zip"])
    assert job.runtime_env["working_dir"] == "s3://bucket/code.zip"
    assert entry_argv(job)[3] == "src/etl.py"


def test_env_and_runtime_env_json_merge_with_the_submitters_prefect_settings(
    flow_dir: Path,
) -> None:
    runtime_env = {"pip": ["pandas"], "env_vars": {"A": "from-json", "B": "from-json"}}
    job = plan(
        [
            f"{flow_dir}/flows/etl.py:etl",
            "--runtime-env-json",
            json.dumps(runtime_env),
            "--env",
            "B=from-flag",
            "--env",
            "PREFECT_API_URL=http://reachable:4200/api",
        ],
        PREFECT_API_URL="http://localhost:4200/api",
    )
    assert job.runtime_env["pip"] == ["pandas"]
    assert job.runtime_env["env_vars"] == {
        "A": "from-json",
        "B": "from-flag",
        "PREFECT_API_URL": "http://reachable:4200/api",  # --env wins
    }
    # What is printed names the variables, never their values.
    shown = describe(job)
    assert "env_vars: A, B, PREFECT_API_URL" in shown and "from-flag" not in shown


def test_the_submitters_prefect_credentials_stay_on_the_submitters_machine(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every job on the cluster can read a job's runtime_env: the submitter's API key
    and auth string, from its environment or profile, are never put there."""
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.prefect.svc:4200/api")
    monkeypatch.setenv("PREFECT_API_KEY", "pnu_planted_key")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:planted-password")
    from prefect.settings import Settings

    settings = Settings()  # from this environment
    assert settings.api.key is not None and settings.api.auth_string is not None
    only_the_url = {"PREFECT_API_URL": "http://prefect.prefect.svc:4200/api"}
    assert prefect_env_of_submitter(settings) == only_the_url


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--env", "PREFECT_API_KEY=pnu_x"], "--env PREFECT_API_KEY"),
        (["--env", "PREFECT_API_AUTH_STRING=a:b"], "--env PREFECT_API_AUTH_STRING"),
        (
            ["--runtime-env-json", json.dumps({"env_vars": {"PREFECT_API_KEY": "pnu_x"}})],
            "--runtime-env-json env_vars PREFECT_API_KEY",
        ),
    ],
)
def test_a_prefect_credential_given_for_the_job_is_refused(
    flow_dir: Path, argv: list[str], named: str
) -> None:
    with pytest.raises(SubmitError, match="readable by every job") as refused:
        plan([f"{flow_dir}/flows/etl.py:etl", *argv])
    message = str(refused.value)
    assert message.startswith(named) and "pnu_x" not in message and "a:b" not in message


def test_a_home_directory_is_never_uploaded(tmp_path: Path) -> None:
    home = tmp_path / "me"
    (home / "proj").mkdir(parents=True)
    (home / "etl.py").write_text("# a flow file in the home directory\n")
    (home / "proj" / "etl.py").write_text("# a flow file in a project\n")
    environ = {"RAY_ADDRESS": "http://head:8265", "HOME": str(home)}
    # By default the flow file's directory is uploaded: here, the home directory.
    with pytest.raises(SubmitError, match="the flow file's directory .* would upload"):
        plan([f"{home}/etl.py:etl"], environ)
    for above in (home, tmp_path, Path("/")):
        with pytest.raises(SubmitError, match=f"--working-dir {above} would upload"):
            plan([f"{home}/proj/etl.py:etl", "--working-dir", str(above)], environ)
    job = plan([f"{home}/proj/etl.py:etl"], environ)  # a project directory is fine
    assert job.runtime_env["working_dir"] == str(home / "proj")


def test_what_is_printed_hides_the_credentials_of_urls(flow_dir: Path) -> None:
    runtime_env = {"pip": ["git+https://user:tok3n@git.example/org/lib.git"]}
    job = plan([f"{flow_dir}/flows/etl.py:etl", "--runtime-env-json", json.dumps(runtime_env)])
    shown = describe(job)
    assert "tok3n" not in shown and "user:" not in shown
    assert "git+https://***@git.example/org/lib.git" in shown


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["flow.py"], "expected FLOW_FILE:FLOW"),
        (["flow.txt:etl"], "must be a Python file"),
        (["{d}/missing.py:etl"], "no such flow file"),
        (["{d}/flows/etl.py:etl", "--working-dir", "{d}/nope"], "not a directory"),
        (["{d}/flows/etl.py:etl", "--working-dir", "{d}/flows/sub"], "not a directory"),
        (["{d}/flows/etl.py:etl", "--param", "n"], "--param expects KEY=VALUE"),
        (["{d}/flows/etl.py:etl", "--param", "a-b=1"], "must be an identifier"),
        (["{d}/flows/etl.py:etl", "--env", "1X=1"], "not a valid environment variable"),
        (["{d}/flows/etl.py:etl", "--runtime-env-json", "{{"], "not valid JSON"),
        (["{d}/flows/etl.py:etl", "--runtime-env-json", "[]"], "must be a JSON object"),
    ],
)
def test_bad_arguments_say_what_to_fix(flow_dir: Path, argv: list[str], message: str) -> None:
    with pytest.raises(SubmitError, match=message):
        plan([a.format(d=flow_dir) for a in argv])


def test_a_file_outside_the_working_dir_is_refused(flow_dir: Path) -> None:
    (flow_dir / "other").mkdir()
    with pytest.raises(SubmitError, match="outside the working directory"):
        plan([f"{flow_dir}/flows/etl.py:etl", "--working-dir", str(flow_dir / "other")])


def test_without_a_prefect_api_url_nothing_is_submitted(flow_dir: Path) -> None:
    args = build_parser().parse_args(["submit", f"{flow_dir}/flows/etl.py:etl"])
    with pytest.raises(SubmitError, match="PREFECT_API_URL is not set"):
        plan_job(args, {"RAY_ADDRESS": "http://head:8265"}, {})


@pytest.mark.parametrize(
    ("address", "pool", "namespace", "environ", "expected"),
    [
        ("http://127.0.0.1:8265/", None, None, {}, "http://127.0.0.1:8265"),
        (None, "etl", "data", {}, "http://etl-head-svc.data.svc:8265"),
        (None, "etl", None, {}, "http://etl-head-svc.default.svc:8265"),
        (None, None, None, {"RAY_ADDRESS": "https://ray.example:443"}, "https://ray.example:443"),
        # --address wins over RAY_ADDRESS.
        ("http://a:8265", None, None, {"RAY_ADDRESS": "http://b:8265"}, "http://a:8265"),
    ],
)
def test_address(
    address: str | None, pool: str | None, namespace: str | None, environ: Any, expected: str
) -> None:
    assert resolve_address(address, pool, namespace, environ) == expected


@pytest.mark.parametrize(
    ("address", "pool", "environ", "message"),
    [
        (None, None, {}, "no Ray job server given.*port-forward"),
        ("http://a:8265", "etl", {}, "not both"),
        (None, None, {"RAY_ADDRESS": "10.0.0.1:6379"}, "RAY_ADDRESS=.* not a Ray job server URL"),
        ("ray://head:10001", None, {}, "--address=.* dashboard port"),
    ],
)
def test_bad_address(address: str | None, pool: str | None, environ: Any, message: str) -> None:
    with pytest.raises(SubmitError, match=message):
        resolve_address(address, pool, None, environ)


def test_token_from_the_environment_or_its_file(tmp_path: Path) -> None:
    assert auth_headers({"RAY_AUTH_TOKEN": "abc"}) == {"Authorization": "Bearer abc"}
    token_file = tmp_path / "token"
    token_file.write_text("fromfile\n")
    assert auth_headers({"RAY_AUTH_TOKEN_PATH": str(token_file)}) == {
        "Authorization": "Bearer fromfile"
    }
    assert auth_headers({"RAY_AUTH_TOKEN": "abc", "RAY_AUTH_MODE": "disabled"}) == {}
    assert auth_headers({}) == {}  # no token, no mode: nothing sent


def test_loopback_prefect_api_is_flagged_only_for_a_remote_cluster(flow_dir: Path) -> None:
    target = f"{flow_dir}/flows/etl.py:etl"
    local_api = {"PREFECT_API_URL": "http://127.0.0.1:4200/api"}
    remote = plan([target, "--address", "http://10.0.0.5:8265"], **local_api)
    assert "cannot reach" in (loopback_warning(remote) or "")
    local = plan([target, "--address", "http://127.0.0.1:8265"], **local_api)
    assert loopback_warning(local) is None
