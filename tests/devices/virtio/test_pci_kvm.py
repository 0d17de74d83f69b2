"""virtio-pci with this host's real KVM: MSI-X through irqfd into the LAPIC, and a guest kick that KVM turns
into an ioeventfd signal (no exit) which the device's I/O thread serves.

The PCI plumbing is the real one (``PciRig``); its RAM is also the KVM guest's RAM, so a real-mode guest
writing the notify address and the host-side driver share the rings.
"""

from __future__ import annotations

import pytest

from kvmpy.devices.msi import MsiRoutes
from kvmpy.devices.virtio import pci as vp
from kvmpy.devices.virtio.pci import kvm_ioeventfd
from kvmpy.devices.virtio.rng import VirtioRng
from kvmpy.kvm import abi
from kvmpy.kvm.vcpu import VcpuFd
from kvmpy.kvm.vm import VmFd
from kvmpy.memory.ramblock import RAMBlock

from kvm_helpers import enter_real_mode, wait_irr  # on sys.path by tests/devices/conftest.py

from .pci_driver import BAR4_ADDR, PciRig, fresh_config_space, plug_virtio, qemu_pc, wait_used

pytestmark = pytest.mark.kvm_host
MSI_ADDR = 0xFEE00000
BUF = 0x40000


def rng_on(rig: PciRig, vm: VmFd, vectors: int = 2, bar4: int = BAR4_ADDR) -> tuple:
    return plug_virtio(rig, "virtio-rng-pci", VirtioRng(), bar4=bar4, msi=MsiRoutes(vm), vectors=vectors,
                       ioeventfd=kvm_ioeventfd(vm, "virtio-rng-pci"))


QEMU_RNG = "virtio-rng-pci,disable-legacy=on"  # its default: two MSI-X vectors


def test_config_space_with_msix_matches_qemu_default_vectors(kvm_vm: VmFd) -> None:
    mine = fresh_config_space("virtio-rng-pci", VirtioRng(), msi=MsiRoutes(kvm_vm), vectors=2)
    assert mine[0x34] == vp.MSIX_CAP_AT and mine[vp.MSIX_CAP_AT:vp.MSIX_CAP_AT + 12] == \
        bytes.fromhex("11840100 01000000 01080000")
    with qemu_pc(QEMU_RNG) as qemu:
        theirs = qemu.config_space(2 << 3)
        for reg, value in ((0x14, 0xFFFFFFFF), (0x20, 0xFFFFFFFF)):  # BAR sizing: BAR1 4 KiB, BAR4 16 KiB
            qemu.write(0xCF8, 4, 0x80000000 | (2 << 11) | reg)
            qemu.write(0xCFC, 4, value)
            assert qemu.read(0xCFC, 4) == {0x14: 0xFFFFF000, 0x20: 0xFFFFC00C}[reg]
    assert mine == theirs


def test_msix_vectors_reach_the_lapic_through_irqfd(kvm_vm: VmFd, apic_vcpu: VcpuFd) -> None:
    rig = PciRig()
    fn, d = rng_on(rig, kvm_vm)
    try:
        bar1 = 0xFD000000
        rig.cfg_write(d.devfn, 0x14, 4, bar1)
        for i, vector in ((0, 0x41), (1, 0x42)):  # queue 0 -> 0x41, config -> 0x42
            rig.mmio.write(bar1 + 16 * i, 4, MSI_ADDR)
            rig.mmio.write(bar1 + 16 * i + 8, 4, vector)
            rig.mmio.write(bar1 + 16 * i + 12, 4, 0)
        cap = vp.MSIX_CAP_AT
        rig.cfg_write(d.devfn, cap + 2, 2, 0x8000)  # MSI-X Enable
        status = d.negotiate()
        d.common_write(vp.MSIX_CONFIG, 2, 1)
        assert d.common_read(vp.MSIX_CONFIG, 2) == 1
        d.common_write(vp.Q_SELECT, 2, 0)
        d.setup_queue(0, 0x10000, vector=0)
        assert d.common_read(vp.Q_MSIX, 2) == 0
        d.common_write(vp.Q_MSIX, 2, 7)  # no such vector: NO_VECTOR
        assert d.common_read(vp.Q_MSIX, 2) == vp.NO_VECTOR
        d.common_write(vp.Q_MSIX, 2, 0)
        d.set_status(status | 4)
        q = d.queues[0]
        head = q.add([], [(BUF, 32)])
        d.kick(0)
        assert wait_used(q) == [(head, 32)]
        assert wait_irr(apic_vcpu, 0x41)
        assert d.isr() == 0 and not d.intx_level()  # MSI-X on: no ISR bits, no INTx
        fn.needs_reset("test")
        assert wait_irr(apic_vcpu, 0x42)  # the configuration-change vector
        state = fn.save()
        assert state["msix"]["table"][8] == 0x41
    finally:
        fn.close()


