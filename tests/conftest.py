"""Run the tests from a scratch directory: trial's TestCase.mktemp() makes relative paths under the current
directory, which would otherwise litter the source tree (and a package build's tree)."""

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def _scratch_working_directory(tmp_path_factory):
    previous = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(previous)
