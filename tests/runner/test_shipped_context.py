"""What the driver ships to Ray worker processes: Prefect's context, cheaper to set up."""

from __future__ import annotations

import cloudpickle
import prefect.context
import pytest
from prefect import tags
from prefect.context import SettingsContext, serialize_context
from prefect.settings import PREFECT_API_URL, temporary_settings

from prefect_raypool import shipped_context

pytestmark = pytest.mark.unit


def test_same_context_as_prefect_with_the_settings_as_an_object() -> None:
    with tags("a", "b"):
        ours = shipped_context.serialize(SettingsContext.get(), local_server=False)
        prefects = serialize_context()
    # The same keys as Prefect's, so hydration in the Ray worker misses nothing.
    assert set(ours) == set(prefects)
    assert {k: v for k, v in ours.items() if k != "settings_context"} == {
        k: v for k, v in prefects.items() if k != "settings_context"
    }
    shipped = cloudpickle.loads(cloudpickle.dumps(ours["settings_context"]))
    assert isinstance(shipped, SettingsContext)
    assert shipped.settings == SettingsContext.get().settings
    with shipped:  # a copy without the driver's context token: it can be entered
        assert SettingsContext.get() is shipped


def test_a_local_server_gets_prefects_own_dump() -> None:
    serialized = shipped_context.serialize(SettingsContext.get(), local_server=True)
    assert isinstance(serialized["settings_context"], dict)


def test_logging_config_is_shipped_only_for_the_settings_it_was_made_from() -> None:
    from prefect.logging.configuration import PROCESS_LOGGING_CONFIG, setup_logging

    if not PROCESS_LOGGING_CONFIG:
        setup_logging()
    # Prefect's own settings, from which the process set its logging up (read now: a
    # test server's fixture may have refreshed them)...
    own = prefect.context.GLOBAL_SETTINGS_CONTEXT
    config = shipped_context.logging(own)
    assert config is not None and "incremental" not in config
    assert config["loggers"] == PROCESS_LOGGING_CONFIG["loggers"]
    # ...but not other settings (other tests may run inside such a context already).
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:1/api"}):
        assert SettingsContext.get() is not own
        assert shipped_context.logging(SettingsContext.get()) is None