def test_a_guest_kick_is_taken_by_ioeventfd_without_an_exit(kvm_vm: VmFd) -> None:
    """A real-mode guest writes the notify address of queue 0; the vCPU's first exit is its HLT."""
    ram = RAMBlock.allocate("rig.ram", 0x80000)
    rig = PciRig(ram=ram)
    kvm_vm.set_user_memory_region(0, 0, ram.size, ram.host_addr)
    bar4 = 0xC0000  # below 1 MiB so real mode reaches it; outside every KVM memory slot
    fn, d = rng_on(rig, kvm_vm, vectors=0, bar4=bar4)
    vcpu = kvm_vm.create_vcpu(0)
    try:
        d.init(queue_base=0x10000)
        q = d.queues[0]
        head = q.add([], [(BUF, 48)])
        notify = bar4 + vp.NOTIFY_OFF
        code = bytes([0xB8, (notify >> 4) & 0xFF, notify >> 12,  # mov ax, notify >> 4
                      0x8E, 0xC0,                               # mov es, ax
                      0x26, 0xC7, 0x06, 0x00, 0x00, 0x00, 0x00,  # mov word [es:0], 0 (queue 0)
                      0xF4])                                    # hlt
        rig.memory.write(0x1000, code)
        enter_real_mode(vcpu, 0x1000)
        assert vcpu.run() and vcpu.exit_reason == abi.EXIT_HLT  # no MMIO exit for the kick
        assert wait_used(q) == [(head, 48)]
        assert rig.memory.read(BUF, 48) != bytes(48)
        # Moving BAR4 moves the ioeventfd: the old address now exits like any unassigned MMIO.
        rig.cfg_write(d.devfn, 0x20, 4, 0xD0000)
        enter_real_mode(vcpu, 0x1000)
        assert vcpu.run() and vcpu.exit_reason == abi.EXIT_MMIO
    finally:
        vcpu.close()
        fn.close()


# (op, offset, size, value): BAR4 accesses replayed on QEMU and on kvmpy; reads are compared.
SCRIPT = [("r", o, n, 0) for o, n in ((0x10, 2), (0x12, 2), (0x14, 1), (0x15, 1), (0x16, 2), (0x18, 2), (0x1A, 2),
                                       (0x1C, 2), (0x1E, 2), (0x20, 4), (0x24, 4), (0x14, 2), (0x12, 4), (0x20, 8),
                                       (0x38, 4), (0x1000, 1), (0x3000, 2), (0x3004, 4))] + [
    ("w", 0x00, 4, 0), ("r", 0x04, 4, 0), ("w", 0x00, 4, 2), ("r", 0x04, 4, 0), ("r", 0x00, 4, 0),
    ("w", 0x00, 4, 1), ("r", 0x04, 4, 1),  # the high feature word (value 1 marks the read)
    ("w", 0x10, 2, 0), ("r", 0x10, 2, 0), ("w", 0x10, 2, 5), ("r", 0x10, 2, 0),
    ("w", 0x16, 2, 5), ("r", 0x18, 2, 0), ("r", 0x16, 2, 0), ("w", 0x18, 2, 7), ("w", 0x16, 2, 0),
    ("w", 0x18, 2, 4), ("r", 0x18, 2, 0), ("w", 0x20, 4, 0x12345000), ("w", 0x24, 4, 0x1), ("r", 0x20, 8, 0),
    ("w", 0x28, 8, 0x2000), ("r", 0x28, 4, 0), ("r", 0x2C, 4, 0), ("w", 0x1A, 2, 1), ("r", 0x1A, 2, 0),
    ("w", 0x1A, 2, 2), ("r", 0x1A, 2, 0), ("w", 0x08, 4, 1), ("w", 0x0C, 4, 1), ("r", 0x0C, 4, 0),
    ("w", 0x08, 4, 0), ("r", 0x0C, 4, 0), ("w", 0x14, 1, 1), ("r", 0x14, 1, 0), ("w", 0x14, 1, 3), ("r", 0x14, 1, 0),
    ("w", 0x14, 1, 0), ("r", 0x14, 1, 0), ("r", 0x18, 2, 0), ("r", 0x10, 2, 0), ("r", 0x20, 4, 0),
]
RING_RESET = 1 << 8  # feature bit 40 in the high word: QEMU 7.2 offers it, kvmpy has no queue_reset register


def test_common_configuration_answers_as_qemu_does(kvm_vm: VmFd) -> None:
    theirs = []
    with qemu_pc(QEMU_RNG) as qemu:
        for reg, size, value in ((0x20, 4, BAR4_ADDR), (0x24, 4, 0), (0x04, 2, 6)):
            qemu.write(0xCF8, 4, 0x80000000 | (2 << 11) | reg)
            qemu.write(0xCFC, size, value)
        for op, off, size, value in SCRIPT:
            kind = "bwlq"[[1, 2, 4, 8].index(size)]
            if op == "w":
                qemu._cmd(f"write{kind} {BAR4_ADDR + off:#x} {value:#x}")
            else:
                theirs.append(int(qemu._cmd(f"read{kind} {BAR4_ADDR + off:#x}").split()[1], 16))
    rig = PciRig()
    fn, d = rng_on(rig, kvm_vm)
    mine = []
    try:
        for op, off, size, value in SCRIPT:
            if op == "w":
                rig.mmio.write(BAR4_ADDR + off, size, value)
            else:
                mine.append(rig.mmio.read(BAR4_ADDR + off, size))
    finally:
        fn.close()
    reads = [s for s in SCRIPT if s[0] == "r"]
    k = reads.index(("r", 0x04, 4, 1))
    assert theirs[k] == mine[k] | RING_RESET and mine[k] == 1  # VERSION_1
    theirs[k] = mine[k]
    assert list(zip(reads, mine)) == list(zip(reads, theirs))
