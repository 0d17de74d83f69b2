"""VmFd: one KVM virtual machine (memory slots, irqchip, PIT, IRQ lines, dirty log, vCPUs).

Also KVM's fast paths that bypass a userspace exit: irqfd (an eventfd write
raises a GSI), ioeventfd (a guest access to an address signals an eventfd
instead of exiting), the GSI routing table, and KVM_SIGNAL_MSI.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence, Union

from kvmpy.kvm import abi, ioctls
from kvmpy.kvm._ioctl import ioctl_buf, ioctl_int
from kvmpy.kvm.abi import ffi
from kvmpy.kvm.vcpu import VcpuFd

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IrqchipRoute:
    """A GSI that drives a pin of an in-kernel interrupt controller (``abi.IRQCHIP_*``)."""

    gsi: int
    chip: int
    pin: int


@dataclass(frozen=True)
class MsiRoute:
    """A GSI that sends an MSI message (the address/data pair a PCI function writes)."""

    gsi: int
    address: int
    data: int


GsiRoute = Union[IrqchipRoute, MsiRoute]


@dataclass
class VmFd:
    """A VM fd from ``Kvm.create_vm()``, which passes what its vCPUs need from the system fd."""

    fd: int
    vcpu_mmap_size: int  # KVM_GET_VCPU_MMAP_SIZE: the kvm_run mapping of every vCPU
    coalesced_ring_page: int = 0  # KVM_CAP_COALESCED_MMIO: the ring's page in that mapping; 0 if none
    # Ports registered for coalescing; shared with every vCPU, which drains the ring.
    coalesced_pio: set[int] = field(default_factory=set)
    # The ring is one per VM: the vCPU threads take turns draining it, so no write is replayed twice.
    coalesced_lock: threading.Lock = field(default_factory=threading.Lock)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ---- memory ---------------------------------------------------------
    def set_user_memory_region(self, slot: int, guest_phys_addr: int, memory_size: int,
                               userspace_addr: int, flags: int = 0) -> None:
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": guest_phys_addr,
            "memory_size": memory_size, "userspace_addr": userspace_addr})
        ioctl_buf(self.fd, ioctls.KVM_SET_USER_MEMORY_REGION, region)

    def get_dirty_log(self, slot: int, npages: int) -> "np.ndarray":
        """Fetch and reset KVM's dirty bitmap of a slot; returns one bool per page."""
        import numpy as np  # only dirty logging needs it

        words = (npages + 63) // 64
        bitmap = np.zeros(max(words, 1), dtype=np.uint64)
        log_req = ffi.new("struct kvm_dirty_log *", {
            "slot": slot, "dirty_bitmap": bitmap.ctypes.data})
        ioctl_buf(self.fd, ioctls.KVM_GET_DIRTY_LOG, log_req)
        bits = np.unpackbits(bitmap.view(np.uint8), bitorder="little")
        return bits[:npages].astype(bool)

    # ---- x86 platform -----------------------------------------------------
    def set_tss_addr(self, addr: int) -> None:
        ioctl_int(self.fd, ioctls.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        value = ffi.new("uint64_t *", addr)
        ioctl_buf(self.fd, ioctls.KVM_SET_IDENTITY_MAP_ADDR, value)

    def create_irqchip(self) -> None:
        ioctl_int(self.fd, ioctls.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = abi.PIT_SPEAKER_DUMMY) -> None:
        cfg = ffi.new("struct kvm_pit_config *", {"flags": flags})
        ioctl_buf(self.fd, ioctls.KVM_CREATE_PIT2, cfg)

    def set_pit_reinject(self, reinject: bool) -> None:
        """KVM_REINJECT_CONTROL: whether the in-kernel PIT delivers the ticks a guest missed later (KVM's
        default, QEMU's lost_tick_policy=delay) or drops them (discard)."""
        control = bytearray(32)  # struct kvm_reinject_control: u8 pit_reinject, u8 reserved[31]
        control[0] = 1 if reinject else 0
        ioctl_buf(self.fd, ioctls.KVM_REINJECT_CONTROL, control)

    def irq_line(self, irq: int, level: int) -> None:
        req = ffi.new("struct kvm_irq_level *")
        req.irq = irq
        req.level = level
        ioctl_buf(self.fd, ioctls.KVM_IRQ_LINE, req)

    def get_irqchip(self, chip_id: int) -> bytes:
        chip = ffi.new("struct kvm_irqchip *", {"chip_id": chip_id})
        ioctl_buf(self.fd, ioctls.KVM_GET_IRQCHIP, chip)
        return bytes(ffi.buffer(chip))

    def set_irqchip(self, raw: bytes) -> None:
        chip = ffi.new("struct kvm_irqchip *")
        _fill(chip, raw)
        ioctl_buf(self.fd, ioctls.KVM_SET_IRQCHIP, chip)

    def get_pit2(self) -> bytes:
        state = ffi.new("struct kvm_pit_state2 *")
        ioctl_buf(self.fd, ioctls.KVM_GET_PIT2, state)
        return bytes(ffi.buffer(state))

    def set_pit2(self, raw: bytes) -> None:
        state = ffi.new("struct kvm_pit_state2 *")
        _fill(state, raw)
        ioctl_buf(self.fd, ioctls.KVM_SET_PIT2, state)

    def get_clock(self) -> bytes:
        data = ffi.new("struct kvm_clock_data *")
        ioctl_buf(self.fd, ioctls.KVM_GET_CLOCK, data)
        return bytes(ffi.buffer(data))

    def set_clock(self, raw: bytes) -> None:
        data = ffi.new("struct kvm_clock_data *")
        _fill(data, raw)
        data.flags = 0  # only the clock value is settable here
        ioctl_buf(self.fd, ioctls.KVM_SET_CLOCK, data)

    def register_coalesced(self, addr: int, size: int, pio: bool) -> None:
        """Let KVM batch writes to this range in a ring instead of exiting (only for effect-free writes)."""
        zone = ffi.new("struct kvm_coalesced_mmio_zone *", {"addr": addr, "size": size, "pio": int(pio)})
        ioctl_buf(self.fd, ioctls.KVM_REGISTER_COALESCED_MMIO, zone)
        if pio:
            self.coalesced_pio.update(range(addr, addr + size))

    def check_extension(self, cap: int) -> int:
        return ioctl_int(self.fd, ioctls.KVM_CHECK_EXTENSION, cap)

    # ---- fast paths: irqfd, ioeventfd, GSI routing, MSI ------------------------------
    def irqfd(self, fd: int, gsi: int, resample_fd: int | None = None) -> None:
        """A write to eventfd ``fd`` raises ``gsi`` in the kernel; with ``resample_fd`` the GSI is level
        triggered and KVM signals ``resample_fd`` when the guest acknowledges it (KVM_CAP_IRQFD_RESAMPLE)."""
        req = ffi.new("struct kvm_irqfd *", {"fd": fd, "gsi": gsi})
        if resample_fd is not None:
            req.flags = abi.IRQFD_FLAG_RESAMPLE
            req.resamplefd = resample_fd
        ioctl_buf(self.fd, ioctls.KVM_IRQFD, req)

    def irqfd_deassign(self, fd: int, gsi: int) -> None:
        req = ffi.new("struct kvm_irqfd *", {"fd": fd, "gsi": gsi, "flags": abi.IRQFD_FLAG_DEASSIGN})
        ioctl_buf(self.fd, ioctls.KVM_IRQFD, req)

    def ioeventfd(self, fd: int, addr: int, length: int, *, pio: bool, datamatch: int | None = None,
                  deassign: bool = False) -> None:
        """A guest write of ``length`` bytes (0: any width) to port/MMIO ``addr`` signals eventfd ``fd``
        in the kernel, without an exit; with ``datamatch`` only writes of that value do.
        ``deassign`` removes a registration made with the same arguments."""
        if length not in abi.IOEVENTFD_LENGTHS:
            raise ValueError(f"ioeventfd length must be one of {abi.IOEVENTFD_LENGTHS}, not {length}")
        if datamatch is not None and not (length and 0 <= datamatch < 1 << (8 * length)):
            raise ValueError(f"datamatch {datamatch:#x} does not fit a {length}-byte access")
        flags = (abi.IOEVENTFD_FLAG_PIO if pio else 0) | (abi.IOEVENTFD_FLAG_DEASSIGN if deassign else 0)
        req = ffi.new("struct kvm_ioeventfd *", {"addr": addr, "len": length, "fd": fd})
        if datamatch is not None:
            flags |= abi.IOEVENTFD_FLAG_DATAMATCH
            req.datamatch = datamatch
        req.flags = flags
        ioctl_buf(self.fd, ioctls.KVM_IOEVENTFD, req)

    def set_gsi_routing(self, routes: Sequence[GsiRoute]) -> None:
        """Replace KVM's whole GSI routing table (KVM's default x86 table is gone after the first call)."""
        raw = ffi.new("char[]", ffi.sizeof("struct kvm_irq_routing")
                      + len(routes) * ffi.sizeof("struct kvm_irq_routing_entry"))
        table = ffi.cast("struct kvm_irq_routing *", raw)
        table.nr = len(routes)
        for i, route in enumerate(routes):
            entry = table.entries[i]
            entry.gsi = route.gsi
            if isinstance(route, MsiRoute):
                entry.type = abi.IRQ_ROUTING_MSI
                entry.u.msi.address_lo = route.address & 0xFFFFFFFF
                entry.u.msi.address_hi = route.address >> 32
                entry.u.msi.data = route.data
            else:
                entry.type = abi.IRQ_ROUTING_IRQCHIP
                entry.u.irqchip.irqchip = route.chip
                entry.u.irqchip.pin = route.pin
        ioctl_buf(self.fd, ioctls.KVM_SET_GSI_ROUTING, raw)

    def signal_msi(self, address: int, data: int) -> int:
        """Inject one MSI; returns KVM's answer: > 0 delivered, 0 blocked by the guest (e.g. APIC disabled)."""
        msg = ffi.new("struct kvm_msi *", {"address_lo": address & 0xFFFFFFFF, "address_hi": address >> 32,
                                          "data": data})
        return ioctl_buf(self.fd, ioctls.KVM_SIGNAL_MSI, msg)

    # ---- vCPUs ------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int) -> VcpuFd:
        fd = ioctl_int(self.fd, ioctls.KVM_CREATE_VCPU, vcpu_id)
        return VcpuFd.attach(fd, vcpu_id, self.vcpu_mmap_size, self.coalesced_pio,
                             self.coalesced_ring_page * mmap.PAGESIZE, self.coalesced_lock)


def _fill(ptr: object, raw: bytes) -> None:
    """Copy saved bytes into a cffi struct, refusing a size mismatch."""
    buf = ffi.buffer(ptr)
    if len(raw) != len(buf):
        raise ValueError(f"saved state is {len(raw)} bytes, the kernel struct is {len(buf)}")
    buf[:] = raw
