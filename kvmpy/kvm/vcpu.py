"""VcpuFd: one KVM vCPU file descriptor, its mmapped kvm_run page, and its state ioctls.

State getters return raw kernel structs as bytes (``get_*``) or cffi objects
(``regs()``/``sregs()``) so that higher layers can both edit registers and save
them verbatim for migration.
"""

from __future__ import annotations

import errno
import mmap
import os
import threading
from dataclasses import dataclass, field
from typing import Iterable

from kvmpy.kvm import abi, ioctls
from kvmpy.kvm._ioctl import _libc, ioctl_buf, ioctl_int
from kvmpy.kvm.abi import ffi
from kvmpy.kvm.cpuid import CpuidEntry, pack_cpuid2
from kvmpy.kvm.errors import KvmIoctlError

# libc ioctl(2) as a bare cffi call: returns -1 and leaves errno in ffi.errno instead of raising.
# The vCPU exit loop calls it directly, as the cheapest way into KVM_RUN.
libc_ioctl = _libc.ioctl


@dataclass
class VcpuFd:
    fd: int
    vcpu_id: int
    run_mm: mmap.mmap
    coalesced_pio: set[int] = field(default_factory=set)  # shared with the VmFd
    coalesced_ring_offset: int = 0  # where the ring sits in run_mm; 0 if none
    coalesced_lock: threading.Lock = field(default_factory=threading.Lock)  # shared with the VmFd

    @classmethod
    def attach(cls, fd: int, vcpu_id: int, mmap_size: int, coalesced_pio: set[int] | None = None,
               coalesced_ring_offset: int = 0, coalesced_lock: threading.Lock | None = None) -> "VcpuFd":
        mm = mmap.mmap(fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        if coalesced_ring_offset + 4096 > mmap_size:
            coalesced_ring_offset = 0
        return cls(fd, vcpu_id, mm, coalesced_pio if coalesced_pio is not None else set(), coalesced_ring_offset,
                   coalesced_lock if coalesced_lock is not None else threading.Lock())

    def close(self) -> None:
        if self.fd >= 0:
            try:
                self.run_mm.close()
            except BufferError:
                pass  # a live memoryview still points at it; the fd close is what matters
            os.close(self.fd)
            self.fd = -1

    # ---- running ------------------------------------------------------------
    def run(self) -> bool:
        """One KVM_RUN. Returns False when it was interrupted (EINTR) before or during entry."""
        if _libc.ioctl(self.fd, ioctls.KVM_RUN, ffi.cast("unsigned long", 0)) < 0:
            err = ffi.errno
            if err == errno.EINTR or err == errno.EAGAIN:
                return False
            raise KvmIoctlError("KVM_RUN", err, os.strerror(err))
        return True

    def set_immediate_exit(self, value: bool) -> None:
        self.run_mm[abi.RUN_IMMEDIATE_EXIT] = 1 if value else 0

    @property
    def exit_reason(self) -> int:
        return int.from_bytes(self.run_mm[abi.RUN_EXIT_REASON:abi.RUN_EXIT_REASON + 4], "little")

    # ---- registers ----------------------------------------------------------
    def regs(self):  # -> cffi struct kvm_regs *
        r = ffi.new("struct kvm_regs *")
        ioctl_buf(self.fd, ioctls.KVM_GET_REGS, r)
        return r

    def set_regs(self, r) -> None:
        ioctl_buf(self.fd, ioctls.KVM_SET_REGS, r)

    def sregs(self):  # -> cffi struct kvm_sregs *
        s = ffi.new("struct kvm_sregs *")
        ioctl_buf(self.fd, ioctls.KVM_GET_SREGS, s)
        return s

    def set_sregs(self, s) -> None:
        ioctl_buf(self.fd, ioctls.KVM_SET_SREGS, s)

    def set_cpuid(self, entries: Iterable[CpuidEntry]) -> None:
        ioctl_buf(self.fd, ioctls.KVM_SET_CPUID2, ffi.buffer(pack_cpuid2(entries)))

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        raw, hdr = _msr_buffer(len(indices))
        for i, idx in enumerate(indices):
            hdr.entries[i].index = idx
        got = ioctl_buf(self.fd, ioctls.KVM_GET_MSRS, ffi.buffer(raw))
        return {hdr.entries[i].index: hdr.entries[i].data for i in range(got)}

    def set_msrs(self, values: dict[int, int]) -> int:
        raw, hdr = _msr_buffer(len(values))
        for i, (idx, data) in enumerate(values.items()):
            hdr.entries[i].index = idx
            hdr.entries[i].data = data
        return ioctl_buf(self.fd, ioctls.KVM_SET_MSRS, ffi.buffer(raw))

    def get_mp_state(self) -> int:
        st = ffi.new("struct kvm_mp_state *")
        ioctl_buf(self.fd, ioctls.KVM_GET_MP_STATE, st)
        return st.mp_state

    def set_mp_state(self, state: int) -> None:
        st = ffi.new("struct kvm_mp_state *", {"mp_state": state})
        ioctl_buf(self.fd, ioctls.KVM_SET_MP_STATE, st)

    def get_lapic_regs(self) -> bytes:
        st = ffi.new("struct kvm_lapic_state *")
        ioctl_buf(self.fd, ioctls.KVM_GET_LAPIC, st)
        return bytes(ffi.buffer(st))

    def set_lapic_regs(self, raw: bytes) -> None:
        self._set_raw("struct kvm_lapic_state *", ioctls.KVM_SET_LAPIC, raw)

    # Raw get/set pairs used by state save/restore.
    def get_raw(self, what: str) -> bytes:
        ctype, get_req, _ = _RAW_STATE[what]
        st = ffi.new(ctype)
        ioctl_buf(self.fd, get_req, st)
        return bytes(ffi.buffer(st))

    def set_raw(self, what: str, raw: bytes) -> None:
        ctype, _, set_req = _RAW_STATE[what]
        self._set_raw(ctype, set_req, raw)

    def _set_raw(self, ctype: str, request: int, raw: bytes) -> None:
        st = ffi.new(ctype)
        buf = ffi.buffer(st)
        if len(raw) != len(buf):
            raise ValueError(f"saved {ctype} is {len(raw)} bytes, expected {len(buf)}")
        buf[:] = raw
        ioctl_buf(self.fd, request, st)


_RAW_STATE = {
    "regs": ("struct kvm_regs *", ioctls.KVM_GET_REGS, ioctls.KVM_SET_REGS),
    "sregs": ("struct kvm_sregs *", ioctls.KVM_GET_SREGS, ioctls.KVM_SET_SREGS),
    "fpu": ("struct kvm_fpu *", ioctls.KVM_GET_FPU, ioctls.KVM_SET_FPU),
    "lapic": ("struct kvm_lapic_state *", ioctls.KVM_GET_LAPIC, ioctls.KVM_SET_LAPIC),
    "events": ("struct kvm_vcpu_events *", ioctls.KVM_GET_VCPU_EVENTS, ioctls.KVM_SET_VCPU_EVENTS),
    "xsave": ("struct kvm_xsave *", ioctls.KVM_GET_XSAVE, ioctls.KVM_SET_XSAVE),
    "xcrs": ("struct kvm_xcrs *", ioctls.KVM_GET_XCRS, ioctls.KVM_SET_XCRS),
    "debugregs": ("struct kvm_debugregs *", ioctls.KVM_GET_DEBUGREGS, ioctls.KVM_SET_DEBUGREGS),
}


def _msr_buffer(n: int):
    raw = ffi.new("char[]", ffi.sizeof("struct kvm_msrs") + n * ffi.sizeof("struct kvm_msr_entry"))
    hdr = ffi.cast("struct kvm_msrs *", raw)
    hdr.nmsrs = n
    return raw, hdr
