"""MsiRoutes and MsiVector on this host's real KVM: the kept irqchip routes, MSI delivery, masking, batching."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from kvmpy.devices.msi import DEFAULT_ROUTES, FIRST_MSI_GSI, MsiRoutes, MsiRoutesFull
from kvmpy.kvm import abi
from kvmpy.kvm.abi import ffi
from kvmpy.kvm.errors import KvmCapabilityError
from kvmpy.kvm.vcpu import VcpuFd
from kvmpy.kvm.vm import IrqchipRoute, MsiRoute, VmFd
from kvmpy.vcpu.thread import KICK_SIGNAL, install_kick_handler

from kvm_helpers import apic_irr, enter_real_mode, map_ram, open_vm, wait_irr  # on sys.path by tests/devices/conftest.py

pytestmark = pytest.mark.kvm_host

MSI_ADDR = 0xFEE00000  # fixed delivery to APIC ID 0


def _chip(kvm_vm: VmFd, chip_id: int):  # -> cffi struct kvm_irqchip *
    p = ffi.new("struct kvm_irqchip *")
    ffi.buffer(p)[:] = kvm_vm.get_irqchip(chip_id)
    return p


def _irr(kvm_vm: VmFd) -> tuple[int, int, int]:
    return (_chip(kvm_vm, abi.IRQCHIP_PIC_MASTER).chip.pic.irr, _chip(kvm_vm, abi.IRQCHIP_PIC_SLAVE).chip.pic.irr,
            _chip(kvm_vm, abi.IRQCHIP_IOAPIC).chip.ioapic.irr)


def _line_effects(kvm_vm: VmFd) -> list[tuple[int, int, int]]:
    """For each GSI 0-23: the request bits KVM_IRQ_LINE newly sets in (PIC master, PIC slave, IOAPIC)."""
    effects = []
    for gsi in range(24):
        before = _irr(kvm_vm)
        kvm_vm.irq_line(gsi, 1)
        after = _irr(kvm_vm)
        kvm_vm.irq_line(gsi, 0)
        effects.append(tuple(a & ~b for a, b in zip(after, before)))
    return effects


def test_the_default_table_is_the_kernels() -> None:
    """A VM whose table kvmpy replaced (with MSI routes added) routes every ISA/PCI line as KVM's own default."""
    with open_vm() as stock, open_vm() as ours:
        for v in (stock, ours):
            v.create_irqchip()
        routes = MsiRoutes(ours)
        gsi = routes.allocate()
        routes.set_route(gsi, MSI_ADDR, 0x40)
        assert routes.commits == 1 and routes.routes()[-1] == MsiRoute(FIRST_MSI_GSI, MSI_ADDR, 0x40)
        expected = _line_effects(stock)
        assert _line_effects(ours) == expected
        # And what that is: GSI n raises IOAPIC pin n, and PIC pin n for the 16 ISA IRQs.
        assert expected[4] == (1 << 4, 0, 1 << 4) and expected[20] == (0, 0, 1 << 20)
        assert expected[10][1] == 1 << 2 and expected[10][2] == 1 << 10
        assert len(DEFAULT_ROUTES) == 40 and IrqchipRoute(2, abi.IRQCHIP_PIC_MASTER, 2) in DEFAULT_ROUTES


