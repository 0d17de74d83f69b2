"""The CPUID policy of a vCPU: the host's supported CPUID with per-vCPU APIC ID and topology."""

from __future__ import annotations

from dataclasses import replace

from kvmpy.kvm.system import CpuidEntry

HYPERVISOR_BIT = 1 << 31  # leaf 1 ECX
HTT_BIT = 1 << 28  # leaf 1 EDX


def _bits_for(n: int) -> int:
    return max(0, (n - 1).bit_length())


def vcpu_cpuid(supported: list[CpuidEntry], apic_id: int, nr_vcpus: int) -> list[CpuidEntry]:
    """One socket with ``nr_vcpus`` cores, one thread each; APIC IDs equal vCPU indices."""
    out = []
    shift = _bits_for(nr_vcpus)
    for e in supported:
        if e.function == 1:
            ebx = (e.ebx & 0x0000FFFF) | (apic_id << 24) | (min(nr_vcpus, 255) << 16)
            edx = e.edx | HTT_BIT if nr_vcpus > 1 else e.edx & ~HTT_BIT
            e = replace(e, ebx=ebx, ecx=e.ecx | HYPERVISOR_BIT, edx=edx)
        elif e.function == 4:
            eax = e.eax & 0x3FF  # keep cache type/level, rewrite sharing and core counts
            if eax & 0x1F:
                eax |= (nr_vcpus - 1) << 26
            e = replace(e, eax=eax)
        elif e.function in (0xB, 0x1F):
            if e.index == 0:  # SMT level: one thread per core
                e = replace(e, eax=0, ebx=1, ecx=(1 << 8) | e.index, edx=apic_id)
            elif e.index == 1:  # core level
                e = replace(e, eax=shift, ebx=nr_vcpus, ecx=(2 << 8) | e.index, edx=apic_id)
            else:
                e = replace(e, eax=0, ebx=0, ecx=e.index, edx=apic_id)
        elif e.function == 0x80000008:
            e = replace(e, ecx=(e.ecx & ~0xF0FF) | (shift << 12) | (nr_vcpus - 1))
        out.append(e)
    return out
