"""kvmpy's pytest plugin: fixtures that boot a VM for a test and always stop it afterwards.

Registered through the ``pytest11`` entry point (``-p no:kvmpy.pytest_plugin``
turns it off; ``-p kvmpy.pytest_plugin`` loads it where the package is not
installed). Importing it costs nothing: kvmpy's API is loaded only when a
fixture is used.

Fixtures:
  ``kvmpy_vm_factory``  ``factory(kernel, ready=None, ready_timeout=60, **VM options)``
                        boots a ``kvmpy.VM``, waits for ``ready`` (a string or
                        regex) on its console, and returns it. Every VM it made
                        is closed when the test ends, pass or fail.
  ``kvmpy_vm``          one booted VM described by the test's marker:
                        ``@pytest.mark.kvmpy_vm(kernel, ready="login:", memory="512M")``.

``--kvmpy-process`` makes VMs without an explicit ``process=`` run as managed
``kvmpy`` child processes instead of in the pytest process. When a test
fails, the tail of each of its VMs' consoles is added to the report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Generator, Iterator

import pytest

if TYPE_CHECKING:
    from kvmpy.api import VM

CONSOLE_TAIL = 4000  # characters of console output shown for a failed test
VMS_KEY = pytest.StashKey[list]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("kvmpy")
    group.addoption("--kvmpy-process", action="store_true", default=False,
                    help="run the kvmpy_vm fixtures' VMs as kvmpy child processes (default: in-process)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "kvmpy_vm(kernel, ready=None, **options): the VM the kvmpy_vm fixture "
                                       "boots (options as for kvmpy.VM)")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, Any, Any]:
    report = yield
    if not report.failed:
        return report
    for i, vm in enumerate(item.stash.get(VMS_KEY, [])):
        text = vm.console.output
        if text:
            tail = text if len(text) <= CONSOLE_TAIL else "[...]" + text[-CONSOLE_TAIL:]
            report.sections.append((f"kvmpy VM {i} console ({vm.mode})", tail))
    return report


@pytest.fixture
def kvmpy_vm_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., "VM"]]:
    from kvmpy.api import VM

    made: list[VM] = []
    request.node.stash[VMS_KEY] = made
    default_process = bool(request.config.getoption("kvmpy_process", False))

    def factory(kernel: Any, *, ready: Any = None, ready_timeout: float = 60.0, **options: Any) -> VM:
        options.setdefault("process", default_process)
        vm = VM(kernel, **options)
        made.append(vm)
        vm.start()
        if ready is not None:
            vm.console.expect(ready, timeout=ready_timeout)
        return vm

    try:
        yield factory
    finally:
        errors = []
        for vm in reversed(made):
            try:
                vm.close()
            except Exception as exc:  # close the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]


@pytest.fixture
def kvmpy_vm(request: pytest.FixtureRequest, kvmpy_vm_factory: Callable[..., "VM"]) -> "VM":
    marker = request.node.get_closest_marker("kvmpy_vm")
    if marker is None or not (marker.args or "kernel" in marker.kwargs):
        pytest.fail("the kvmpy_vm fixture needs @pytest.mark.kvmpy_vm(KERNEL, **options) on the test",
                    pytrace=False)
    return kvmpy_vm_factory(*marker.args, **marker.kwargs)
