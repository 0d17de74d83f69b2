"""Guest RAM and a real-mode entry for the raw KVM layer's tests (no kvmpy machine involved)."""

from __future__ import annotations

import mmap

from kvmpy.kvm.abi import ffi
from kvmpy.kvm.vcpu import VcpuFd
from kvmpy.kvm.vm import VmFd

PAGE = 4096


class GuestRam:
    """Anonymous host memory for one KVM slot; ``addr`` is what KVM_SET_USER_MEMORY_REGION takes."""

    def __init__(self, size: int) -> None:
        self.mm = mmap.mmap(-1, size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.ptr = ffi.from_buffer(self.mm)
        self.addr = int(ffi.cast("uintptr_t", self.ptr))
        self.size = size


def map_ram(vm: VmFd, slot: int, gpa: int, size: int, flags: int = 0) -> GuestRam:
    ram = GuestRam(size)
    vm.set_user_memory_region(slot, gpa, size, ram.addr, flags)
    return ram


def enter_real_mode(vcpu: VcpuFd, ip: int) -> None:
    """CS:IP = 0:``ip`` with flat zero-based real-mode segments and interrupts off."""
    s = vcpu.sregs()
    for seg in (s.cs, s.ds, s.es, s.ss, s.fs, s.gs):
        seg.base, seg.selector = 0, 0
    vcpu.set_sregs(s)
    r = vcpu.regs()
    r.rip, r.rflags, r.rsp = ip, 0x2, 0
    vcpu.set_regs(r)
