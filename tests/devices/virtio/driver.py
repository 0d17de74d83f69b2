"""The driver's half of a split virtqueue, for tests: rings in guest memory, laid out and used as Linux does.

Linux's virtio_ring keeps a free list threaded through the descriptors'
``next`` fields, takes descriptors from its head for each request, publishes
the head in the available ring and then the index, and returns a finished
chain's descriptors to the free list. ``DriverQueue`` does the same over a
real GuestMemory, and can also write any raw descriptor a hostile driver would.
"""

from __future__ import annotations

import struct

from kvmpy.devices.virtio.queue import DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, SplitQueue, need_event
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

DESC = struct.Struct("<QIHH")


def guest_memory(ram_size: int, rom_at: int | None = None, rom_size: int = 0) -> tuple[GuestMemory, RAMBlock]:
    """Guest RAM at 0 (and read-only RAM at ``rom_at``), holes elsewhere below 2**40; returns the RAM block too."""
    ram = RAMBlock.allocate("ram", ram_size)
    root = MemoryRegion.container("sys", 1 << 40)
    root.add_subregion(0, MemoryRegion.ram_region("ram", ram))
    if rom_at is not None:
        root.add_subregion(rom_at, MemoryRegion.ram_region("rom", RAMBlock.allocate("rom", rom_size), readonly=True))
    space = AddressSpace("sys", root)
    space.commit()
    return GuestMemory(space), ram


def ring_bytes(size: int) -> int:
    """Bytes the three rings of one queue take when laid out back to back (used ring 4-aligned)."""
    return (16 * size + 6 + 2 * size + 3) // 4 * 4 + 6 + 8 * size


class DriverQueue:
    def __init__(self, mem: GuestMemory, base: int, size: int, event_idx: bool = False) -> None:
        self.mem, self.size, self.event_idx = mem, size, event_idx
        self.desc = base
        self.avail = base + 16 * size
        self.used = (self.avail + 6 + 2 * size + 3) // 4 * 4
        mem.write(base, bytes(ring_bytes(size)))
        for i in range(size):  # the free list, as vring_init leaves it
            self.write_desc(i, 0, 0, 0, (i + 1) % size)
        self.free_head, self.num_free = 0, size
        self.avail_idx = 0
        self.last_used = 0
        self.chains: dict[int, list[int]] = {}  # head -> its descriptors (for freeing)

    def attach(self, q: SplitQueue, indirect: bool = True) -> SplitQueue:
        """Program the device's registers as the transport would, and activate the queue."""
        q.size, q.desc_addr, q.avail_addr, q.used_addr, q.ready = self.size, self.desc, self.avail, self.used, True
        q.activate(event_idx=self.event_idx, indirect=indirect)
        return q

    # ---- raw writes (what a hostile driver controls) -----------------------------------------

    def write_desc(self, i: int, addr: int, length: int, flags: int, nxt: int, table: int | None = None) -> None:
        self.mem.write((self.desc if table is None else table) + 16 * i, DESC.pack(addr, length, flags, nxt))

    def publish(self, head: int) -> None:
        """Put ``head`` in the next avail slot, then move the index (element before index)."""
        self.mem.write(self.avail + 4 + 2 * (self.avail_idx % self.size), struct.pack("<H", head))
        self.set_avail_idx((self.avail_idx + 1) & 0xFFFF)

    def set_avail_idx(self, idx: int) -> None:
        self.avail_idx = idx
        self.mem.write(self.avail + 2, struct.pack("<H", idx))

    def set_avail_flags(self, flags: int) -> None:
        self.mem.write(self.avail, struct.pack("<H", flags))

    def set_used_event(self, idx: int) -> None:
        self.mem.write(self.avail + 4 + 2 * self.size, struct.pack("<H", idx & 0xFFFF))

    def used_flags(self) -> int:
        return int.from_bytes(self.mem.read(self.used, 2), "little")

    def avail_event(self) -> int:
        return int.from_bytes(self.mem.read(self.used + 4 + 8 * self.size, 2), "little")

    def kick_needed(self, old: int) -> bool:
        """Linux's virtqueue_kick_prepare after publishing from avail idx ``old`` to the current one."""
        if self.event_idx:
            return need_event(self.avail_event(), self.avail_idx, old)
        return not self.used_flags() & 1  # VRING_USED_F_NO_NOTIFY

    def used_idx(self) -> int:
        return int.from_bytes(self.mem.read(self.used + 2, 2), "little")

    # ---- Linux-like requests -------------------------------------------------------------------

    def add(self, out: list[tuple[int, int]], in_: list[tuple[int, int]], indirect_at: int | None = None) -> int:
        """Queue one request: ``out`` readable then ``in_`` writable buffers; returns its head.

        With ``indirect_at``, the buffers go into an indirect table written there and the
        ring gets one INDIRECT descriptor, as Linux does for multi-buffer requests.
        """
        bufs = [(a, n, 0) for a, n in out] + [(a, n, DESC_F_WRITE) for a, n in in_]
        if indirect_at is not None:
            for i, (a, n, f) in enumerate(bufs):
                last = i == len(bufs) - 1
                self.write_desc(i, a, n, f | (0 if last else DESC_F_NEXT), 0 if last else i + 1, table=indirect_at)
            bufs = [(indirect_at, 16 * len(bufs), DESC_F_INDIRECT)]
        if len(bufs) > self.num_free:
            raise RuntimeError("driver queue full")
        used = []
        i = self.free_head
        for k, (a, n, f) in enumerate(bufs):
            nxt = int.from_bytes(self.mem.read(self.desc + 16 * i + 14, 2), "little")
            last = k == len(bufs) - 1
            self.write_desc(i, a, n, f | (0 if last else DESC_F_NEXT), nxt)
            used.append(i)
            if not last:
                i = nxt
        self.free_head = nxt
        self.num_free -= len(bufs)
        head = used[0]
        self.chains[head] = used
        self.publish(head)
        return head

    def get_used(self) -> list[tuple[int, int]]:
        """(head, len) of the chains the device gave back since the last call; frees their descriptors."""
        out = []
        idx = self.used_idx()
        while self.last_used != idx:
            slot = self.last_used % self.size
            head, n = struct.unpack("<II", self.mem.read(self.used + 4 + 8 * slot, 8))
            out.append((head, n))
            descs = self.chains.pop(head)
            self.write_desc(descs[-1], 0, 0, 0, self.free_head)
            self.free_head = head
            self.num_free += len(descs)
            self.last_used = (self.last_used + 1) & 0xFFFF
        return out
