"""Top-level conftest: wires in the kvmpy test-bed plugin (markers kvm_full and kvm_host).

The logic lives in kvmpy.testbed.pytest_plugin. Fixtures belong in per-directory
conftest files, not here.
"""

import pytest

from kvmpy.testbed.pytest_plugin import register


def pytest_configure(config: pytest.Config) -> None:
    register(config)
