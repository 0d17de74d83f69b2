"""MSI-X on a PCI function with this host's KVM: capability, table/PBA semantics, delivery, state, fuzz."""

from __future__ import annotations


import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kvmpy.devices.device import DeviceStateError
from kvmpy.devices.msi import DEFAULT_ROUTES, MsiRoutes
from kvmpy.devices.pci.device import Bar, BarKind, PciDevice, PciIdentity
from kvmpy.devices.pci.msix import CAP_ID_MSIX, MsiX
from kvmpy.kvm.vcpu import VcpuFd
from kvmpy.kvm.vm import MsiRoute, VmFd

from kvm_helpers import apic_irr, enabled_apic_vcpu, open_vm, wait_irr  # on sys.path by tests/devices/conftest.py

pytestmark = pytest.mark.kvm_host

CAP = 0x40
MSGCTL = CAP + 2
ENABLE, FMASK = 0x8000, 0x4000
MSI_ADDR = 0xFEE00000


class MsixFunction(PciDevice):
    """A function wired to MSI-X the way a device model does it."""

    def __init__(self, routes: MsiRoutes, nvectors: int = 4, **layout) -> None:
        self.msix = MsiX(routes, nvectors, **layout)
        bars = {layout.get("table_bar", 1), layout.get("pba_bar", 1)}
        super().__init__("msix-test", PciIdentity(0x1AF4, 0x1041, 0x0200),
                         tuple(Bar(i, BarKind.MEM32, 0x1000, self.msix.bar_device(i)) for i in sorted(bars)))

    def init_config(self) -> None:
        self.msix.attach(self, CAP)

    def config_written(self, old: bytes, addr: int, size: int) -> None:
        self.msix.config_written(addr, size)

    def config_restored(self) -> None:
        self.msix.config_changed()

    def reset(self) -> None:
        super().reset()
        self.msix.reset()


def _entry(fn: MsixFunction, i: int, data: int, masked: bool = False, address: int = MSI_ADDR) -> None:
    m = fn.msix
    m.write(16 * i, 8, address)  # a 64-bit write: address low and high
    m.write(16 * i + 8, 4, data)
    m.write(16 * i + 12, 4, int(masked))


