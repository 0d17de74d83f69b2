"""VmFd on this host's real /dev/kvm: memory slots, irqchip, PIT, IRQ lines, clock, dirty log, errors."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator

import pytest

from kvmpy.kvm import abi
from kvmpy.kvm.abi import ffi
from kvmpy.kvm.errors import KvmIoctlError
from kvmpy.kvm.system import Kvm
from kvmpy.kvm.vm import IrqchipRoute, MsiRoute, VmFd

from kvm_helpers import (PAGE, apic_irr, enabled_apic_vcpu, enter_real_mode, eventfd_count, map_ram, new_eventfd,
                         wait_irr)

pytestmark = pytest.mark.kvm_host


@pytest.fixture
def kvm() -> Iterator[Kvm]:
    with Kvm.open() as k:
        yield k


@pytest.fixture
def vm(kvm: Kvm) -> Iterator[VmFd]:
    v = kvm.create_vm()
    yield v
    v.close()


def _struct(ctype: str, raw: bytes):  # -> a cffi struct pointer holding raw
    p = ffi.new(ctype)
    ffi.buffer(p)[:] = raw
    return p


def _raises(name: str, err: int):  # -> pytest.raises context checking the ioctl name and errno
    return pytest.raises(KvmIoctlError, match=rf"^{name} failed: .*\[errno {err}\]")


def test_create_vm_carries_what_its_vcpus_need(kvm: Kvm, vm: VmFd) -> None:
    assert vm.fd >= 0 and vm.fd != kvm.fd
    assert vm.vcpu_mmap_size == kvm.vcpu_mmap_size() >= PAGE
    assert vm.coalesced_ring_page == kvm.check_extension(abi.CAP_COALESCED_MMIO)
    assert vm.check_extension(abi.CAP_USER_MEMORY) == 1
    fd = vm.fd
    vm.close()
    vm.close()  # idempotent
    assert vm.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)  # the kernel fd is really closed


def test_memory_slots_add_delete_and_refuse_overlap(vm: VmFd) -> None:
    ram = map_ram(vm, 0, 0x100000, 16 * PAGE)
    with _raises("KVM_SET_USER_MEMORY_REGION", errno.EEXIST):  # overlaps slot 0
        map_ram(vm, 1, 0x100000 + 8 * PAGE, 16 * PAGE)
    with _raises("KVM_SET_USER_MEMORY_REGION", errno.EINVAL):  # not a whole number of pages
        vm.set_user_memory_region(2, 0x200000, 1000, ram.addr)
    with _raises("KVM_SET_USER_MEMORY_REGION", errno.EINVAL):  # guest address not page aligned
        vm.set_user_memory_region(2, 0x200010, PAGE, ram.addr)
    vm.set_user_memory_region(0, 0x100000, 0, ram.addr)  # size 0 deletes the slot
    map_ram(vm, 1, 0x100000 + 8 * PAGE, 16 * PAGE)  # so the range is free again


def test_irqchip_and_pit_need_creating_first(vm: VmFd) -> None:
    with _raises("KVM_GET_IRQCHIP", errno.ENXIO):
        vm.get_irqchip(abi.IRQCHIP_PIC_MASTER)
    with _raises("KVM_IRQ_LINE", errno.ENXIO):
        vm.irq_line(4, 1)
    with _raises("KVM_GET_PIT2", errno.ENXIO):
        vm.get_pit2()
    with _raises("KVM_REINJECT_CONTROL", errno.ENXIO):
        vm.set_pit_reinject(False)
    vm.set_tss_addr(0xFFFBD000)  # above 2 GiB: goes through libc, not fcntl's C int
    vm.set_identity_map_addr(0xFFFBC000)
    vm.create_irqchip()
    with _raises("KVM_CREATE_IRQCHIP", errno.EEXIST):
        vm.create_irqchip()
    vm.create_pit2()
    vm.set_pit_reinject(False)  # what the PC board does on PVM hosts
    vm.set_pit_reinject(True)


def test_irqchip_state_round_trips(vm: VmFd) -> None:
    vm.create_irqchip()
    pic = _struct("struct kvm_irqchip *", vm.get_irqchip(abi.IRQCHIP_PIC_MASTER))
    pic.chip.pic.imr = 0xA5
    vm.set_irqchip(bytes(ffi.buffer(pic)))
    assert _struct("struct kvm_irqchip *", vm.get_irqchip(abi.IRQCHIP_PIC_MASTER)).chip.pic.imr == 0xA5

    ioapic = _struct("struct kvm_irqchip *", vm.get_irqchip(abi.IRQCHIP_IOAPIC))
    assert ioapic.chip.ioapic.base_address == 0xFEC00000
    ioapic.chip.ioapic.redirtbl[3] = 0x10033  # masked, vector 0x33
    vm.set_irqchip(bytes(ffi.buffer(ioapic)))
    again = _struct("struct kvm_irqchip *", vm.get_irqchip(abi.IRQCHIP_IOAPIC))
    assert again.chip.ioapic.redirtbl[3] == 0x10033

    # An IRQ line raised on the in-kernel PIC shows in its request register.
    vm.irq_line(4, 1)
    vm.irq_line(4, 0)
    assert _struct("struct kvm_irqchip *", vm.get_irqchip(abi.IRQCHIP_PIC_MASTER)).chip.pic.irr & (1 << 4)

    with _raises("KVM_GET_IRQCHIP", errno.EINVAL):
        vm.get_irqchip(7)
    with pytest.raises(ValueError, match="saved state is 3 bytes"):
        vm.set_irqchip(b"abc")


def test_pit_state_round_trips(vm: VmFd) -> None:
    vm.create_irqchip()
    vm.create_pit2()
    pit = _struct("struct kvm_pit_state2 *", vm.get_pit2())
    pit.channels[0].count = 0x1234
    pit.channels[0].mode = 2
    pit.channels[2].gate = 1
    vm.set_pit2(bytes(ffi.buffer(pit)))
    back = _struct("struct kvm_pit_state2 *", vm.get_pit2())
    assert (back.channels[0].count, back.channels[0].mode, back.channels[2].gate) == (0x1234, 2, 1)
    with pytest.raises(ValueError, match="kernel struct is"):
        vm.set_pit2(bytes(ffi.buffer(pit)) + b"\0")


def test_clock_can_be_set(vm: VmFd) -> None:
    vm.set_clock(vm.get_clock())
    data = _struct("struct kvm_clock_data *", vm.get_clock())
    data.clock = 10 ** 12
    vm.set_clock(bytes(ffi.buffer(data)))
    now = _struct("struct kvm_clock_data *", vm.get_clock()).clock
    assert 10 ** 12 <= now < 10 ** 12 + 10 ** 10  # it kept running from there (less than 10 s later)


def test_coalesced_pio_ports_are_shared_with_vcpus(vm: VmFd) -> None:
    vm.register_coalesced(0x80, 1, pio=True)
    vcpu = vm.create_vcpu(0)
    try:
        assert vm.coalesced_pio == {0x80} and vcpu.coalesced_pio is vm.coalesced_pio
        with _raises("KVM_CREATE_VCPU", errno.EEXIST):
            vm.create_vcpu(0)
    finally:
        vcpu.close()


def test_dirty_log_sees_the_page_a_guest_wrote(vm: VmFd) -> None:
    ram = map_ram(vm, 0, 0, 16 * PAGE, abi.MEM_LOG_DIRTY_PAGES)
    map_ram(vm, 1, 0x100000, 4 * PAGE)
    with _raises("KVM_GET_DIRTY_LOG", errno.ENOENT):  # slot 1 does not log
        vm.get_dirty_log(1, 4)
    assert not vm.get_dirty_log(0, 16).any()
    code = bytes([0xC6, 0x06, 0x00, 0x30, 0x01,  # mov byte [0x3000], 1
                  0xF4])                         # hlt
    ram.mm[0x1000:0x1000 + len(code)] = code
    vcpu = vm.create_vcpu(0)
    try:
        enter_real_mode(vcpu, 0x1000)
        assert vcpu.run() and vcpu.exit_reason == abi.EXIT_HLT
    finally:
        vcpu.close()
    assert ram.mm[0x3000] == 1
    assert list(vm.get_dirty_log(0, 16).nonzero()[0]) == [3]
    assert not vm.get_dirty_log(0, 16).any()  # fetching the log reset it


# ---- fast paths: ioeventfd, irqfd, GSI routing, KVM_SIGNAL_MSI --------------------------------
MSI_ADDR = 0xFEE00000  # fixed delivery, physical destination APIC ID 0


def test_fast_path_capabilities_are_reported(vm: VmFd) -> None:
    for cap in (abi.CAP_IRQFD, abi.CAP_IOEVENTFD, abi.CAP_SIGNAL_MSI, abi.CAP_IOEVENTFD_NO_LENGTH):
        assert vm.check_extension(cap) == 1, abi.CAP_NAMES[cap]
    assert vm.check_extension(abi.CAP_IRQ_ROUTING) >= 1024  # the most routes a table may hold


def test_ioeventfd_takes_guest_writes_without_an_exit(vm: VmFd) -> None:
    ram = map_ram(vm, 0, 0, 8 * PAGE)  # MMIO at 0xC000 is outside every slot
    any_byte, match, mmio = new_eventfd(), new_eventfd(), new_eventfd()
    try:
        vm.ioeventfd(any_byte, 0x600, 1, pio=True)
        vm.ioeventfd(match, 0x601, 2, pio=True, datamatch=0x1234)
        vm.ioeventfd(mmio, 0xC000, 0, pio=False)  # length 0: any access width
        code = bytes([0xBA, 0x00, 0x06,        # mov dx, 0x600
                      0xB0, 0x07,              # mov al, 7
                      0xEE, 0xEE,              # out dx, al (twice)
                      0x42,                    # inc dx
                      0xB8, 0x34, 0x12, 0xEF,  # mov ax, 0x1234; out dx, ax  (matches)
                      0xA3, 0x00, 0xC0,        # mov [0xC000], ax (MMIO ioeventfd)
                      0xB8, 0x35, 0x12, 0xEF,  # mov ax, 0x1235; out dx, ax  (no match: exits)
                      0xA2, 0x08, 0xC0,        # mov [0xC008], al (plain MMIO: exits)
                      0xF4])                   # hlt
        ram.mm[0x1000:0x1000 + len(code)] = code
        vcpu = vm.create_vcpu(0)
        try:
            enter_real_mode(vcpu, 0x1000)
            assert vcpu.run() and vcpu.exit_reason == abi.EXIT_IO  # the first exit is the mismatch
            direction, size, port, count, data_offset = abi.RUN_IO.unpack_from(vcpu.run_mm, abi.RUN_UNION)
            assert (direction, size, port, count) == (abi.IO_OUT, 2, 0x601, 1)
            assert int.from_bytes(vcpu.run_mm[data_offset:data_offset + 2], "little") == 0x1235
            assert (eventfd_count(any_byte), eventfd_count(match), eventfd_count(mmio)) == (2, 1, 1)
            assert vcpu.run() and vcpu.exit_reason == abi.EXIT_MMIO
            phys, _, length, is_write = abi.RUN_MMIO.unpack_from(vcpu.run_mm, abi.RUN_UNION)
            assert (phys, length, is_write) == (0xC008, 1, 1)
            # Once deassigned, the port exits to userspace again.
            vm.ioeventfd(any_byte, 0x600, 1, pio=True, deassign=True)
            enter_real_mode(vcpu, 0x1000)
            assert vcpu.run() and vcpu.exit_reason == abi.EXIT_IO
            assert abi.RUN_IO.unpack_from(vcpu.run_mm, abi.RUN_UNION)[2] == 0x600
            assert eventfd_count(any_byte) == 0
        finally:
            vcpu.close()
        with _raises("KVM_IOEVENTFD", errno.ENOENT):  # nothing registered there any more
            vm.ioeventfd(any_byte, 0x600, 1, pio=True, deassign=True)
        with _raises("KVM_IOEVENTFD", errno.EEXIST):  # the same registration twice
            vm.ioeventfd(match, 0x601, 2, pio=True, datamatch=0x1234)
        with pytest.raises(ValueError, match="length must be one of"):
            vm.ioeventfd(match, 0x700, 3, pio=True)
        with pytest.raises(ValueError, match="does not fit a 2-byte"):
            vm.ioeventfd(match, 0x700, 2, pio=True, datamatch=0x10000)
        with pytest.raises(ValueError, match="does not fit a 0-byte"):
            vm.ioeventfd(match, 0x700, 0, pio=True, datamatch=0)
    finally:
        for fd in (any_byte, match, mmio):
            os.close(fd)


def test_irqfd_through_an_msi_route_reaches_the_lapic(vm: VmFd) -> None:
    vcpu = enabled_apic_vcpu(vm)
    fd = new_eventfd()
    try:
        with _raises("KVM_SET_GSI_ROUTING", errno.EINVAL):  # a GSI beyond the table's limit
            vm.set_gsi_routing([MsiRoute(vm.check_extension(abi.CAP_IRQ_ROUTING), MSI_ADDR, 0x41)])
        vm.set_gsi_routing([IrqchipRoute(4, abi.IRQCHIP_IOAPIC, 4), MsiRoute(24, MSI_ADDR, 0x41)])
        vm.irqfd(fd, 24)
        os.eventfd_write(fd, 1)
        assert wait_irr(vcpu, 0x41)
        # Re-routing the GSI changes the vector the same eventfd sends.
        vm.set_gsi_routing([MsiRoute(24, MSI_ADDR, 0x52)])
        os.eventfd_write(fd, 1)
        assert wait_irr(vcpu, 0x52)
        # Unbound, writes stay in the eventfd; binding again injects them at once.
        vm.irqfd_deassign(fd, 24)
        os.eventfd_write(fd, 1)
        vm.set_gsi_routing([MsiRoute(24, MSI_ADDR, 0x63)])
        assert 0x63 not in apic_irr(vcpu)
        vm.irqfd(fd, 24)
        assert wait_irr(vcpu, 0x63)
        with _raises("KVM_IRQFD", errno.EBUSY):  # one eventfd, one binding
            vm.irqfd(fd, 25)
    finally:
        vcpu.close()
        os.close(fd)


def test_irqfd_with_a_resample_fd_is_level_triggered(vm: VmFd) -> None:
    vm.create_irqchip()
    fd, resample = new_eventfd(), new_eventfd()
    try:
        vm.irqfd(fd, 5, resample_fd=resample)
        vm.irqfd_deassign(fd, 5)
        vm.irqfd(fd, 5)  # free for a plain binding again
    finally:
        os.close(fd)
        os.close(resample)


def test_signal_msi_delivers_to_the_lapic(vm: VmFd) -> None:
    vcpu = enabled_apic_vcpu(vm)
    try:
        assert vm.signal_msi(MSI_ADDR, 0x47) > 0
        assert 0x47 in apic_irr(vcpu)  # synchronous, unlike irqfd
        assert vm.signal_msi(MSI_ADDR | 5 << 12, 0x48) == 0  # no APIC 5: nobody took it
        assert 0x48 not in apic_irr(vcpu)
    finally:
        vcpu.close()
