"""The operator's one entry point:

    python -m prefect_raypool_operator --liveness=http://0.0.0.0:8080/healthz \\
        --namespace=team-a --namespace=team-b      # or --all-namespaces

is `kopf run -m prefect_raypool_operator.main --standalone` with the same options
(kopf's own: scope, liveness, logging). Standalone: kopf's peering is not leader
election. With RAYPOOL_LEADER_ELECTION=true (the chart's default, for its replicas)
the process first stands by until it holds a Lease and only then starts kopf
(leader.py), and once kopf stops it gives the Lease up only after the reconciles still
running have ended (`drain`); without it, it starts kopf at once, the one operator of
its scope.
"""

from __future__ import annotations

import sys

from kopf.cli import main as kopf_cli

from prefect_raypool_operator import leader, startup

PROG = "python -m prefect_raypool_operator"


def run_args(argv: list[str]) -> list[str]:
    """The `kopf` command line equivalent to `python -m prefect_raypool_operator ARGV`."""
    return ["run", "-m", "prefect_raypool_operator.main", "--standalone", *argv]


def drain(timeout: float) -> bool:
    """kopf has stopped: no reconcile may start, and those still running in its executor
    threads end within `timeout` s (True) or not (False)."""
    controller = sys.modules.get("prefect_raypool_operator.controller")
    if controller is None:  # kopf never loaded the handlers: nothing ever ran
        return True
    return bool(controller.CONTROLLER.drain(timeout))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv

    def run_kopf() -> None:
        kopf_cli.main(args=run_args(args), prog_name=PROG)

    if "--help" in args:
        run_kopf()
    startup.SCOPE = startup.Scope.from_args(args)
    try:
        settings = leader.Settings.from_env()
    except ValueError as e:
        sys.exit(f"{PROG}: {e}")
    if not settings.enabled:
        run_kopf()
        return
    leader.configure_logging()
    leader.run_elected(settings, args, run_kopf, drain=drain)


if __name__ == "__main__":
    main()