def test_the_capability_in_config_space(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    fn = MsixFunction(MsiRoutes(kvm_vm), 5, pba_offset=0x800)
    assert fn.config_read(0x34, 1) == CAP and fn.config_read(CAP, 1) == CAP_ID_MSIX
    assert fn.config_read(MSGCTL, 2) == 4  # table size N-1
    assert fn.config_read(CAP + 4, 4) == 0x000 | 1 and fn.config_read(CAP + 8, 4) == 0x800 | 1
    fn.config_write(MSGCTL, 2, 0xFFFF)
    fn.config_write(CAP + 4, 4, 0xFFFFFFFF)
    assert fn.config_read(MSGCTL, 2) == ENABLE | FMASK | 4  # only Enable and Function Mask are writable
    assert fn.config_read(CAP + 4, 4) == 1
    assert fn.msix.enabled
    fn.config_write(MSGCTL + 1, 1, 0)  # a byte write to the upper half
    assert not fn.msix.enabled


def test_table_and_pba_registers(kvm_vm: VmFd) -> None:
    m = MsixFunction(MsiRoutes(kvm_vm), 3).msix
    assert [m.read(16 * i + 12, 4) for i in range(3)] == [1, 1, 1]  # every vector starts masked
    assert m.read(0, 8) == 0 and m.read(0x800, 8) == 0
    m.write(0, 4, 0xFEE0100F)  # the two low address bits are not kept
    m.write(12, 4, 0xFFFFFFFE)  # reserved vector-control bits read as zero
    assert (m.read(0, 4), m.read(12, 4)) == (0xFEE0100C, 0)
    m.write(16, 8, 0x1_2345_6788)  # 64-bit write: low then high dword
    assert (m.read(16, 4), m.read(20, 4), m.read(16, 8)) == (0x2345_6788, 1, 0x1_2345_6788)
    m.write(24, 8, 0xFFFF_FFFF_0000_00AB)  # data and vector control in one access
    assert (m.read(24, 4), m.read(28, 4)) == (0xAB, 1)
    m.write(25, 1, 0x77)  # a byte in the middle of the data dword
    assert m.read(24, 4) == 0x77AB and m.read(26, 2) == 0
    m.write(2, 4, 0xAABBCCDD)  # unaligned: straddles address low and high
    assert (m.read(0, 4), m.read(4, 4)) == (0xCCDD100C, 0xAABB)
    for off, size in ((0x30, 4), (0x7FC, 8), (0x808, 4), (0xFFC, 4), (0x1000, 8), (1 << 40, 4)):
        m.write(off, size, (1 << (8 * size)) - 1)  # outside the structures: dropped
        assert m.read(off, size) == 0
    m.write(0x800, 8, 0xFF)  # the PBA is read-only
    assert m.read(0x800, 8) == 0
    assert m.read(0, 3) == 0xFFFFFF and m.read(-4, 4) == 0xFFFFFFFF  # malformed accesses
    m.write(0, 16, 0)
    assert m.read(0, 4) == 0xCCDD100C


def test_notify_delivers_or_holds_in_the_pba(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    routes = MsiRoutes(kvm_vm)
    fn = MsixFunction(routes, 4)
    m = fn.msix
    assert m.notify(0) is False  # disabled: the device uses INTx
    _entry(fn, 0, 0x41)
    _entry(fn, 1, 0x42, masked=True)
    _entry(fn, 2, 0x43)
    assert routes.commits == 0  # nothing is routed while MSI-X is off
    fn.config_write(MSGCTL, 2, ENABLE)
    assert routes.commits == 1  # both unmasked vectors in one routing update
    assert m.notify(0) and wait_irr(apic_vcpu, 0x41)
    assert m.notify(1) and m.read(0x800, 8) == 0b10 and m.pending(1)
    assert 0x42 not in apic_irr(apic_vcpu)
    m.write(16 + 12, 4, 0)  # unmask vector 1: its pending message goes out
    assert wait_irr(apic_vcpu, 0x42) and m.read(0x800, 8) == 0
    # Function mask holds every vector.
    fn.config_write(MSGCTL, 2, ENABLE | FMASK)
    assert m.notify(2) and m.read(0x800, 4) == 0b100 and m.masked(0)
    fn.config_write(MSGCTL, 2, ENABLE)
    assert wait_irr(apic_vcpu, 0x43) and m.read(0x800, 4) == 0
    # A message changed while the vector is live re-routes it.
    m.write(8, 4, 0x51)
    assert m.notify(0) and wait_irr(apic_vcpu, 0x51)
    assert m.notify(99) and m.notify(0xFFFF)  # no such vector (virtio's NO_VECTOR): nothing sent
    assert {r.data for r in routes.routes() if isinstance(r, MsiRoute)} == {0x51, 0x42, 0x43}


def test_a_vector_triggered_behind_msixs_back_shows_in_the_pba(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    """E.g. vhost writes the vector's eventfd directly: while masked that shows as pending."""
    fn = MsixFunction(MsiRoutes(kvm_vm), 2)
    _entry(fn, 1, 0x44, masked=True)
    fn.config_write(MSGCTL, 2, ENABLE)
    fn.msix.vector(1).trigger()
    assert fn.msix.read(0x800, 4) == 0b10
    fn.msix.write(16 + 12, 4, 0)
    assert wait_irr(apic_vcpu, 0x44) and fn.msix.read(0x800, 4) == 0


def test_state_round_trips_and_bad_states_change_nothing(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    routes = MsiRoutes(kvm_vm)
    fn = MsixFunction(routes, 4)
    _entry(fn, 0, 0x61)
    _entry(fn, 3, 0x62, masked=True)
    fn.config_write(MSGCTL, 2, ENABLE)
    fn.msix.notify(3)
    saved, config = fn.msix.save(), fn.save()
    assert saved["pba"] == (0b1000).to_bytes(8, "little") and len(saved["table"]) == 64

    with open_vm() as target_vm:  # the migration target: another VM, another device
        target_cpu = enabled_apic_vcpu(target_vm)
        try:
            other = MsixFunction(MsiRoutes(target_vm), 4)
            other.restore(config)
            other.msix.restore(saved)
            assert other.msix.save() == saved and other.msix.enabled
            assert other.msix.notify(0) and wait_irr(target_cpu, 0x61)  # restore routed the live vector
            other.msix.write(3 * 16 + 12, 4, 0)
            assert wait_irr(target_cpu, 0x62)  # and the pending one is delivered on unmask
        finally:
            target_cpu.close()

    bad = [
        {"table": saved["table"]},
        {**saved, "extra": 1},
        {**saved, "table": saved["table"][:-1]},
        {**saved, "pba": bytes(9)},
        {**saved, "pba": (1 << 4).to_bytes(8, "little")},  # vector 4 of 4
        {**saved, "table": saved["table"][:12] + b"\x03\0\0\0" + saved["table"][16:]},  # reserved control bit
        {**saved, "table": b"\x01" + saved["table"][1:]},  # address not DWORD-aligned
        {**saved, "table": "x" * 64},
    ]
    before = fn.msix.save()
    for state in bad:
        with pytest.raises(DeviceStateError):
            fn.msix.restore(state)
        assert fn.msix.save() == before


def test_reset_gives_the_vectors_back(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    routes = MsiRoutes(kvm_vm)
    fn = MsixFunction(routes, 4)
    for i in range(4):
        _entry(fn, i, 0x40 + i)
    fn.config_write(MSGCTL, 2, ENABLE)
    assert len(routes.allocated()) == 4
    fn.reset()
    assert routes.allocated() == frozenset() and routes.routes() == list(DEFAULT_ROUTES)
    assert not fn.msix.enabled and fn.config_read(MSGCTL, 2) == 3
    assert [fn.msix.read(16 * i + 12, 4) for i in range(4)] == [1] * 4


def test_table_and_pba_in_separate_bars(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    fn = MsixFunction(MsiRoutes(kvm_vm), 70, table_bar=2, table_offset=0x100, pba_bar=3, pba_offset=0x10)
    assert fn.config_read(CAP + 4, 4) == 0x100 | 2 and fn.config_read(CAP + 8, 4) == 0x10 | 3
    table, pba = fn.bars[2].device, fn.bars[3].device
    table.write(0x100 + 69 * 16, 8, MSI_ADDR)
    table.write(0x100 + 69 * 16 + 8, 4, 0x71)
    fn.config_write(MSGCTL, 2, ENABLE)
    assert fn.msix.notify(69) and pba.read(0x18, 4) == 1 << 5  # vector 69: second qword, bit 5
    assert table.read(0x10, 4) == 0 and pba.read(0x100, 4) == 0  # each BAR decodes only its own structure
    table.write(0x100 + 69 * 16 + 12, 4, 0)
    assert wait_irr(apic_vcpu, 0x71) and pba.read(0x18, 4) == 0


def test_layouts_that_cannot_work_are_refused(kvm_vm: VmFd) -> None:
    routes = MsiRoutes(kvm_vm)
    for kw, message in (({"nvectors": 0}, "1 to 2048"), ({"nvectors": 2049}, "1 to 2048"),
                        ({"table_offset": 4}, "QWORD-aligned"), ({"pba_bar": 6}, "QWORD-aligned"),
                        ({"nvectors": 200}, "overlap"), ({"pba_offset": 0xFF8, "nvectors": 65}, "do not fit")):
        args = {"nvectors": 4, **kw}
        with pytest.raises(ValueError, match=message):
            MsiX(routes, args.pop("nvectors"), **args)
    with pytest.raises(ValueError, match="holds no MSI-X"):
        MsiX(routes, 4).bar_device(0)


# ---- fuzz ------------------------------------------------------------------------------------
NV = 5
op = st.one_of(
    st.tuples(st.just("w"), st.integers(-8, 0x1010) | st.sampled_from([0x800, 0x7FC, 0x4C, 0x50, 1 << 33]),
              st.sampled_from([0, 1, 2, 3, 4, 8, 16]), st.integers(0, (1 << 64) - 1)),
    st.tuples(st.just("r"), st.integers(-8, 0x1010), st.sampled_from([0, 1, 2, 4, 8, 9]), st.just(0)),
    st.tuples(st.just("ctl"), st.just(0), st.sampled_from([1, 2]), st.integers(0, 0xFFFF)),
    st.tuples(st.just("notify"), st.integers(-1, NV + 1), st.just(0), st.just(0)),
    st.tuples(st.just("entry"), st.integers(0, NV - 1), st.sampled_from([0, 1]), st.integers(0x20, 0xFF)),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(op, max_size=40))
def test_fuzzed_table_and_pba_accesses(ops) -> None:
    with open_vm() as kvm_vm:
        apic_vcpu = enabled_apic_vcpu(kvm_vm)
        try:
            routes = MsiRoutes(kvm_vm)
            fn = MsixFunction(routes, NV)
            m = fn.msix
            model = bytearray(m.save()["table"])
            for kind, a, size, value in ops:
                if kind == "w":
                    m.write(a, size, value)
                    if size in (1, 2, 4, 8) and a >= 0:
                        for i in range(size):
                            if 0 <= a + i < len(model):
                                model[a + i] = value >> (8 * i) & 0xFF
                    for e in range(NV):  # what the device keeps of a dword: aligned address, the mask bit
                        model[16 * e] &= 0xFC
                        model[16 * e + 12:16 * e + 16] = bytes([model[16 * e + 12] & 1, 0, 0, 0])
                elif kind == "r":
                    got = m.read(a, size)
                    assert 0 <= got < 1 << (8 * max(size, 1))
                elif kind == "ctl":
                    fn.config_write(MSGCTL + (2 - size), size, value)
                elif kind == "notify":
                    m.notify(a)
                else:  # a well-formed entry, possibly unmasked, so vectors go live
                    _entry(fn, a, value, masked=bool(size))
                    model[16 * a:16 * a + 16] = MSI_ADDR.to_bytes(8, "little") + value.to_bytes(4, "little") \
                        + bytes([size, 0, 0, 0])
                assert m.save()["table"] == bytes(model)
                assert all(m.read(16 * e + 12, 4) <= 1 for e in range(NV))
                assert m.read(0x800, 8) >> NV == 0
                ctl = fn.config_read(MSGCTL, 2)
                live = {r.gsi: (r.address, r.data) for r in routes.routes() if isinstance(r, MsiRoute)}
                for e in range(NV):
                    addr = int.from_bytes(model[16 * e:16 * e + 8], "little")
                    data = int.from_bytes(model[16 * e + 8:16 * e + 12], "little")
                    should_live = ctl & ENABLE and not ctl & FMASK and not model[16 * e + 12] & 1
                    assert m.masked(e) == (not should_live)
                    if should_live:
                        assert live[m.vector(e).gsi] == (addr, data)
            fn.reset()
            assert routes.allocated() == frozenset()
        finally:
            apic_vcpu.close()
