"""In-memory VM snapshots with fast reset: restore only the pages dirtied since the snapshot.

Fuzzing harnesses reset a VM thousands of times a second. ``Snapshot.take``
copies RAM once, turns dirty logging on and captures the VM state (the same
``VmState.capture`` migration sends); ``reset`` then parks the vCPUs, copies
back just the pages KVM (or the VMM) dirtied, and applies that state again.
The file form of a snapshot is the migration stream (``file:PATH``).

A reset into a machine whose memory or devices changed since the snapshot (a
DIMM hot-added or removed, say) is refused with ConfigMismatchError naming the
difference, before anything is touched: the RAM copies no longer match the
machine's RAM blocks, and the restored device state would not describe the
DIMMs the board has. QEMU refuses a loadvm that lacks a RAM block the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kvmpy.memory.ramblock import PAGE_SIZE, RAMBlock
from kvmpy.migration.errors import ConfigMismatchError
from kvmpy.migration.interface import MigratableVm
from kvmpy.vmstate import CheckedState, config_diffs

MAX_SLICES = 64  # above this many dirty runs, one gathered copy beats a slice copy per run


def _restore_pages(live: np.ndarray, saved: np.ndarray, dirty: np.ndarray) -> int:
    """Copy the dirty pages back; contiguous runs as slices (one memcpy each, no temporary)."""
    idx = np.flatnonzero(dirty)
    if not len(idx):
        return 0
    breaks = np.flatnonzero(np.diff(idx) != 1) + 1  # work in proportion to the dirty pages only
    if len(breaks) < MAX_SLICES:
        bounds = [0, *breaks.tolist(), len(idx)]
        for i, j in zip(bounds, bounds[1:]):
            a, b = int(idx[i]), int(idx[j - 1]) + 1
            live[a:b] = saved[a:b]
    else:
        live[idx] = saved[idx]
    return len(idx)


@dataclass
class Snapshot:
    vm: MigratableVm
    blocks: list[RAMBlock]
    ram: list[np.ndarray]  # (npages, PAGE_SIZE) copies
    state: CheckedState  # VmState.capture(), checked: clock, irqchip, PIT, vCPUs, devices
    config: dict[str, Any]  # VmState.describe() when taken: RAM blocks, devices, DIMMs
    last_reset_pages: int = 0

    @classmethod
    def take(cls, vm: MigratableVm) -> "Snapshot":
        blocks = vm.ram_blocks
        vm.dirty_log.set_dirty_logging(True)
        with vm.lifecycle.vcpus_parked():
            vm.vmstate.complete_pending_io()
            vm.dirty_log.collect(blocks)  # from now on, the log holds exactly what changed since the copy
            ram = [b.array.reshape(-1, PAGE_SIZE).copy() for b in blocks]
            state = vm.vmstate.check(vm.vmstate.capture())  # checked once, applied on every reset
            config = vm.vmstate.describe()
        return cls(vm, blocks, ram, state, config)

    def check_fits(self) -> None:
        """ConfigMismatchError, naming each difference, if the machine no longer matches the snapshot."""
        now = self.vm.vmstate.describe()
        diffs = config_diffs(now, self.config, "in the snapshot") if now != self.config else []
        if not diffs:
            live = self.vm.ram_blocks
            diffs = [f'ramblock "{b.name.removeprefix("/objects/")}" was replaced since the snapshot'
                     for a, b in zip(self.blocks, live) if a is not b]  # same name and size: unplugged, re-added
            if len(live) != len(self.blocks):
                diffs.append(f"{len(live)} RAM blocks here, {len(self.blocks)} in the snapshot")
        if diffs:
            raise ConfigMismatchError("the snapshot does not fit this machine any more: " + "; ".join(diffs))

    def reset(self) -> int:
        """Back to the snapshot; returns the number of pages rewritten. The run state is kept.

        ConfigMismatchError (and nothing changed) if a DIMM or device was added or removed since.
        """
        vm = self.vm
        with vm.lifecycle.vcpus_parked():
            self.check_fits()
            dirty = vm.dirty_log.collect(self.blocks)
            n = 0
            for block, saved in zip(self.blocks, self.ram):
                n += _restore_pages(block.array.reshape(-1, PAGE_SIZE), saved, dirty[block])
            vm.vmstate.complete_pending_io()
            vm.vmstate.apply_checked(self.state)
        self.last_reset_pages = n
        return n
