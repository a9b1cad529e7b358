"""The driver of a flow submitted as a Ray Job by `raypool submit`.

`python -m prefect_raypool.submitted FLOW_FILE FLOW PARAMS_JSON` runs in the job's
working directory on the cluster. Ray's job supervisor sets RAY_ADDRESS for it, so
the flow's RayTaskRunner (address None or "auto") attaches to this very cluster.
The flow is loaded with Prefect's own loader and called, so its run is recorded in
the Prefect API that PREFECT_API_URL names (passed in through the job's runtime_env).
Exit status 0 only when the flow run ends Completed: the Ray job then SUCCEEDED.
"""

from __future__ import annotations

import json
import sys
from typing import Any

USAGE = "usage: python -m prefect_raypool.submitted FLOW_FILE FLOW PARAMS_JSON"


def load_flow(flow_file: str, flow_name: str) -> Any:
    """The flow, loaded as a script (like `python flow.py`); its code travels by value.

    Prefect's loader imports the file under its stem (or a private name); Ray
    workers could import that name only when the file sits at the top of the
    working directory, so its functions are pickled by value instead, as __main__'s.
    """
    from prefect.flows import load_flow_from_entrypoint
    from ray import cloudpickle

    # No placeholder flow: a file that fails to import must fail the job, loudly.
    flow: Any = load_flow_from_entrypoint(f"{flow_file}:{flow_name}", use_placeholder_flow=False)
    module = sys.modules.get(flow.fn.__module__)
    if module is not None and module.__name__ != "__main__":
        cloudpickle.register_pickle_by_value(module)
    return flow


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 3:
        print(USAGE, file=sys.stderr)
        return 2
    flow_file, flow_name, params_json = args
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        # Without it Prefect would start a throwaway server and the run would be lost.
        print(
            "raypool submit: PREFECT_API_URL is not set in the Ray job; pass it with "
            "`raypool submit --env PREFECT_API_URL=...` (it defaults to the submitter's)",
            file=sys.stderr,
        )
        return 2
    params = json.loads(params_json)
    flow = load_flow(flow_file, flow_name)
    state = flow(**params, return_state=True)
    print(f"raypool submit: flow run {state.state_details.flow_run_id} ended {state.name}")
    return 0 if state.is_completed() else 1


if __name__ == "__main__":
    sys.exit(main())
