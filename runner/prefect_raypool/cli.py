"""`raypool`: the command-line entry point.

This file only parses arguments and dispatches. Each subcommand's module is imported
when that subcommand runs: `render` (prefect_raypool_operator/render.py) needs only
pydantic and PyYAML, so `raypool render` works where Prefect and Ray are not installed
(the operator image); `submit` (submit.py) and `doctor` (doctor.py) are the user's
tools beside the runner, and load Prefect and Ray.
"""

from __future__ import annotations

import argparse
import sys


def _render(args: argparse.Namespace) -> int:
    from prefect_raypool_operator.render import render_cli

    return render_cli(args)


def _doctor(args: argparse.Namespace) -> int:
    from prefect_raypool.doctor import doctor_cli

    return doctor_cli(args)


def _submit(args: argparse.Namespace) -> int:
    from prefect_raypool.submit import submit_cli

    return submit_cli(args)


def _submit_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="FLOW_FILE:FLOW (a Python file and its flow function)")
    where = parser.add_argument_group("where the job goes (default: RAY_ADDRESS)")
    where.add_argument("--address", help="the Ray job server (dashboard) URL, http://<head>:8265")
    where.add_argument(
        "--pool", help="a PrefectRayPool: its head service, http://<pool>-head-svc.<ns>.svc:8265"
    )
    where.add_argument("--namespace", help="the pool's namespace (default: default)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="K=V",
        help='a flow parameter; V is JSON (3, [1,2], "x") or else a plain string',
    )
    parser.add_argument(
        "--runtime-env-json", help="a Ray runtime_env as JSON (pip, py_modules, env_vars...)"
    )
    parser.add_argument(
        "--working-dir",
        help="uploaded as the job's working directory (default: the flow file's directory; "
        "never a home directory or one above it); a remote URI (s3://...) is used as is",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="K=V",
        help="an environment variable (not a secret: every job on the cluster can read it; "
        "PREFECT_API_KEY and PREFECT_API_AUTH_STRING are refused)",
    )
    parser.add_argument(
        "--no-wait", action="store_true", help="print the job id and return once submitted"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raypool", description="prefect-raypool: Prefect flows on Ray on Kubernetes"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    render = sub.add_parser("render", help="print the manifests a PrefectRayPool produces")
    render.add_argument("file", help="a PrefectRayPool YAML file ('-' for stdin)")
    render.set_defaults(func=_render)

    doctor = sub.add_parser(
        "doctor", help="analyse a flow: what a remote Ray head must be able to import"
    )
    doctor.add_argument("target", help="FLOW_FILE:FLOW_FUNCTION")
    doctor.set_defaults(func=_doctor)

    submit = sub.add_parser(
        "submit",
        help="run a flow as a Ray Job on a pool's cluster (the driver runs in the cluster)",
    )
    _submit_arguments(submit)
    submit.set_defaults(func=_submit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
