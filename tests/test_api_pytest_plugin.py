"""kvmpy's pytest plugin, run the way a user's suite would: an inner pytest session with the plugin loaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.guests.build import build_guest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.kvm_host


def _inner_tests(kernel: str, name: str) -> str:
    return f'''
import re
import pytest

KERNEL = {kernel!r}
NAME = {name!r}

@pytest.mark.kvmpy_vm(KERNEL, ready="ready", memory="32M", debug_exit=(0xF4, 4), name=NAME)
def test_marker_vm_echoes(kvmpy_vm):
    kvmpy_vm.console.send("abc\\r")
    kvmpy_vm.console.expect("ABC\\n")
    kvmpy_vm.console.send("q")
    assert kvmpy_vm.wait(60) == 33

def test_factory_vms_and_a_failure(kvmpy_vm_factory):
    a = kvmpy_vm_factory(KERNEL, ready="ready", memory="32M", debug_exit=(0xF4, 4), name=NAME)
    b = kvmpy_vm_factory(KERNEL, ready=re.compile("read[y]"), memory="32M", debug_exit=(0xF4, 4), name=NAME)
    assert a.running and b.running
    assert False, "fails on purpose, with both VMs still running"

def test_kvmpy_vm_without_marker(kvmpy_vm):
    pass
'''


@pytest.mark.parametrize("process", [False, True], ids=["in-process", "process"])
def test_fixtures_boot_clean_up_and_report_consoles(pytester: pytest.Pytester, process: bool) -> None:
    name = f"plugin-test-{os.getpid()}-{pytester.path.name}"  # marks this session's child processes
    pytester.makepyfile(test_inner=_inner_tests(str(build_guest("serial_rx")), name))
    args = ["-p", "kvmpy.pytest_plugin", "-p", "no:cacheprovider"] + (["--kvmpy-process"] if process else [])
    result = pytester.runpytest_subprocess(*args, timeout=300)
    result.assert_outcomes(passed=1, failed=1, errors=1)
    out = result.stdout.str()
    # The failure report carries each VM's console; the missing marker is one clear line.
    assert out.count("kvmpy VM 0 console") == 1 and out.count("kvmpy VM 1 console") == 1
    assert "serial_rx: mode=long" in out
    assert f"({'process' if process else 'in-process'})" in out
    assert "the kvmpy_vm fixture needs @pytest.mark.kvmpy_vm(KERNEL, **options)" in out
    if process:  # every child kvmpy is gone once the session ended
        leftovers = subprocess.run(["pgrep", "-f", "--", f"-m kvmpy .*-name {name}"], capture_output=True, text=True)
        assert (leftovers.returncode, leftovers.stdout) == (1, "")  # 1: pgrep matched nothing


def test_plugin_import_is_free_of_kvmpy_api() -> None:
    code = ("import sys, kvmpy.pytest_plugin; "
            "print(sorted(m for m in sys.modules if m.startswith('kvmpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['kvmpy', 'kvmpy.pytest_plugin', 'kvmpy.version']"
