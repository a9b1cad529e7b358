"""The runner's configuration: what `RayTaskRunner(...)` was given, in one place.

Copying the runner for another flow run (`duplicate`), comparing two runners and
pickling one into Ray worker processes all derive from these fields, so a new
field cannot be forgotten by one of them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

#: Ray's namespace for the runner's jobs unless init_kwargs names one.
DEFAULT_NAMESPACE = "prefect"


@dataclass(frozen=True)
class RunnerConfig:
    """The arguments of `RayTaskRunner`, checked and normalised (see its docstring)."""

    address: str | None
    init_kwargs: dict[str, Any]
    max_in_flight: int | None
    quiet_workers: bool
    max_batch: int
    default_remote_options: dict[str, Any]
    warm_workers_s: int

    def __post_init__(self) -> None:
        if self.max_in_flight is not None and self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1 or None, got {self.max_in_flight}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")
        if self.warm_workers_s < 0:
            raise ValueError(
                "warm_workers_s must be at least 0 (0 turns warming off), "
                f"got {self.warm_workers_s}"
            )
        # Own copies: the caller's dicts may change after the runner is built.
        init_kwargs = dict(self.init_kwargs)
        init_kwargs.setdefault("namespace", DEFAULT_NAMESPACE)
        object.__setattr__(self, "init_kwargs", init_kwargs)
        object.__setattr__(self, "default_remote_options", dict(self.default_remote_options))

    def as_kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments of `RayTaskRunner` (a shallow copy)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
