"""KvmSlots: keeps KVM memory slots in step with an AddressSpace's FlatView, and owns dirty logging.

Each RAM range of the FlatView becomes one KVM slot. On every commit the
listener removes slots that disappeared and adds new ones; dirty logging is
turned on or off for all slots at once (KVM_MEM_LOG_DIRTY_PAGES). Dirty bits of
a slot that is about to be removed are fetched first so that none are lost.

Dirty sources: something other than a vCPU or the VMM's own Python that writes
guest RAM (vhost-net's kernel worker) registers with ``add_dirty_source``; it
is told when logging starts and stops, and each ``collect`` takes its log (one
bit per guest page frame) along with KVM's.

A display adapter's framebuffer block is logged always (``track_block``), whether
or not a migration logs the rest: KVM keeps one log per slot, so whoever fetches
it (migration's ``sync_slots``/``collect`` or the display's ``display_dirty``)
keeps the other's share, as QEMU's separate VGA and migration dirty bitmaps do.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from kvmpy.kvm import abi
from kvmpy.kvm.vm import VmFd
from kvmpy.memory.address_space import FlatView
from kvmpy.memory.ramblock import PAGE_SHIFT, RAMBlock

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    slot_id: int
    gpa: int
    size: int
    block: RAMBlock
    block_offset: int
    readonly: bool

    @property
    def npages(self) -> int:
        return self.size >> PAGE_SHIFT

    @property
    def key(self) -> tuple:
        return (self.gpa, self.size, id(self.block), self.block_offset, self.readonly)


class SlotLimitError(RuntimeError):
    """The guest memory map needs more KVM slots than the kernel offers."""


class DirtySource(Protocol):
    """A writer of guest RAM that KVM's dirty log does not see (e.g. the vhost-net kernel worker)."""

    def log_start(self) -> None:
        """Begin recording the guest pages it writes."""

    def log_sync(self) -> "np.ndarray | None":
        """Fetch and clear: one bool per guest page frame (index ``gpa >> PAGE_SHIFT``), or None if none."""

    def log_stop(self) -> None:
        """Stop recording (after a last ``log_sync``)."""


