"""`raypool doctor FLOW_FILE:FLOW`: what a Ray head must import for a flow, without running it."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path
from typing import Any

from prefect_raypool.pickled_modules import BY_VALUE_MODULES, modules_for, tasks_called_by

#: The name `load_flow` imports a flow file under; like __main__ in a real run,
#: its functions are pickled by value.
DOCTOR_MODULE = "__raypool_doctor__"


def load_flow(target: str) -> Any:
    """Load FLOW from FLOW_FILE (the file is imported, the flow is not run)."""
    from prefect.flows import Flow

    path_text, sep, name = target.rpartition(":")
    if not sep or not path_text or not name:
        raise SystemExit(f"doctor: expected FLOW_FILE:FLOW_FUNCTION, got {target!r}")
    path = Path(path_text).resolve()
    if not path.is_file():
        raise SystemExit(f"doctor: no such file: {path}")
    sys.path.insert(0, str(path.parent))
    BY_VALUE_MODULES.add(DOCTOR_MODULE)
    spec = importlib.util.spec_from_file_location(DOCTOR_MODULE, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    flow = getattr(module, name, None)
    if not isinstance(flow, Flow):
        raise SystemExit(f"doctor: {name!r} in {path} is not a Prefect flow")
    return flow


def analyse(flow: Any) -> dict[str, Any]:
    tasks = tasks_called_by(flow)
    modules = modules_for([flow, *tasks])
    runner = flow.task_runner
    return {
        "flow": flow.name,
        "task_runner": type(runner).__module__ + "." + type(runner).__name__,
        "address": getattr(runner, "address", None),
        "tasks": sorted(t.name for t in tasks),
        "modules": modules,
    }


def doctor_cli(args: argparse.Namespace) -> int:
    report = analyse(load_flow(args.target))
    print(f"flow: {report['flow']}")
    print(f"task runner: {report['task_runner']} (address={report['address']!r})")
    print(f"tasks: {', '.join(report['tasks']) or '(none found)'}")
    print("a Ray head reached over ray:// must be able to import:")
    for name in report["modules"]:
        print(f"  {name}")
    print(
        "(install them in the head's image, or pass them with "
        "init_kwargs={'runtime_env': {'pip': [...]}}; with address=None or 'auto' the "
        "driver runs on the cluster and only the workers import them)"
    )
    return 0
