"""The operator's one entry point:

    python -m prefect_raypool_operator --liveness=http://0.0.0.0:8080/healthz \\
        --namespace=team-a --namespace=team-b      # or --all-namespaces

is `kopf run -m prefect_raypool_operator.main --standalone` with the same options
(kopf's own: scope, liveness, logging). Standalone: replicas of one operator do not
peer (kopf's peering is not leader election); the chart runs one.
"""

from __future__ import annotations

import sys

from kopf.cli import main as kopf_cli

PROG = "python -m prefect_raypool_operator"


def run_args(argv: list[str]) -> list[str]:
    """The `kopf` command line equivalent to `python -m prefect_raypool_operator ARGV`."""
    return ["run", "-m", "prefect_raypool_operator.main", "--standalone", *argv]


def main(argv: list[str] | None = None) -> None:
    kopf_cli.main(args=run_args(sys.argv[1:] if argv is None else argv), prog_name=PROG)


if __name__ == "__main__":
    main()