def test_isa_irq_still_reaches_the_cpu_through_the_ioapic(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    routes = MsiRoutes(kvm_vm)
    with routes.batch():
        for _ in range(3):
            routes.set_route(routes.allocate(), MSI_ADDR, 0x60)
    ioapic = _chip(kvm_vm, abi.IRQCHIP_IOAPIC)
    ioapic.chip.ioapic.redirtbl[4] = 0x34  # unmasked, edge, fixed, vector 0x34, to APIC 0
    kvm_vm.set_irqchip(bytes(ffi.buffer(ioapic)))
    pic = _chip(kvm_vm, abi.IRQCHIP_PIC_MASTER)
    pic.chip.pic.imr = 0xFF  # so the PIC's ExtINT path stays out of the picture
    kvm_vm.set_irqchip(bytes(ffi.buffer(pic)))
    kvm_vm.irq_line(4, 1)
    kvm_vm.irq_line(4, 0)
    assert 0x34 in apic_irr(apic_vcpu)


def test_vector_delivers_through_irqfd_and_holds_while_masked(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    routes = MsiRoutes(kvm_vm)
    assert routes.use_irqfd
    vec = routes.vector()
    assert vec.gsi == FIRST_MSI_GSI and vec.masked and vec.fd >= 0
    vec.update(MSI_ADDR, 0x41)
    vec.unmask()
    vec.trigger()
    assert wait_irr(apic_vcpu, 0x41)
    vec.update(MSI_ADDR, 0x42)  # a new message re-routes the GSI
    vec.trigger()
    assert wait_irr(apic_vcpu, 0x42)
    vec.mask()
    vec.trigger()
    vec.trigger()
    assert vec.pending() and 0x43 not in apic_irr(apic_vcpu)
    vec.update(MSI_ADDR, 0x43)
    vec.unmask()  # what was held is delivered with the message in force now
    assert wait_irr(apic_vcpu, 0x43) and not vec.pending()
    vec.mask()
    vec.trigger()
    vec.clear_pending()
    assert not vec.pending()
    vec.release()
    vec.release()  # idempotent
    vec.trigger()  # ignored, never a write to a closed (or reused) fd
    assert routes.allocated() == frozenset() and routes.routes() == list(DEFAULT_ROUTES)
    left = routes.vector()
    assert left.gsi == FIRST_MSI_GSI  # the freed GSI is handed out again
    fd = left.fd
    routes.close()  # the board closes: every eventfd still open is closed, no ioctl needed
    assert left.fd == -1 and left.masked
    with pytest.raises(OSError):
        os.fstat(fd)
    left.trigger()  # ignored


def test_signal_msi_fallback_behaves_the_same(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    routes = MsiRoutes(kvm_vm, prefer_irqfd=False)
    vec = routes.vector()
    assert vec.gsi is None and vec.fd == -1
    vec.trigger()  # masked, no message: held
    vec.update(MSI_ADDR, 0x51)
    assert vec.pending() and 0x51 not in apic_irr(apic_vcpu)
    vec.unmask()
    assert 0x51 in apic_irr(apic_vcpu) and not vec.pending()
    vec.update(MSI_ADDR, 0x52)
    vec.trigger()
    assert 0x52 in apic_irr(apic_vcpu)
    assert routes.commits == 0  # no routing table involved
    vec.release()
    vec.trigger()
    with pytest.raises(ValueError, match="released"):
        vec.update(MSI_ADDR, 0x53)


def test_a_batch_is_one_ioctl_and_errors_are_clear(kvm_vm: VmFd) -> None:
    kvm_vm.create_irqchip()
    routes = MsiRoutes(kvm_vm)
    gsis = [routes.allocate() for _ in range(8)]
    assert gsis == list(range(24, 32)) and routes.commits == 0
    with routes.batch():
        for i, g in enumerate(gsis):
            routes.set_route(g, MSI_ADDR, 0x40 + i)
        routes.clear_route(gsis[0])
    assert routes.commits == 1 and len(routes.routes()) == len(DEFAULT_ROUTES) + 7
    routes.set_route(gsis[1], MSI_ADDR, 0x41)  # unchanged: no ioctl
    assert routes.commits == 1
    routes.free(gsis[3])
    assert routes.commits == 2 and routes.allocate() == gsis[3]
    with pytest.raises(ValueError, match="not allocated"):
        routes.set_route(100, MSI_ADDR, 0)
    with pytest.raises(ValueError, match="does not fit"):
        routes.set_route(gsis[1], 1 << 64, 0)


def test_the_table_has_a_limit(kvm_vm: VmFd) -> None:
    kvm_vm.create_irqchip()
    routes = MsiRoutes(kvm_vm)
    n = routes.max_routes - len(DEFAULT_ROUTES)
    got = [routes.allocate() for _ in range(n)]
    assert max(got) < routes.max_routes
    with pytest.raises(MsiRoutesFull):
        routes.allocate()
    with routes.batch():
        for g in got:
            routes.set_route(g, MSI_ADDR, 0x40)
    assert routes.commits == 1  # KVM took the fullest table it allows


def test_no_msi_without_kernel_support(kvm_vm: VmFd) -> None:
    routes = MsiRoutes(kvm_vm, prefer_irqfd=False)
    routes.use_signal_msi = False  # as on a KVM without KVM_CAP_SIGNAL_MSI
    with pytest.raises(KvmCapabilityError, match="no MSI"):
        routes.vector()


def test_vectors_from_many_threads(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    routes = MsiRoutes(kvm_vm)
    vectors = []
    lock = threading.Lock()

    def worker(i: int) -> None:
        for j in range(10):
            v = routes.vector()
            v.update(MSI_ADDR, 0x80 + i)
            v.unmask()
            v.trigger()
            if j % 2:
                v.release()
            else:
                with lock:
                    vectors.append(v)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    gsis = [v.gsi for v in vectors]
    assert len(set(gsis)) == len(gsis) == 20 and routes.allocated() == frozenset(gsis)
    assert {r.gsi for r in routes.routes() if isinstance(r, MsiRoute)} == set(gsis)
    assert all(wait_irr(apic_vcpu, 0x80 + i) for i in range(4))


def test_a_real_mode_guest_takes_the_vectors_interrupt(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    """End to end: eventfd write -> irqfd -> MSI route -> APIC -> the guest's handler runs (an OUT exit says so)."""
    ram = map_ram(kvm_vm, 0, 0, 0x10000)
    ram.mm[0x41 * 4:0x41 * 4 + 4] = (0x2000).to_bytes(4, "little")  # IVT: vector 0x41 -> 0000:2000
    ram.mm[0x1000:0x1004] = bytes([0xFB, 0xF4, 0xEB, 0xFD])  # sti; hlt; jmp hlt
    ram.mm[0x2000:0x2005] = bytes([0xB0, 0x41, 0xE6, 0x10, 0xCF])  # mov al, 0x41; out 0x10, al; iret
    enter_real_mode(apic_vcpu, 0x1000)
    vec = MsiRoutes(kvm_vm).vector()
    vec.update(MSI_ADDR, 0x41)
    vec.unmask()
    vec.trigger()
    assert wait_irr(apic_vcpu, 0x41)
    install_kick_handler()  # a watchdog kick ends KVM_RUN if the interrupt never came
    watchdog = threading.Timer(10, signal.pthread_kill, (threading.get_ident(), KICK_SIGNAL))
    watchdog.start()
    try:
        assert apic_vcpu.run(), "the guest never took the interrupt"
    finally:
        watchdog.cancel()
    assert apic_vcpu.exit_reason == abi.EXIT_IO
    direction, size, port, _, data_offset = abi.RUN_IO.unpack_from(apic_vcpu.run_mm, abi.RUN_UNION)
    assert (direction, size, port, apic_vcpu.run_mm[data_offset]) == (abi.IO_OUT, 1, 0x10, 0x41)
    assert 0x41 not in apic_irr(apic_vcpu)  # taken: in service now, no longer requested
