"""Kvm: the /dev/kvm system file descriptor (API version, capabilities, CPUID, MSRs, create_vm).

The fd types form one chain, system -> vm -> vcpu: each creates the next and none
imports the one above it. ``CpuidEntry`` is re-exported here for existing callers.
"""

from __future__ import annotations

import errno
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from kvmpy.kvm import abi, ioctls
from kvmpy.kvm._ioctl import ioctl_buf, ioctl_int
from kvmpy.kvm.abi import ffi
from kvmpy.kvm.cpuid import CpuidEntry, cpuid2_buffer, unpack_cpuid2
from kvmpy.kvm.errors import (KvmApiVersionError, KvmCapabilityError, KvmIoctlError,
                              KvmUnavailableError)
from kvmpy.kvm.vm import VmFd

log = logging.getLogger(__name__)

KVM_API_VERSION = 12

# What every kvmpy VM needs from the kernel.
REQUIRED_CAPS = (abi.CAP_USER_MEMORY, abi.CAP_IRQCHIP, abi.CAP_SET_TSS_ADDR, abi.CAP_EXT_CPUID,
                 abi.CAP_PIT2, abi.CAP_IMMEDIATE_EXIT, abi.CAP_MP_STATE)


@dataclass
class Kvm:
    """An open /dev/kvm. Use ``Kvm.open()``; close with ``close()`` or a ``with`` block."""

    fd: int
    path: Path = Path("/dev/kvm")
    _caps: dict[int, int] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path = Path("/dev/kvm")) -> "Kvm":
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            raise KvmUnavailableError(
                f"{path} does not exist: load the kvm module (modprobe kvm_intel or kvm_amd) "
                "or enable virtualization in the firmware") from None
        except PermissionError:
            raise KvmUnavailableError(
                f"{path} is not accessible: run as root or add your user to the 'kvm' group "
                f"(sudo usermod -aG kvm $USER, then log in again)") from None
        except OSError as exc:
            raise KvmUnavailableError(f"cannot open {path}: {exc.strerror}") from None
        kvm = cls(fd, Path(path))
        version = ioctl_int(fd, ioctls.KVM_GET_API_VERSION)
        if version != KVM_API_VERSION:
            kvm.close()
            raise KvmApiVersionError(
                f"{path} speaks KVM API version {version}; kvmpy needs {KVM_API_VERSION}")
        return kvm

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Kvm":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check_extension(self, cap: int) -> int:
        if cap not in self._caps:
            self._caps[cap] = ioctl_int(self.fd, ioctls.KVM_CHECK_EXTENSION, cap)
        return self._caps[cap]

    def require(self, *caps: int) -> None:
        missing = [abi.CAP_NAMES.get(c, str(c)) for c in caps if not self.check_extension(c)]
        if missing:
            raise KvmCapabilityError(
                f"{self.path} lacks KVM capabilit{'ies' if len(missing) > 1 else 'y'} "
                f"{', '.join('KVM_CAP_' + m for m in missing)}, which kvmpy needs")

    def vcpu_mmap_size(self) -> int:
        return ioctl_int(self.fd, ioctls.KVM_GET_VCPU_MMAP_SIZE)

    def max_vcpus(self) -> int:
        return self.check_extension(abi.CAP_MAX_VCPUS) or self.check_extension(abi.CAP_NR_VCPUS) or 4

    def supported_cpuid(self) -> list[CpuidEntry]:
        n = abi.KVM_MAX_CPUID_ENTRIES
        while True:
            buf_full, hdr = cpuid2_buffer(n)
            try:
                ioctl_buf(self.fd, ioctls.KVM_GET_SUPPORTED_CPUID, ffi.buffer(buf_full))
            except KvmIoctlError as exc:
                if exc.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            return unpack_cpuid2(hdr)

    def msr_index_list(self) -> list[int]:
        n = 1024
        raw = ffi.new("char[]", 4 + 4 * n)
        hdr = ffi.cast("struct kvm_msr_list *", raw)
        hdr.nmsrs = n
        ioctl_buf(self.fd, ioctls.KVM_GET_MSR_INDEX_LIST, ffi.buffer(raw))
        return [hdr.indices[i] for i in range(hdr.nmsrs)]

    def create_vm(self) -> VmFd:
        """A new VM; its vCPUs get this system's kvm_run mmap size and coalesced-MMIO ring page."""
        self.require(*REQUIRED_CAPS)
        while True:
            try:
                fd = ioctl_int(self.fd, ioctls.KVM_CREATE_VM, 0)
                break
            except KvmIoctlError as exc:
                # KVM gives up creating the VM when a signal is pending (registering its MMU notifier
                # takes every mm lock interruptibly); the handler has run by now, so ask again.
                if exc.errno != errno.EINTR:
                    raise
        return VmFd(fd, vcpu_mmap_size=self.vcpu_mmap_size(),
                    coalesced_ring_page=self.check_extension(abi.CAP_COALESCED_MMIO))
