"""Shared pytest wiring: the fixtures are the test bed's (testbed/fixtures.py)."""

pytest_plugins = ["testbed.fixtures"]
