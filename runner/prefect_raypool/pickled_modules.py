"""Which modules a Ray head must import to unpickle a flow's tasks (for ray:// and doctor).

Computed from what is actually pickled: the task functions, their closures and
globals they reference, default arguments and the call arguments, plus
prefect and prefect_raypool themselves.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Iterable
from typing import Any

_ALWAYS = ("prefect", "prefect_raypool")


def _is_stdlib(name: str) -> bool:
    return name in sys.stdlib_module_names or name == "builtins"


#: Modules whose functions cloudpickle pickles by value (their code travels, so
#: what the code references must be importable instead). `raypool doctor` adds
#: the private name it loads a flow file under.
BY_VALUE_MODULES = {"__main__"}


def _modules_of_object(obj: Any, seen: set[int], out: set[str], depth: int = 0) -> None:
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    if isinstance(obj, types.ModuleType):
        _add(obj.__name__, out)
        return
    if isinstance(obj, str | bytes | int | float | bool | type(None)):
        return
    if isinstance(obj, types.FunctionType):
        _add(obj.__module__, out)
        if obj.__module__ in BY_VALUE_MODULES or obj.__module__ is None:
            _modules_of_code(obj, seen, out, depth)
        return
    if isinstance(obj, type):
        _add(obj.__module__, out)
        return
    if isinstance(obj, dict):
        for k, v in list(obj.items())[:1000]:
            _modules_of_object(k, seen, out, depth + 1)
            _modules_of_object(v, seen, out, depth + 1)
        return
    if isinstance(obj, list | tuple | set | frozenset):
        for item in list(obj)[:1000]:
            _modules_of_object(item, seen, out, depth + 1)
        return
    # Any other object: its class decides where it is unpickled from. A Prefect
    # Task or Flow also carries its function.
    _add(type(obj).__module__, out)
    fn = getattr(obj, "fn", None)
    if isinstance(fn, types.FunctionType):
        _modules_of_object(inspect.unwrap(fn), seen, out, depth + 1)


def _modules_of_code(fn: types.FunctionType, seen: set[int], out: set[str], depth: int) -> None:
    """What a function pickled by value drags along: globals it names, closures, defaults."""
    names = set(fn.__code__.co_names)
    for const in fn.__code__.co_consts:
        if isinstance(const, types.CodeType):
            names |= set(const.co_names)
    for name in names:
        if name in fn.__globals__:
            _modules_of_object(fn.__globals__[name], seen, out, depth + 1)
    for cell in fn.__closure__ or ():
        try:
            _modules_of_object(cell.cell_contents, seen, out, depth + 1)
        except ValueError:  # an empty cell
            pass
    for default in fn.__defaults__ or ():
        _modules_of_object(default, seen, out, depth + 1)


def _add(module_name: str | None, out: set[str]) -> None:
    if module_name and module_name not in BY_VALUE_MODULES:
        out.add(module_name.split(".")[0])


def modules_for(objects: Iterable[Any]) -> list[str]:
    out: set[str] = set(_ALWAYS)
    seen: set[int] = set()
    for obj in objects:
        _modules_of_object(obj, seen, out)
    return sorted(name for name in out if not _is_stdlib(name))


def modules_needed_by(task: Any, flow_run_context: Any = None, parameters: Any = None) -> list[str]:
    objects: list[Any] = [task]
    if parameters is not None:
        objects.append(parameters)
    flow = getattr(flow_run_context, "flow", None)
    if flow is not None:
        objects.append(flow)
    return modules_for(objects)


def tasks_called_by(flow: Any) -> list[Any]:
    """The prefect Tasks a flow function references (globals and closures)."""
    from prefect.tasks import Task

    fn = inspect.unwrap(flow.fn)
    found: list[Any] = []
    names = set(fn.__code__.co_names)
    for const in fn.__code__.co_consts:
        if isinstance(const, types.CodeType):
            names |= set(const.co_names)
    for name in names:
        value = fn.__globals__.get(name)
        if isinstance(value, Task):
            found.append(value)
    for cell in fn.__closure__ or ():
        try:
            if isinstance(cell.cell_contents, Task):
                found.append(cell.cell_contents)
        except ValueError:
            pass
    return found
