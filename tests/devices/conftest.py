"""Fixtures for device tests that need this host's real KVM (a VM, and a vCPU whose APIC observes interrupts).

The raw-KVM test helpers in tests/kvm/kvm_helpers.py are put on sys.path here for the device tests too.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1] / "kvm"))
from kvm_helpers import enabled_apic_vcpu, open_vm  # noqa: E402

from kvmpy.kvm.vcpu import VcpuFd  # noqa: E402
from kvmpy.kvm.vm import VmFd  # noqa: E402


@pytest.fixture
def kvm_vm() -> Iterator[VmFd]:
    with open_vm() as vm:
        yield vm


@pytest.fixture
def apic_vcpu(kvm_vm: VmFd) -> Iterator[VcpuFd]:
    """vCPU 0 of ``kvm_vm`` with an in-kernel irqchip and a software-enabled APIC."""
    vcpu = enabled_apic_vcpu(kvm_vm)
    yield vcpu
    vcpu.close()
