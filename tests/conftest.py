"""Shared pytest wiring: fixtures live in small modules beside this file."""

pytest_plugins = ["dataplane", "cluster"]
