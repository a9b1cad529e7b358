"""For bench/operator_load.py only: the operator as it was before the API server
filtered its watches (the owned kinds listed and streamed whole, filtered in the
operator). Loaded beside prefect_raypool_operator.main (`kopf run -m A -m B`); kopf
runs startup handlers in order, so this one undoes the selectors configure_kopf set.
"""

from __future__ import annotations

from typing import Any

import kopf


@kopf.on.startup()
def no_server_side_selectors(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.watching.label_selectors.clear()
