"""MigratableVm: the narrow view of a machine that migration and snapshots work through.

Migration sees only the guest RAM blocks, the dirty log, the VM state
capture/apply, the lifecycle (to pause, resume, park vCPUs and report
events) and the guest disks (to hand their images over, as QEMU inactivates
and activates them), never a machine's internals. ``kvmpy.machine.Machine``
provides it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from kvmpy.block.drive import Drive
    from kvmpy.lifecycle import Lifecycle
    from kvmpy.memory.kvm_slots import KvmSlots
    from kvmpy.memory.ramblock import RAMBlock
    from kvmpy.vmstate import VmState


class MigratableVm(Protocol):
    @property
    def lifecycle(self) -> "Lifecycle": ...

    @property
    def vmstate(self) -> "VmState": ...

    @property
    def ram_blocks(self) -> "list[RAMBlock]": ...

    @property
    def dirty_log(self) -> "KvmSlots": ...

    @property
    def drives(self) -> "list[Drive]": ...
