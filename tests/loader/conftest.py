"""Fixtures for the loader tests."""

import pytest

from kvmpy.loader.e820 import pc_e820

from loader_helpers import MiB


@pytest.fixture
def e820_512m():
    return pc_e820(512 * MiB, amd=True)
