"""kvmpy against QEMU: the same multiboot guests, the same flags, the same KVM; identical output and status.

QEMU boots through SeaBIOS and its multiboot option ROM, kvmpy loads the
kernel directly; a guest must not be able to tell the difference.
"""

from __future__ import annotations

import shutil

import pytest

from tests.guests.build import build_guest
from tests.guests.runner import qemu_flags, run_cli, run_qemu

pytestmark = pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None,
                                reason="qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")

CASES = [
    ("hello", "64", 1, "alpha=1 beta=two"),
    ("hello", "3500", 1, ""),
    ("hello", "4096", 1, "big"),
    ("demo", "64", 1, "cols=60 rows=16 iters=30"),
    ("smp", "64", 2, "cpus=2"),
    ("timer", "64", 1, "ticks=20 hz=100"),
    ("memwriter", "64", 1, "pages=64 stride=3"),
    ("memwriter", "64", 1, "start=0x10000000"),  # out of RAM: both must report the same failure
]


def _compare(name: str, memory: str, smp: int, append: str) -> None:
    args = qemu_flags(build_guest(name), memory, smp, append)
    qemu = run_qemu(args)
    ours = run_cli(["-enable-kvm", *args])
    assert ours.stderr == b"", ours.stderr.decode()
    assert (ours.returncode, ours.stdout.decode("latin-1")) == (qemu.status, qemu.output)


@pytest.mark.kvm_host
@pytest.mark.parametrize("name, memory, smp, append", CASES)
def test_same_output_as_qemu_on_the_host_kvm(name: str, memory: str, smp: int, append: str) -> None:
    _compare(name, memory, smp, append)


@pytest.mark.kvm_full
@pytest.mark.parametrize("name, memory, smp, append", [CASES[0], CASES[4], ("timer", "64", 1, "ticks=20 lm=0")])
def test_same_output_as_qemu_on_a_complete_kvm(name: str, memory: str, smp: int, append: str) -> None:
    _compare(name, memory, smp, append)
