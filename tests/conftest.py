"""Shared fixtures live in plugin modules under tests/fixtures/, one per outside system."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.simulator",
    "tests.fixtures.db",
    "tests.fixtures.pipeline",
    "tests.fixtures.steps",
    "tests.fixtures.fleet",
    "tests.fixtures.monitoring",
]
