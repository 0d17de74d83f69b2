"""CpuidEntry: one CPUID leaf as KVM passes it (struct kvm_cpuid_entry2), and its kvm_cpuid2 buffer.

Both the system fd (KVM_GET_SUPPORTED_CPUID) and the vCPU fd (KVM_SET_CPUID2) speak
this struct, so it lives below both of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

from kvmpy.kvm.abi import ffi


@dataclass(frozen=True)
class CpuidEntry:
    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


def cpuid2_buffer(capacity: int) -> tuple[Any, Any]:
    """A zeroed ``struct kvm_cpuid2`` with room for ``capacity`` entries: (raw char[], header pointer)."""
    raw = ffi.new("char[]", ffi.sizeof("struct kvm_cpuid2") + capacity * ffi.sizeof("struct kvm_cpuid_entry2"))
    hdr = ffi.cast("struct kvm_cpuid2 *", raw)
    hdr.nent = capacity
    return raw, hdr


def pack_cpuid2(entries: Iterable[CpuidEntry]) -> Any:
    """A ``struct kvm_cpuid2`` buffer holding ``entries`` (the char[] keeps it alive)."""
    entries = list(entries)
    raw, hdr = cpuid2_buffer(len(entries))
    for i, e in enumerate(entries):
        d = hdr.entries[i]
        d.function, d.index, d.flags = e.function, e.index, e.flags
        d.eax, d.ebx, d.ecx, d.edx = e.eax, e.ebx, e.ecx, e.edx
    return raw


def unpack_cpuid2(hdr: Any) -> list[CpuidEntry]:
    """The entries of a filled ``struct kvm_cpuid2 *``."""
    return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
            for e in (hdr.entries[i] for i in range(hdr.nent))]
