"""The framebuffer BAR is a KVM slot with dirty logging: refresh() redraws only the scanlines a vCPU wrote.

A real-mode guest on this host's /dev/kvm stores into the BAR (mapped through
the PCI function's BAR registers and the memory layer's KVM slots); KVM's dirty log
for that slot, not a pixel compare, tells refresh() which rows changed. A migration
that logs the same slot keeps its share of the bits.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kvmpy.devices.vga import dispi as d
from kvmpy.devices.vga.pci_vga import VgaPci
from kvmpy.kvm import abi
from kvmpy.kvm.system import Kvm
from kvmpy.kvm.vm import VmFd
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.kvm_slots import KvmSlots
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

sys.path.insert(0, str(Path(__file__).parents[2] / "kvm"))
from kvm_helpers import enter_real_mode  # noqa: E402

pytestmark = pytest.mark.kvm_host
MiB = 1 << 20
FB = 0x100000  # BAR0 (1 MiB) right above the first MiB: reachable from real mode through ES=0xFFFF


class RamBars:
    """A BarSpace over an AddressSpace: RAM BARs become RAM regions (KVM slots), others are not needed here."""

    def __init__(self, root: MemoryRegion, space: AddressSpace) -> None:
        self.root, self.space, self.regions = root, space, {}

    def map_bar(self, kind, base, size, device, name, ram=None) -> bool:  # noqa: ANN001
        region = MemoryRegion.ram_region(name, ram, 0, size) if ram is not None else MemoryRegion.io(name, size, device)
        self.root.add_subregion(base, region, priority=-1)
        self.regions[base] = region
        self.space.commit()
        return True

    def unmap_bar(self, kind, base) -> None:  # noqa: ANN001
        self.root.del_subregion(self.regions.pop(base))
        self.space.commit()


@pytest.fixture
def machine() -> Iterator[tuple[VmFd, KvmSlots, RAMBlock, VgaPci]]:
    with Kvm.open() as kvm:
        vm = kvm.create_vm()
        try:
            root = MemoryRegion.container("sys", 1 << 32)
            ram = RAMBlock.allocate("ram", 1 * MiB)
            root.add_subregion(0, MemoryRegion.ram_region("ram", ram))
            space = AddressSpace("sys", root)
            slots = KvmSlots(vm, kvm.check_extension(abi.CAP_NR_MEMSLOTS))
            space.add_listener(slots)
            space.commit()
            vga = VgaPci("vga", vgamem_mb=1, dirty_log=slots)
            vga.plug(0x10, RamBars(root, space), lambda pin, level: None)
            vga.config_write(0x10, 4, FB)
            vga.config_write(0x04, 2, 0x2)  # memory decoding on: BAR0 becomes a slot
            assert vga.mapped_bars() == {0: FB}
            yield vm, slots, ram, vga
        finally:
            vm.close()


def set_mode(vga: VgaPci, width: int, height: int, bpp: int) -> None:
    for index, value in ((d.INDEX_XRES, width), (d.INDEX_YRES, height), (d.INDEX_BPP, bpp),
                         (d.INDEX_ENABLE, d.ENABLED | d.LFB_ENABLED)):
        vga.dispi_ports.write(0, 2, index)
        vga.dispi_ports.write(1, 2, value)
    vga.legacy_ports.write(0x3C0 - 0x3B0, 1, 0x20)


def run_guest_store(vm: VmFd, ram: RAMBlock, offset: int, value: int) -> None:
    """Real mode: ES=0xFFFF, mov dword [es:di], value; hlt — one store at FB + offset (offset < 0xFFF0)."""
    di = offset + 0x10
    code = bytes([0xB8, 0xFF, 0xFF,  # mov ax, 0xffff
                  0x8E, 0xC0,  # mov es, ax
                  0xBF, di & 0xFF, di >> 8,  # mov di, imm16
                  0x66, 0xB8, *value.to_bytes(4, "little"),  # mov eax, imm32
                  0x66, 0x26, 0x89, 0x05,  # mov [es:di], eax
                  0xF4])
    ram.mv[0x1000:0x1000 + len(code)] = code
    vcpu = vm.create_vcpu(run_guest_store.count)
    run_guest_store.count += 1
    try:
        enter_real_mode(vcpu, 0x1000)
        assert vcpu.run() and vcpu.exit_reason == abi.EXIT_HLT
    finally:
        vcpu.close()


run_guest_store.count = 0  # type: ignore[attr-defined]


def test_refresh_redraws_only_the_rows_the_guest_wrote(machine) -> None:  # noqa: ANN001
    vm, slots, ram, vga = machine
    set_mode(vga, 1024, 256, 32)
    first = vga.refresh()
    assert first.resized and (first.frame.width, first.frame.height) == (1024, 256)
    assert vga.refresh().dirty == []  # an idle screen: nothing
    run_guest_store(vm, ram, 5 * 4096 + 8, 0x00FF8040)  # row 5, pixel 2 (4096 bytes a row)
    u = vga.refresh()
    assert [(r.y, r.h) for r in u.dirty] == [(5, 1)] and not u.resized
    assert u.frame.row(5)[8:12] == bytes([0x40, 0x80, 0xFF, 0x00])
    assert vga.refresh().dirty == []


def test_migration_and_display_share_the_slot_log(machine) -> None:  # noqa: ANN001
    vm, slots, ram, vga = machine
    set_mode(vga, 1024, 256, 32)
    vga.refresh()
    slots.set_dirty_logging(True)
    slots.collect([vga.vram])  # migration's first pass
    run_guest_store(vm, ram, 9 * 4096, 0x123456)
    migrated = slots.collect([vga.vram])[vga.vram]  # migration fetches first...
    assert migrated[9]
    assert [(r.y, r.h) for r in vga.refresh().dirty] == [(9, 1)]  # ...and the display still sees the row
    run_guest_store(vm, ram, 3 * 4096, 0x654321)
    assert [(r.y, r.h) for r in vga.refresh().dirty] == [(3, 1)]  # the display fetches first...
    assert slots.collect([vga.vram])[vga.vram][3]  # ...and migration still sends the page
    slots.set_dirty_logging(False)
    run_guest_store(vm, ram, 7 * 4096, 1)
    assert [(r.y, r.h) for r in vga.refresh().dirty] == [(7, 1)]  # logging stays on for the display
