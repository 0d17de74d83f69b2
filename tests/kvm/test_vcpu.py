"""VcpuFd on this host's real /dev/kvm: register and state round trips, a tiny real-mode guest, errors."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvmpy.kvm import abi
from kvmpy.kvm.errors import KvmIoctlError
from kvmpy.kvm.system import Kvm
from kvmpy.kvm.vcpu import VcpuFd
from kvmpy.kvm.vm import VmFd

from kvm_helpers import GuestRam, enter_real_mode, map_ram

pytestmark = pytest.mark.kvm_host

MSR_IA32_SYSENTER_CS = 0x174
RAW_STATE = ("regs", "sregs", "fpu", "events", "xsave", "xcrs", "debugregs")


@pytest.fixture
def vm() -> Iterator[VmFd]:
    with Kvm.open() as kvm:
        v = kvm.create_vm()
        yield v
        v.close()


@pytest.fixture
def vcpu(vm: VmFd) -> Iterator[VcpuFd]:
    c = vm.create_vcpu(0)
    yield c
    c.close()


@pytest.fixture
def ram(vm: VmFd) -> GuestRam:
    return map_ram(vm, 0, 0, 0x10000)


def test_regs_round_trip(vcpu: VcpuFd) -> None:
    r = vcpu.regs()
    r.rax, r.rbx, r.r15, r.rip, r.rflags = 0x1122334455667788, 7, 0xFFFF_FFFF_FFFF_FFFF, 0x1234, 0x202
    vcpu.set_regs(r)
    back = vcpu.regs()
    assert (back.rax, back.rbx, back.r15, back.rip, back.rflags) == \
        (0x1122334455667788, 7, 0xFFFF_FFFF_FFFF_FFFF, 0x1234, 0x202)


def test_sregs_round_trip(vcpu: VcpuFd) -> None:
    s = vcpu.sregs()
    assert s.cs.selector == 0xF000  # the reset state: the CPU starts at F000:FFF0
    s.cs.selector, s.cs.base = 0x1000, 0x10000
    s.ds.base = 0x20000
    vcpu.set_sregs(s)
    back = vcpu.sregs()
    assert (back.cs.selector, back.cs.base, back.ds.base) == (0x1000, 0x10000, 0x20000)


@pytest.mark.parametrize("what", RAW_STATE)
def test_raw_state_saves_and_restores_verbatim(vcpu: VcpuFd, what: str) -> None:
    saved = vcpu.get_raw(what)
    vcpu.set_raw(what, saved)
    assert vcpu.get_raw(what) == saved
    with pytest.raises(ValueError, match="expected"):
        vcpu.set_raw(what, saved[:-1])


def test_unknown_raw_state_is_refused(vcpu: VcpuFd) -> None:
    with pytest.raises(KeyError):
        vcpu.get_raw("nonsense")


def test_msrs_mp_state_and_cpuid(vm: VmFd, vcpu: VcpuFd) -> None:
    assert vcpu.set_msrs({MSR_IA32_SYSENTER_CS: 0x10}) == 1
    assert vcpu.get_msrs([MSR_IA32_SYSENTER_CS]) == {MSR_IA32_SYSENTER_CS: 0x10}
    assert vcpu.get_mp_state() == abi.MP_STATE_RUNNABLE
    with Kvm.open() as kvm:
        vcpu.set_cpuid(kvm.supported_cpuid())
    with pytest.raises(KvmIoctlError, match="^KVM_GET_LAPIC failed"):  # no in-kernel irqchip
        vcpu.get_lapic_regs()


def test_lapic_state_round_trips_with_an_irqchip() -> None:
    with Kvm.open() as kvm:
        vm = kvm.create_vm()
        vm.create_irqchip()
        vcpu = vm.create_vcpu(0)
        try:
            lapic = vcpu.get_lapic_regs()
            assert len(lapic) == abi.KVM_APIC_REG_SIZE
            vcpu.set_lapic_regs(lapic)
            assert vcpu.get_lapic_regs() == lapic
            with pytest.raises(ValueError):
                vcpu.set_lapic_regs(lapic + b"\0")
        finally:
            vcpu.close()
            vm.close()


def test_real_mode_guest_out_then_hlt(ram: GuestRam, vcpu: VcpuFd) -> None:
    code = bytes([0xB0, 0x42,        # mov al, 0x42
                  0xE6, 0x10,        # out 0x10, al
                  0xF4])             # hlt
    ram.mm[0x1000:0x1000 + len(code)] = code
    enter_real_mode(vcpu, 0x1000)

    assert vcpu.run() and vcpu.exit_reason == abi.EXIT_IO
    direction, size, port, count, data_offset = abi.RUN_IO.unpack_from(vcpu.run_mm, abi.RUN_UNION)
    assert (direction, size, port, count) == (abi.IO_OUT, 1, 0x10, 1)
    assert vcpu.run_mm[data_offset] == 0x42

    assert vcpu.run() and vcpu.exit_reason == abi.EXIT_HLT
    assert vcpu.regs().rip == 0x1000 + len(code)


def test_immediate_exit_returns_without_entering(ram: GuestRam, vcpu: VcpuFd) -> None:
    ram.mm[0x1000] = 0xF4  # hlt
    enter_real_mode(vcpu, 0x1000)
    vcpu.set_immediate_exit(True)
    assert vcpu.run() is False  # EINTR: the guest did not run
    assert vcpu.regs().rip == 0x1000
    vcpu.set_immediate_exit(False)
    assert vcpu.run() and vcpu.exit_reason == abi.EXIT_HLT


def test_closed_vcpu_gives_a_clear_error(vcpu: VcpuFd) -> None:
    vcpu.close()
    vcpu.close()  # idempotent
    with pytest.raises(KvmIoctlError, match=r"^KVM_GET_REGS failed: Bad file descriptor"):
        vcpu.regs()
    with pytest.raises(KvmIoctlError, match=r"^KVM_RUN failed: Bad file descriptor"):
        vcpu.run()
