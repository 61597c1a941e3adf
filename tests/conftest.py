"""Run the tests from a scratch directory: trial's TestCase.mktemp() makes relative paths under the current
directory, which would otherwise litter the source tree (and a package build's tree)."""

import os

import pytest
from hypothesis import settings

# No time limit per example: speed is measured by `make bench`, never asserted in tests, and CI machines are
# shared (hypothesis's default 200 ms deadline failed a journal property test under load). `make fuzz` runs
# tests/test_fuzz.py without pytest, so its settings say deadline=None themselves.
settings.register_profile("terminal-bridge", deadline=None)
settings.load_profile("terminal-bridge")


@pytest.fixture(autouse=True, scope="session")
def _scratch_working_directory(tmp_path_factory):
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)
