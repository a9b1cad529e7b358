"""`raypool`: the command-line entry point.

Each subcommand lives in the module that owns its logic; this file only parses
arguments and dispatches, importing lazily so `raypool --help` stays fast.
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


def _dev(args: argparse.Namespace) -> int:
    # The test bed is dev-only: it ships in the source checkout, never in the wheel.
    try:
        from testbed.devenv import main as testbed_main
    except ImportError:
        print(
            "raypool dev: the local environment lives in a source checkout of "
            "prefect-raypool (its testbed/ package); run `make up` / `make down` there",
            file=sys.stderr,
        )
        return 2
    return testbed_main([args.action, "--state-dir", args.state_dir])


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

    from prefect_raypool.submit import add_arguments as submit_arguments

    submit = sub.add_parser(
        "submit",
        help="run a flow as a Ray Job on a pool's cluster (the driver runs in the cluster)",
    )
    submit_arguments(submit)
    submit.set_defaults(func=_submit)

    dev = sub.add_parser("dev", help="the local control plane (what `make up` runs)")
    dev.add_argument("action", choices=["up", "down", "status"])
    dev.add_argument("--state-dir", default=".dev", help="where kubeconfig, logs and pids go")
    dev.set_defaults(func=_dev)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
