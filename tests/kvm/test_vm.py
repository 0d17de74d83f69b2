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
from kvmpy.kvm.vm import VmFd

from kvm_helpers import PAGE, enter_real_mode, map_ram

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
    vm.set_tss_addr(0xFFFBD000)  # above 2 GiB: goes through libc, not fcntl's C int
    vm.set_identity_map_addr(0xFFFBC000)
    vm.create_irqchip()
    with _raises("KVM_CREATE_IRQCHIP", errno.EEXIST):
        vm.create_irqchip()
    vm.create_pit2()


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
