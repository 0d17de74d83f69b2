"""The per-vCPU CPUID policy: APIC IDs and topology agree across the leaves a kernel reads."""

from __future__ import annotations

import pytest

from kvmpy.kvm.system import CpuidEntry, Kvm
from kvmpy.vcpu.cpuid import HTT_BIT, HYPERVISOR_BIT, vcpu_cpuid

SAMPLE = [
    CpuidEntry(0, 0, 0, 0xD, 0x68747541, 0x444D4163, 0x69746E65),
    CpuidEntry(1, 0, 0, 0x800F12, 0x12345678, 0, 0),
    CpuidEntry(4, 0, 1, 0x121, 0, 0, 0),
    CpuidEntry(0xB, 0, 1, 9, 9, 9, 9),
    CpuidEntry(0xB, 1, 1, 9, 9, 9, 9),
    CpuidEntry(0x80000008, 0, 0, 0x3030, 0, 0xFFFF, 0),
]


def leaf(entries, fn, idx=0):
    return next(e for e in entries if e.function == fn and e.index == idx)


@pytest.mark.parametrize("apic_id, n", [(0, 1), (3, 4), (5, 6)])
def test_apic_id_and_counts(apic_id: int, n: int) -> None:
    out = vcpu_cpuid(SAMPLE, apic_id, n)
    l1 = leaf(out, 1)
    assert l1.ebx >> 24 == apic_id and (l1.ebx >> 16) & 0xFF == n
    assert l1.ecx & HYPERVISOR_BIT
    assert bool(l1.edx & HTT_BIT) == (n > 1)
    assert l1.ebx & 0xFFFF == 0x5678  # brand index and clflush size kept
    assert leaf(out, 0xB, 0).edx == leaf(out, 0xB, 1).edx == apic_id
    assert leaf(out, 0xB, 1).ebx == n
    assert (1 << leaf(out, 0xB, 1).eax) >= n  # the APIC ID field is wide enough
    assert leaf(out, 4).eax >> 26 == n - 1
    assert leaf(out, 0x80000008).ecx & 0xFF == n - 1
    assert leaf(out, 0) == SAMPLE[0]


@pytest.mark.kvm_host
def test_policy_built_from_the_real_supported_cpuid_is_accepted() -> None:
    with Kvm.open() as kvm:
        vm = kvm.create_vm()
        try:
            vm.create_irqchip()
            supported = kvm.supported_cpuid()
            for i in range(2):
                vm.create_vcpu(i).set_cpuid(vcpu_cpuid(supported, i, 2))
        finally:
            vm.close()
