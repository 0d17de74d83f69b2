"""Top-level conftest: wires in the kvmpy test-bed plugin (markers kvm_full and kvm_host) and Hypothesis's profiles.

The suite runs Hypothesis derandomized (profile ``suite``), so a run of the README's test
command on a given commit always tries the same inputs and CI never fails on a fresh draw.
``--hypothesis-profile=explore`` draws new inputs each run: use it when hunting for bugs.

The logic lives in kvmpy.testbed.pytest_plugin. Fixtures belong in per-directory
conftest files, not here.
"""

import pytest
from hypothesis import settings

from kvmpy.testbed.pytest_plugin import register


def pytest_configure(config: pytest.Config) -> None:
    register(config)


settings.register_profile("suite", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("suite")