class KvmSlots:
    """A FlatView listener that programs KVM_SET_USER_MEMORY_REGION."""

    def __init__(self, vm: VmFd, max_slots: int) -> None:
        self.vm = vm
        self.max_slots = max_slots
        self.slots: dict[tuple, Slot] = {}
        self.log_dirty = False
        self._lock = threading.Lock()
        # Dirty pages harvested from removed slots, per block, until the next collect.
        self._harvested: dict[int, "np.ndarray"] = {}
        self._sources: list[DirtySource] = []
        self._display: set[int] = set()  # ids of blocks logged for a display, always
        self._display_pending: dict[int, "np.ndarray"] = {}  # their pages fetched by migration, not yet shown

    def _flags(self, slot: Slot) -> int:
        flags = abi.MEM_LOG_DIRTY_PAGES if self.log_dirty or id(slot.block) in self._display else 0
        return flags | (abi.MEM_READONLY if slot.readonly else 0)

    def _free_id(self) -> int:
        used = {s.slot_id for s in self.slots.values()}
        for i in range(self.max_slots):
            if i not in used:
                return i
        raise SlotLimitError(f"all {self.max_slots} KVM memory slots are in use")

    def __call__(self, view: FlatView) -> None:
        with self._lock:
            wanted = {}
            for r in view.ram_ranges():
                assert r.region.ram is not None
                if r.addr % 4096 or r.size % 4096 or r.ram_offset % 4096:
                    raise ValueError(f"RAM range {r.region.name!r} at {r.addr:#x}+{r.size:#x} is not page aligned")
                probe = Slot(-1, r.addr, r.size, r.region.ram, r.ram_offset, r.region.readonly)
                wanted[probe.key] = probe
            for key in [k for k in self.slots if k not in wanted]:
                slot = self.slots.pop(key)
                if self.log_dirty or id(slot.block) in self._display:
                    self._harvest(slot)
                self.vm.set_user_memory_region(slot.slot_id, slot.gpa, 0, 0, 0)
                log.debug("removed slot %d at %#x", slot.slot_id, slot.gpa)
            for key, probe in wanted.items():
                if key in self.slots:
                    continue
                slot = Slot(self._free_id(), probe.gpa, probe.size, probe.block, probe.block_offset, probe.readonly)
                self.vm.set_user_memory_region(slot.slot_id, slot.gpa, slot.size,
                                               slot.block.host_addr + slot.block_offset, self._flags(slot))
                self.slots[key] = slot
                log.debug("slot %d: gpa %#x size %#x -> %s+%#x", slot.slot_id, slot.gpa, slot.size,
                          slot.block.name, slot.block_offset)

    def set_dirty_logging(self, enabled: bool) -> None:
        with self._lock:
            if enabled == self.log_dirty:
                return
            if not enabled:
                for slot in self.slots.values():
                    self._harvest(slot)
            self.log_dirty = enabled
            for slot in self.slots.values():
                self.vm.set_user_memory_region(slot.slot_id, slot.gpa, slot.size,
                                               slot.block.host_addr + slot.block_offset, self._flags(slot))
            sources = list(self._sources)
        for source in sources:  # outside the lock: a source takes its device's own lock
            if enabled:
                source.log_start()
            else:
                self._harvest_source(source)
                source.log_stop()

    def add_dirty_source(self, source: DirtySource) -> None:
        """Register ``source``; it starts logging at once when dirty logging is on."""
        with self._lock:
            self._sources.append(source)
            logging_on = self.log_dirty
        if logging_on:
            source.log_start()

    def remove_dirty_source(self, source: DirtySource) -> None:
        """Unregister ``source``; what it logged so far is kept for the next ``collect``."""
        with self._lock:
            if source not in self._sources:
                return
            self._sources.remove(source)
            logging_on = self.log_dirty
        if logging_on:
            self._harvest_source(source)
            source.log_stop()

    def _harvest_source(self, source: DirtySource) -> None:
        bits = source.log_sync()
        if bits is None:
            return
        import numpy as np

        with self._lock:
            for slot in self.slots.values():
                acc = self._harvested.setdefault(id(slot.block), np.zeros(slot.block.npages, dtype=bool))
                self._fold(slot, bits, acc)

    @staticmethod
    def _fold(slot: Slot, bits: "np.ndarray", into: "np.ndarray") -> None:
        """OR the part of a guest-frame bitmap that ``slot`` maps into its block's page array."""
        lo = slot.gpa >> PAGE_SHIFT
        part = bits[lo:lo + slot.npages]
        if len(part):
            first = slot.block_offset >> PAGE_SHIFT
            into[first:first + len(part)] |= part

    def _harvest(self, slot: Slot) -> None:
        bits = self.vm.get_dirty_log(slot.slot_id, slot.npages)
        if self.log_dirty:
            self._accumulate(self._harvested, slot, bits)
        if id(slot.block) in self._display:
            self._accumulate(self._display_pending, slot, bits)

    @staticmethod
    def _accumulate(into: dict[int, "np.ndarray"], slot: Slot, bits: "np.ndarray") -> None:
        import numpy as np

        acc = into.setdefault(id(slot.block), np.zeros(slot.block.npages, dtype=bool))
        first = slot.block_offset >> PAGE_SHIFT
        acc[first:first + slot.npages] |= bits

    def track_block(self, block: RAMBlock) -> None:
        """Log ``block``'s pages always, for ``display_dirty`` (a framebuffer)."""
        with self._lock:
            if id(block) in self._display:
                return
            self._display.add(id(block))
            for slot in self.slots.values():
                if slot.block is block:
                    self.vm.set_user_memory_region(slot.slot_id, slot.gpa, slot.size,
                                                   slot.block.host_addr + slot.block_offset, self._flags(slot))

    def display_dirty(self, block: RAMBlock) -> "np.ndarray":
        """Pages of a ``track_block`` block the guest wrote since the last call (bool per page, fetch-and-clear).

        When a migration is logging too, the fetched bits are kept for its next ``collect``."""
        import numpy as np

        with self._lock:
            out = self._display_pending.pop(id(block), None)
            if out is None:
                out = np.zeros(block.npages, dtype=bool)
            for slot in self.slots.values():
                if slot.block is block:
                    bits = self.vm.get_dirty_log(slot.slot_id, slot.npages)
                    first = slot.block_offset >> PAGE_SHIFT
                    out[first:first + slot.npages] |= bits
                    if self.log_dirty:
                        self._accumulate(self._harvested, slot, bits)
            return out

    def sync_slots(self) -> list[tuple[Slot, np.ndarray]]:
        """KVM's dirty log per slot (fetch-and-clear). Empty unless logging is on."""
        with self._lock:
            if not self.log_dirty:
                return []
            out = [(s, self.vm.get_dirty_log(s.slot_id, s.npages)) for s in self.slots.values()]
            for s, bits in out:
                if id(s.block) in self._display:
                    self._accumulate(self._display_pending, s, bits)
            return out

    def collect(self, blocks: list[RAMBlock]) -> dict[RAMBlock, np.ndarray]:
        """Dirty pages per RAM block since the last collect: KVM's log merged with VMM writes."""
        out = {b: b.take_vmm_dirty() for b in blocks}
        with self._lock:
            sources = list(self._sources) if self.log_dirty else []
        for source in sources:
            frames = source.log_sync()
            if frames is not None:
                with self._lock:
                    for slot in self.slots.values():
                        if slot.block in out:
                            self._fold(slot, frames, out[slot.block])
        for slot, bits in self.sync_slots():
            if slot.block in out:
                first = slot.block_offset >> PAGE_SHIFT
                out[slot.block][first:first + slot.npages] |= bits
        with self._lock:
            for b in blocks:
                acc = self._harvested.pop(id(b), None)
                if acc is not None:
                    out[b] |= acc
        return out

    def guest_bitmap(self, view: FlatView) -> np.ndarray:
        """One guest-wide dirty bitmap indexed by guest page frame number (fetch-and-clear)."""
        import numpy as np

        ram = view.ram_ranges()
        top = max((r.end for r in ram), default=0)
        bitmap = np.zeros(top >> PAGE_SHIFT, dtype=bool)
        per_block = self.collect(list({id(r.region.ram): r.region.ram for r in ram}.values()))  # type: ignore[misc]
        for r in ram:
            block = r.region.ram
            assert block is not None
            first = r.ram_offset >> PAGE_SHIFT
            bitmap[r.addr >> PAGE_SHIFT:r.end >> PAGE_SHIFT] |= per_block[block][first:first + (r.size >> PAGE_SHIFT)]
        return bitmap
