"""Ray remote options for task runs, set with a context manager (same API as prefect_ray)."""

from __future__ import annotations

from collections.abc import Generator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar

from prefect.context import ContextModel
from pydantic import Field


class RemoteOptionsContext(ContextModel):
    """The Ray remote options in effect for task runs submitted in this context."""

    __var__: ClassVar[ContextVar[Any]] = ContextVar("prefect_raypool_remote_options")
    current_remote_options: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def get(cls) -> RemoteOptionsContext:
        """The current context, or an empty one outside any `remote_options` block."""
        return cls.__var__.get(RemoteOptionsContext())


@contextmanager
def remote_options(**new_remote_options: Any) -> Generator[None, None, None]:
    """Pass keyword arguments to Ray's remote options for the task runs submitted inside.

    Nested blocks merge; on a key present in both, the inner value wins::

        with remote_options(num_cpus=4, num_gpus=1):
            process.submit(42)  # like @ray.remote(num_cpus=4, num_gpus=1)
    """
    current = RemoteOptionsContext.get().current_remote_options
    with RemoteOptionsContext(current_remote_options={**current, **new_remote_options}):
        yield
