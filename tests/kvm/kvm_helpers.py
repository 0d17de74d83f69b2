"""Guest RAM, a real-mode entry, eventfds and APIC observation for the raw KVM layer's tests (no kvmpy machine)."""

from __future__ import annotations

import contextlib
import mmap
import os
import time
from collections.abc import Iterator

from kvmpy.kvm.abi import ffi
from kvmpy.kvm.system import Kvm
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


@contextlib.contextmanager
def open_vm() -> Iterator[VmFd]:
    """A fresh VM on this host's /dev/kvm, closed afterwards."""
    with Kvm.open() as kvm:
        vm = kvm.create_vm()
        try:
            yield vm
        finally:
            vm.close()


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


# ---- the local APIC as an observer of interrupt delivery -------------------------------------
APIC_SVR, APIC_IRR, APIC_SW_ENABLE = 0xF0, 0x200, 0x100


def enabled_apic_vcpu(vm: VmFd) -> VcpuFd:
    """An in-kernel irqchip and vCPU 0 whose APIC accepts fixed interrupts (software-enabled)."""
    vm.create_irqchip()
    vcpu = vm.create_vcpu(0)
    regs = bytearray(vcpu.get_lapic_regs())
    regs[APIC_SVR + 1] |= APIC_SW_ENABLE >> 8
    vcpu.set_lapic_regs(bytes(regs))
    return vcpu


def apic_irr(vcpu: VcpuFd) -> set[int]:
    """The vectors requested in the APIC's IRR (delivered, not yet taken by the guest)."""
    regs = vcpu.get_lapic_regs()
    return {32 * i + b for i in range(8) for b in range(32)
            if int.from_bytes(regs[APIC_IRR + 16 * i:APIC_IRR + 16 * i + 4], "little") >> b & 1}


def wait_irr(vcpu: VcpuFd, vector: int, timeout: float = 2.0) -> bool:
    """irqfd injects from a kernel work queue: poll the IRR for a while."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if vector in apic_irr(vcpu):
            return True
        time.sleep(0.002)
    return False


def new_eventfd() -> int:
    return os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)


def eventfd_count(fd: int) -> int:
    """The eventfd's counter (reading resets it); 0 when it was not signalled."""
    try:
        return os.eventfd_read(fd)
    except BlockingIOError:
        return 0
