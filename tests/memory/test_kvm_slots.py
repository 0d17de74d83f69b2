"""KVM slots follow the FlatView: hotplugged RAM appears, removed RAM goes, dirty logging toggles."""

from __future__ import annotations

import pytest

from kvmpy.kvm import abi
from kvmpy.kvm.system import Kvm
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.kvm_slots import KvmSlots
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

MiB = 1 << 20
pytestmark = pytest.mark.kvm_host


def test_slots_track_commits_and_dirty_logging() -> None:
    with Kvm.open() as kvm:
        vm = kvm.create_vm()
        try:
            root = MemoryRegion.container("sys", 1 << 40)
            base = RAMBlock.allocate("base", 4 * MiB)
            root.add_subregion(0, MemoryRegion.ram_region("base", base))
            space = AddressSpace("sys", root)
            slots = KvmSlots(vm, kvm.check_extension(abi.CAP_NR_MEMSLOTS))
            space.add_listener(slots)
            space.commit()
            assert [(s.gpa, s.size) for s in slots.slots.values()] == [(0, 4 * MiB)]

            dimm = RAMBlock.allocate("dimm0", 2 * MiB)
            region = MemoryRegion.ram_region("dimm0", dimm)
            root.add_subregion(1 << 32, region)
            space.commit()
            assert sorted((s.gpa, s.size) for s in slots.slots.values()) == [(0, 4 * MiB), (1 << 32, 2 * MiB)]

            slots.set_dirty_logging(True)
            synced = slots.sync_slots()
            assert len(synced) == 2 and not any(bits.any() for _, bits in synced)
            root.del_subregion(region)
            space.commit()
            assert [(s.gpa, s.size) for s in slots.slots.values()] == [(0, 4 * MiB)]
            slots.set_dirty_logging(False)
            assert slots.sync_slots() == []
        finally:
            vm.close()
