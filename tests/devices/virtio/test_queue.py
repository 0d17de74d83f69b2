"""SplitQueue against a Linux-like driver over real guest memory: chains, indirect tables, EVENT_IDX, and every
rule a hostile driver can break (each test fails if the check it names is removed); plus a seeded fuzz run."""

from __future__ import annotations

import contextlib
import random
import signal
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from kvmpy.devices.device import DeviceStateError
from kvmpy.devices.virtio.queue import (DESC_F_INDIRECT, DESC_F_NEXT, DESC_F_WRITE, MAX_INDIRECT, Chain,
                                        SplitQueue, VirtQueueError, need_event)
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

from .driver import DriverQueue, guest_memory

MiB = 1 << 20
RAM = 4 * MiB      # RAM at [0, 4 MiB)
ROM = 8 * MiB      # 64 KiB read-only RAM at 8 MiB; everything else is a hole
HOLE = 6 * MiB
RING = 0x1000      # rings of the queue under test
DATA = 0x10000     # buffers


@pytest.fixture(scope="module")
def machine():
    return guest_memory(RAM, ROM, 64 * 1024)


@pytest.fixture
def mem(machine):
    m, ram = machine
    ram.array[:] = 0
    return m


def queue(mem, size=16, max_size=256, event_idx=False, indirect=True):
    drv = DriverQueue(mem, RING, size, event_idx=event_idx)
    return drv, drv.attach(SplitQueue(mem, max_size), indirect=indirect)


# ---- ordinary operation -------------------------------------------------------------------------

def test_request_round_trip_like_linux(mem) -> None:
    drv, q = queue(mem)
    mem.write(DATA, b"hello, ")
    mem.write(DATA + 0x100, b"device")
    head = drv.add([(DATA, 7), (DATA + 0x100, 6)], [(DATA + 0x1000, 4), (DATA + 0x2000, 100)])
    assert q.has_available()
    chain = q.pop()
    assert chain.head == head and chain.readable_len == 13 and chain.writable_len == 104
    assert q.read(chain) == b"hello, device"
    assert q.read(chain, 5, 4) == b", de"
    assert q.read(chain, 10) == b"ice"
    assert q.write(chain, b"0123456789") == 10
    assert mem.read(DATA + 0x1000, 4) == b"0123" and mem.read(DATA + 0x2000, 6) == b"456789"
    assert q.write(chain, b"x" * 200, offset=100) == 4  # truncated at the end of the writable buffers
    q.push(chain, 10)
    assert q.pop() is None and not q.has_available()
    assert drv.get_used() == [(head, 10)]


def test_out_of_order_completion_reuses_descriptors(mem) -> None:
    drv, q = queue(mem, size=8)
    for rnd in range(40):  # more requests than descriptors: the free list must come back intact
        heads = [drv.add([(DATA + i, 1)], [(DATA + 0x100 + i, 1)]) for i in range(4)]
        chains = [q.pop() for _ in heads]
        assert [c.head for c in chains] == heads
        for c in reversed(chains):
            q.write(c, bytes([rnd]))
            q.push(c, 1)
        assert sorted(drv.get_used()) == sorted((h, 1) for h in heads)
    assert drv.num_free == 8


def test_indirect_chain(mem) -> None:
    drv, q = queue(mem)
    mem.write(DATA, b"abc")
    bufs_in = [(DATA + 0x1000 + 0x100 * i, 0x10) for i in range(20)]  # more buffers than the queue size
    head = drv.add([(DATA, 3)], bufs_in, indirect_at=0x8000)
    chain = q.pop()
    assert chain.head == head and chain.readable == [(DATA, 3)] and chain.writable == bufs_in
    assert q.read(chain) == b"abc"
    data = bytes(range(256)) + bytes(64)
    assert q.write(chain, data) == 320
    assert b"".join(mem.read(a, n) for a, n in bufs_in) == data
    q.push(chain, 320)
    assert drv.get_used() == [(head, 320)]


def test_direct_descriptors_then_an_indirect_table(mem) -> None:
    drv, q = queue(mem)
    drv.write_desc(0, DATA, 4, DESC_F_NEXT, 1)
    drv.write_desc(1, 0x8000, 32, DESC_F_INDIRECT | DESC_F_WRITE, 0)  # WRITE on the table descriptor is ignored
    drv.write_desc(0, DATA + 0x10, 8, DESC_F_NEXT, 1, table=0x8000)
    drv.write_desc(1, DATA + 0x20, 8, DESC_F_WRITE, 0, table=0x8000)
    drv.publish(0)
    chain = q.pop()
    assert chain.readable == [(DATA, 4), (DATA + 0x10, 8)] and chain.writable == [(DATA + 0x20, 8)]


def test_avail_ring_wraps_past_65536(mem) -> None:
    drv, q = queue(mem, size=4)
    start = 65534
    q.restore({**q.save(), "next_avail": start, "next_used": start})
    drv.avail_idx = drv.last_used = start
    mem.write(drv.used + 2, struct.pack("<H", start))
    for n in range(10):
        head = drv.add([(DATA, 1)], [])
        chain = q.pop()
        assert chain.head == head
        q.push(chain, 0)
        assert drv.get_used() == [(head, 0)]
    assert q.next_avail == q.next_used == (start + 10) & 0xFFFF == 8


def test_zero_length_descriptors_are_skipped(mem) -> None:
    drv, q = queue(mem)
    drv.write_desc(0, HOLE, 0, DESC_F_NEXT, 1)  # no bytes, so its address is never touched
    drv.write_desc(1, DATA, 4, DESC_F_WRITE, 0)
    drv.publish(0)
    chain = q.pop()
    assert chain.readable == [] and chain.writable == [(DATA, 4)]


def test_undo_pop_gives_the_chain_again(mem) -> None:
    drv, q = queue(mem)
    a = drv.add([(DATA, 1)], [])
    b = drv.add([(DATA, 2)], [])
    assert q.pop().head == a
    q.undo_pop()
    assert [q.pop().head, q.pop().head] == [a, b]


def test_push_failed_returns_a_bad_chains_head(mem) -> None:
    drv, q = queue(mem)
    drv.write_desc(3, HOLE, 8, 0, 0)
    drv.publish(3)
    with pytest.raises(VirtQueueError) as err:
        q.pop()
    assert err.value.head == 3
    q.push_failed(err.value.head)
    assert drv.used_idx() == 1
    with pytest.raises(ValueError):
        q.push(Chain(0, writable=[(DATA, 4)], writable_len=4), 5)  # a device bug, not the driver's


# ---- notifications -------------------------------------------------------------------------------

def test_need_event_matches_its_definition_across_the_wrap() -> None:
    rng = random.Random(1)
    cases = [(0xFFFF, 0x0000, 0xFFFE), (0x0000, 0x0001, 0xFFFF), (0xFFFF, 0xFFFF, 0xFFFE), (5, 5, 5)]
    for _ in range(3000):
        old = rng.choice([rng.randrange(65536), 65535 - rng.randrange(300)])
        cases.append((rng.choice([rng.randrange(65536), (old + rng.randrange(-10, 300)) & 0xFFFF]),
                      (old + rng.randrange(300)) & 0xFFFF, old))
    for event, new, old in cases:
        # the index moved old -> new (forwards, mod 2**16): was event one of the values it left behind?
        passed = {(old + k) & 0xFFFF for k in range((new - old) & 0xFFFF)}
        assert need_event(event, new, old) == (event in passed), (event, new, old)
    assert need_event(0xFFFF, 0x0000, 0xFFFE) and need_event(0, 1, 0xFFFF) and not need_event(1, 1, 0xFFFF)


def test_event_idx_interrupts_only_when_used_event_is_passed(mem) -> None:
    drv, q = queue(mem, size=8, event_idx=True)
    start = 65533
    q.restore({**q.save(), "next_avail": start, "next_used": start})
    drv.avail_idx = drv.last_used = start
    mem.write(drv.used + 2, struct.pack("<H", start))

    def one() -> bool:
        drv.add([(DATA, 1)], [])
        q.push(q.pop(), 0)
        drv.get_used()
        return q.should_notify()

    drv.set_used_event(start)
    assert one()                          # first signal: always (nothing signalled yet)
    drv.set_used_event(start + 2)         # "interrupt me when used idx passes start+2"
    assert not one()                      # used idx start+2: not yet past it
    assert one()                          # start+3 == 0 after the wrap: passed 65535
    assert not q.should_notify()          # nothing new pushed
    drv.set_used_event(5)
    assert [one() for _ in range(6)] == [False] * 5 + [True]


@pytest.mark.parametrize("event_idx", [True, False])
def test_driver_kicks_again_after_every_drain(mem, event_idx) -> None:
    drv, q = queue(mem, event_idx=event_idx)
    for _ in range(5):  # a device that never calls set_notification still hears every new batch
        old = drv.avail_idx
        drv.add([(DATA, 1)], [])
        drv.add([(DATA, 1)], [])
        assert drv.kick_needed(old)
        while (chain := q.pop()) is not None:
            q.push(chain, 0)
        drv.get_used()
    q.set_notification(False)  # a device working through a batch wants no kicks
    old = drv.avail_idx
    drv.add([(DATA, 1)], [])
    assert q.pop() is not None and q.pop() is None
    drv.add([(DATA, 1)], [])
    assert not drv.kick_needed(old + 1)
    q.set_notification(True)
    assert q.has_available()


def test_no_interrupt_flag_without_event_idx(mem) -> None:
    drv, q = queue(mem)
    drv.add([(DATA, 1)], [])
    q.push(q.pop(), 0)
    assert q.should_notify()
    drv.set_avail_flags(1)  # VRING_AVAIL_F_NO_INTERRUPT
    drv.add([(DATA, 1)], [])
    q.push(q.pop(), 0)
    assert not q.should_notify()


def test_set_notification(mem) -> None:
    drv, q = queue(mem)
    q.set_notification(False)
    assert drv.used_flags() == 1  # VRING_USED_F_NO_NOTIFY
    q.set_notification(True)
    assert drv.used_flags() == 0
    drv2, q2 = queue(mem, event_idx=True)
    for _ in range(3):
        drv2.add([(DATA, 1)], [])
    q2.set_notification(True)
    assert drv2.avail_event() == 3  # kick me when you move past what I have seen
    assert q2.has_available()


# ---- hostile drivers: activation ----------------------------------------------------------------

@pytest.mark.parametrize("size", [0, 3, 24, 512])
def test_size_must_be_a_power_of_two_within_max(mem, size) -> None:
    q = SplitQueue(mem, 256)
    q.size, q.desc_addr, q.avail_addr, q.used_addr = size, RING, RING + 0x4000, RING + 0x8000
    with pytest.raises(VirtQueueError, match="power of two"):
        q.activate(False, False)


@pytest.mark.parametrize("reg,addr", [("desc_addr", RING + 8), ("avail_addr", RING + 0x4001),
                                      ("used_addr", RING + 0x8002)])
def test_rings_must_be_aligned(mem, reg, addr) -> None:
    q = SplitQueue(mem, 16)
    q.desc_addr, q.avail_addr, q.used_addr = RING, RING + 0x4000, RING + 0x8000
    setattr(q, reg, addr)
    with pytest.raises(VirtQueueError, match="misaligned"):
        q.activate(False, False)


@pytest.mark.parametrize("reg,addr", [("desc_addr", HOLE), ("avail_addr", RAM - 16), ("used_addr", ROM),
                                      ("used_addr", (1 << 64) - 64)])
def test_rings_must_lie_in_ram(mem, reg, addr) -> None:
    q = SplitQueue(mem, 16)
    q.desc_addr, q.avail_addr, q.used_addr = RING, RING + 0x4000, RING + 0x8000
    setattr(q, reg, addr)
    with pytest.raises(VirtQueueError):
        q.activate(False, False)
    assert not q.active


# ---- hostile drivers: chains --------------------------------------------------------------------

@contextlib.contextmanager
def deadline(seconds: int):
    """Fail (rather than hang) if the block runs longer than ``seconds``: a missed loop check spins forever."""
    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def bad(q, match) -> None:
    with deadline(10), pytest.raises(VirtQueueError, match=match):
        q.pop()


def test_head_beyond_the_table(mem) -> None:
    drv, q = queue(mem)
    drv.publish(16)
    bad(q, "names descriptor 16")


def test_next_beyond_the_table(mem) -> None:
    drv, q = queue(mem)
    drv.write_desc(0, DATA, 4, DESC_F_NEXT, 16)
    drv.publish(0)
    bad(q, "links to 16")


def test_loop_is_cut_at_the_queue_size(mem) -> None:
    drv, q = queue(mem)
    drv.write_desc(0, DATA, 4, DESC_F_NEXT, 1)
    drv.write_desc(1, DATA, 4, DESC_F_NEXT, 0)
    drv.publish(0)
    bad(q, "a loop")


def test_avail_index_may_run_ahead_by_at_most_the_size(mem) -> None:
    drv, q = queue(mem, size=4)
    drv.set_avail_idx(4)  # four heads of descriptor 0 (zeroed: an empty readable buffer): fine
    assert [q.pop().head for _ in range(4)] == [0] * 4
    drv.set_avail_idx(9)
    bad(q, "more than the queue size")
    drv.set_avail_idx(3)  # moved backwards: 65535 ahead
    bad(q, "more than the queue size")


def test_readable_after_writable(mem) -> None:
    drv, q = queue(mem)
    drv.write_desc(0, DATA, 4, DESC_F_WRITE | DESC_F_NEXT, 1)
    drv.write_desc(1, DATA + 16, 4, 0, 0)
    drv.publish(0)
    bad(q, "readable descriptor after a writable")
    drv.write_desc(2, DATA, 0, DESC_F_WRITE | DESC_F_NEXT, 3)  # an empty writable buffer still orders
    drv.write_desc(3, DATA + 16, 4, 0, 0)
    drv.publish(2)
    bad(q, "readable descriptor after a writable")


@pytest.mark.parametrize("first,second,match", [
    ((DATA, 4, DESC_F_WRITE | DESC_F_NEXT, 1), (DATA, 4, 0, 0), "readable descriptor after a writable"),
    ((DATA, 4, DESC_F_NEXT, 2), (DATA, 4, 0, 0), "links to 2, its table holds 2"),  # 2 entries: 2 is past it
    ((DATA, 4, DESC_F_NEXT, 1), (DATA, 4, DESC_F_NEXT, 0), "a loop"),
])
def test_bad_chain_inside_an_indirect_table(mem, first, second, match) -> None:
    drv, q = queue(mem)
    drv.write_desc(0, *first, table=0x8000)
    drv.write_desc(1, *second, table=0x8000)
    drv.write_desc(0, 0x8000, 32, DESC_F_INDIRECT, 0)
    drv.publish(0)
    bad(q, match)


def test_buffers_must_lie_in_ram(mem) -> None:
    drv, q = queue(mem)
    for i, (addr, n, f) in enumerate([(HOLE, 1, 0), (RAM - 4, 8, 0), (ROM, 4, DESC_F_WRITE)]):
        drv.write_desc(i, addr, n, f, 0)
        drv.publish(i)
        with pytest.raises(VirtQueueError, match="buffer") as err:
            q.pop()
        assert err.value.head == i
    drv.write_desc(4, ROM, 4, 0, 0)  # read-only memory is fine for a readable buffer
    drv.publish(4)
    assert q.pop().readable == [(ROM, 4)]


def test_buffer_may_not_wrap_the_address_space(mem) -> None:
    drv, q = queue(mem)
    drv.write_desc(0, (1 << 64) - 16, 32, DESC_F_WRITE, 0)
    drv.publish(0)
    bad(q, "wraps the address space")


def test_total_length_is_bounded(mem) -> None:
    drv, q = queue(mem)
    n = (1 << 32) // RAM + 1  # that many 4 MiB buffers (all of RAM, overlapping) hold more than 2**32 bytes
    table = b"".join(struct.pack("<QIHH", 0, RAM, DESC_F_WRITE | (DESC_F_NEXT if i < n - 1 else 0), i + 1)
                     for i in range(n))
    mem.write(0x8000, table)
    drv.write_desc(0, 0x8000, len(table), DESC_F_INDIRECT, 0)
    drv.publish(0)
    bad(q, "more than 2\\*\\*32 bytes")


def test_indirect_needs_the_feature(mem) -> None:
    drv, q = queue(mem, indirect=False)
    drv.add([(DATA, 4)], [], indirect_at=0x8000)
    bad(q, "without the negotiated INDIRECT_DESC")


def test_indirect_with_next(mem) -> None:
    drv, q = queue(mem)
    drv.write_desc(0, DATA, 4, 0, 0, table=0x8000)
    drv.write_desc(0, 0x8000, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1)
    drv.write_desc(1, DATA, 4, 0, 0)
    drv.publish(0)
    bad(q, "INDIRECT descriptor with NEXT")


def test_nested_indirect(mem) -> None:
    drv, q = queue(mem)
    drv.write_desc(0, DATA, 4, 0, 0, table=0x9000)
    drv.write_desc(0, 0x9000, 16, DESC_F_INDIRECT, 0, table=0x8000)
    drv.write_desc(0, 0x8000, 16, DESC_F_INDIRECT, 0)
    drv.publish(0)
    bad(q, "nested indirect")


@pytest.mark.parametrize("length", [0, 24, 16 * (MAX_INDIRECT + 1)])
def test_indirect_table_length(mem, length) -> None:
    drv, q = queue(mem)
    drv.write_desc(0, 0x8000, length, DESC_F_INDIRECT, 0)  # all of it zeroed RAM, readable
    drv.publish(0)
    bad(q, "indirect table length")


def test_indirect_table_must_lie_in_ram(mem) -> None:
    drv, q = queue(mem)
    drv.write_desc(0, RAM - 16, 32, DESC_F_INDIRECT, 0)
    drv.publish(0)
    bad(q, "indirect descriptor table")


def test_rings_unmapped_after_activation_give_queue_errors() -> None:
    ram = RAMBlock.allocate("dimm", MiB)
    root = MemoryRegion.container("sys", 1 << 32)
    dimm = MemoryRegion.ram_region("dimm", ram)
    root.add_subregion(0, dimm)
    space = AddressSpace("sys", root)
    space.commit()
    m = GuestMemory(space)
    drv, q = DriverQueue(m, RING, 8), SplitQueue(m, 8)
    drv.attach(q)
    drv.add([(DATA, 4)], [(DATA + 8, 4)])
    chain = q.pop()
    root.del_subregion(dimm)  # the RAM goes away under an active queue and a popped chain
    space.commit()
    for op in (lambda: q.read(chain), lambda: q.write(chain, b"x"), lambda: q.push(chain, 0), q.pop,
               q.has_available, q.should_notify, lambda: q.set_notification(True)):
        with pytest.raises(VirtQueueError):
            op()


def blocks(n: int) -> tuple[GuestMemory, AddressSpace, MemoryRegion, list[RAMBlock]]:
    """``n`` RAM blocks of 1 MiB back to back from 0: one guest range, ``n`` RAM ranges."""
    rams = [RAMBlock.allocate(f"b{i}", MiB) for i in range(n)]
    root = MemoryRegion.container("sys", 1 << 32)
    for i, ram in enumerate(rams):
        root.add_subregion(i * MiB, MemoryRegion.ram_region(f"b{i}", ram))
    space = AddressSpace("sys", root)
    space.commit()
    return GuestMemory(space), space, root, rams


@pytest.mark.parametrize("ring", [MiB - 0x80, MiB - 0x110, MiB - 0x120])  # desc, avail or used ring straddles
# (the data buffers straddle 2 MiB and the indirect table 3 MiB)
def test_rings_and_buffers_across_ram_blocks(ring) -> None:
    m, _space, _root, (_b0, b1, b2, _b3) = blocks(4)
    drv, q = DriverQueue(m, ring, 16, event_idx=True), SplitQueue(m, 16)
    drv.attach(q)
    edge = 2 * MiB
    m.write(edge - 4, b"abcdefgh")
    for _ in range(3):
        head = drv.add([(edge - 4, 8)], [(edge + 0xFE, 4), (edge + 0x104, 4)], indirect_at=3 * MiB - 24)
        chain = q.pop()
        assert chain.head == head and q.read(chain) == b"abcdefgh"
        assert q.write(chain, b"WXYZ!!!!") == 8
        drv.set_used_event(drv.last_used)  # the driver wants an interrupt for this one
        q.push(chain, 8)
        assert q.should_notify()
        assert drv.get_used() == [(head, 8)] and q.pop() is None
    assert m.read(edge + 0xFE, 4) == b"WXYZ" and m.read(edge + 0x104, 4) == b"!!!!"
    b1.take_vmm_dirty()
    b2.take_vmm_dirty()
    drv.add([], [(edge - 2, 4), (edge + 2, 4)])
    chain = q.pop()
    views = q.buffers(chain, True)
    assert [len(v) for v in views] == [2, 2, 4]  # a buffer across two RAM ranges is two views
    for v in views:
        v[:] = b"\x00" * len(v)
    q.mark_written(chain, 8)
    assert b1.take_vmm_dirty()[-1] and b2.take_vmm_dirty()[0]
    assert m.read(edge - 4, 10) == b"ab" + bytes(8)


def test_buffers_views_and_mark_dirty(mem, machine) -> None:
    _m, ram = machine
    drv, q = queue(mem)
    mem.write(DATA, b"0123456789")
    drv.add([(DATA, 4), (DATA + 4, 6)], [(DATA + 0x1000, 8), (DATA + 0x1008, 8), (DATA + 0x3000, 16)])
    chain = q.pop()
    assert [bytes(v) for v in q.buffers(chain, False)] == [b"0123", b"456789"]
    assert [bytes(v) for v in q.buffers(chain, False, 2, 5)] == [b"23", b"456"]
    assert [bytes(v) for v in q.buffers(chain, False, 4, 100)] == [b"456789"]
    assert [bytes(v) for v in q.buffers(chain, False, 5, 0)] == [] == q.buffers(chain, False, 11)
    for off in range(12):
        for n in range(12):
            assert b"".join(q.buffers(chain, False, off, n)) == b"0123456789"[off:off + n]
    views = q.buffers(chain, True, 4, 27)
    assert [len(v) for v in views] == [4, 8, 15]
    ram.take_vmm_dirty()
    views[2][:4] = b"data"
    q.mark_written(chain, 16)
    dirty = np.flatnonzero(ram.take_vmm_dirty())
    assert list(dirty) == [(DATA + 0x1000) >> 12]  # only what was said to be written: 16 bytes in one page
    q.mark_written(chain, 32)
    assert list(np.flatnonzero(ram.take_vmm_dirty())) == [(DATA + 0x1000) >> 12, (DATA + 0x3000) >> 12]
    with pytest.raises(ValueError):
        q.buffers(chain, True, -1)
    q.push(chain, 32)
    assert (RING + 16 * 16 + 6 + 2 * 16 + 3) // 4 * 4 >> 12 in np.flatnonzero(ram.take_vmm_dirty())  # used ring


def test_rings_follow_the_memory_map() -> None:
    """The ring views are made for one FlatView: when RAM moves, the queue sees the RAM now at its addresses."""
    m, space, root, (lo, hi) = blocks(2)
    drv, q = DriverQueue(m, 0x1000, 8), SplitQueue(m, 8)
    drv.attach(q)
    drv.add([(0x4000, 4)], [])
    q.push(q.pop(), 0)
    assert drv.get_used()
    # Swap the two blocks: the same guest addresses now show the other block, empty rings included.
    for region in list(root.subregions):
        root.del_subregion(region.region)
    root.add_subregion(0, MemoryRegion.ram_region("b1", hi))
    root.add_subregion(MiB, MemoryRegion.ram_region("b0", lo))
    space.commit()
    avail, used = 0x1000 + 16 * 8, (0x1000 + 16 * 8 + 6 + 2 * 8 + 3) // 4 * 4
    hi.mv[0x1000 + 16 * 3:0x1000 + 16 * 4] = struct.pack("<QIHH", 0x5000, 4, 0, 0)  # a chain only hi has
    hi.mv[avail + 4 + 2:avail + 8] = struct.pack("<H", 3)
    hi.mv[avail + 2:avail + 4] = struct.pack("<H", 2)
    chain = q.pop()
    assert chain.head == 3 and chain.readable == [(0x5000, 4)] and q.pop() is None
    q.push_failed(5)  # the used ring the device writes is hi's too; lo's stays as it was
    assert struct.unpack_from("<H", hi.mv, used + 2)[0] == 2 and struct.unpack_from("<II", hi.mv, used + 12) == (5, 0)
    assert struct.unpack_from("<H", lo.mv, used + 2)[0] == 1


def test_long_linear_indirect_tables_give_what_the_walk_gives(mem) -> None:
    """A long indirect table laid out as Linux lays them out is checked whole; whatever that check
    decides, the chain (or the error) must be the one the entry-by-entry walk gives for the same
    buffers in a shuffled table, which the whole-table check cannot take."""
    rng = random.Random(0xB1C)
    drv, q = queue(mem, size=16)
    tables = (0x200000, 0x210000)
    outcomes = {"chains": 0, "errors": 0}
    for _ in range(400):
        n = rng.randrange(9, 40)
        nr = rng.randrange(n + 1)
        bufs = [(rng.randrange(DATA, RAM - 8192), rng.randrange(1, 8192), 0 if j < nr else DESC_F_WRITE)
                for j in range(n)]
        what, i = rng.randrange(9), rng.randrange(n)  # one way (or none) to leave the Linux layout or the rules
        if what == 8:  # everything in read-only RAM: fine unless a buffer is writable
            bufs = [(ROM + rng.randrange(60 * 1024), rng.randrange(1, 1024), f) for _a, _n, f in bufs]
        a, ln, f = bufs[i]
        bufs[i] = [(a, ln, f), (a, 0, f),                                       # a zero length (skipped)
                   (rng.choice([HOLE, ROM, RAM - 4, 1 << 50]), ln, f),          # not (writable) RAM
                   (a, ln, 0),                                                  # maybe readable after writable
                   (a, 0xFFFFFFFF, f),                                          # past 2**32 bytes in all
                   (a, ln, f | 0x80),                                           # a flag bit nobody knows
                   ((1 << 64) - 16, 64, f),                                     # wraps the address space
                   (ROM, ln, f), bufs[i]][what]                                 # read-only RAM
        slot = list(range(1, n))
        rng.shuffle(slot)
        slot.insert(0, 0)  # the chain starts at entry 0 of either table
        results = []
        for table, at in zip(tables, (list(range(n)), slot)):
            for j, (a, ln, f) in enumerate(bufs):  # table 0: entry j links to j + 1; table 1: shuffled
                last = j == n - 1
                drv.write_desc(at[j], a, ln, f | (0 if last else DESC_F_NEXT), 0 if last else at[j + 1], table=table)
            drv.write_desc(0, table, 16 * n, DESC_F_INDIRECT, 0)
            drv.publish(0)
            try:
                c = q.pop()
                results.append((c.readable, c.writable, c.readable_len, c.writable_len))
                q.push(c, 0)
            except VirtQueueError as exc:
                results.append(str(exc))
                q.push_failed(0)
        assert results[0] == results[1], (what, bufs)
        outcomes["errors" if isinstance(results[0], str) else "chains"] += 1
    assert outcomes["chains"] > 100 and outcomes["errors"] > 100, outcomes


@st.composite
def linux_tables(draw):
    """Buffers for a Linux-shaped indirect table (some of them neighbours in RAM, which views may join),
    and pieces (offset, length) of its readable and writable bytes to view and mark."""
    n = draw(st.integers(9, 40))
    nr = draw(st.integers(0, n))
    bufs, addr = [], None
    for _ in range(n):
        length = draw(st.sampled_from([1, 16, 512, 4096]) | st.integers(1, 9000))
        if addr is None or addr + length > RAM or not draw(st.booleans()):  # the one before's neighbour, or anywhere
            addr = draw(st.integers(DATA, RAM - 9000))
        bufs.append((addr, length))
        addr += length
    piece = st.tuples(st.integers(0, 1 << 19), st.integers(0, 1 << 19) | st.none())
    return bufs, nr, draw(st.lists(piece, min_size=1, max_size=6))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=linux_tables())
def test_whole_table_chains_view_and_mark_what_walked_chains_do(machine, case) -> None:
    """A Linux-shaped table's chain keeps its buffers as arrays (views cut, joined and dirty-marked as
    arrays); the same buffers in a shuffled table are walked into lists. Every piece must view the
    same guest bytes and mark the same pages dirty either way."""
    mem, ram = machine
    bufs, nr, pieces = case
    ram.array[DATA:] = np.arange(RAM - DATA, dtype=np.uint32).astype(np.uint8) ^ (np.arange(RAM - DATA) >> 8 & 0xFF)
    drv, q = queue(mem, size=16)
    n = len(bufs)
    slot = list(range(1, n))
    random.Random(n).shuffle(slot)
    slot.insert(0, 0)
    chains = []
    for table, at in ((0x200000, list(range(n))), (0x210000, slot)):
        for j, (a, ln) in enumerate(bufs):
            last = j == n - 1
            f = 0 if j < nr else DESC_F_WRITE
            drv.write_desc(at[j], a, ln, f | (0 if last else DESC_F_NEXT), 0 if last else at[j + 1], table=table)
        drv.write_desc(0, table, 16 * n, DESC_F_INDIRECT, 0)
        drv.publish(0)
        chains.append(q.pop())
        q.push_failed(0)
    whole, walked = chains
    assert whole.vec is not None and walked.vec is None
    assert (whole.readable, whole.writable) == (walked.readable, walked.writable) == (
        [b for b in bufs[:nr]], [b for b in bufs[nr:]])
    for offset, length in pieces:
        for write in (False, True):
            got = [b"".join(bytes(v) for v in q.buffers(c, write, offset, length)) for c in chains]
            assert got[0] == got[1]
        marked = []
        for c in chains:
            ram.vmm_dirty[:] = bytes(len(ram.vmm_dirty))
            q.mark_written(c, 1 << 20 if length is None else length, offset)
            marked.append(bytes(ram.vmm_dirty))
        assert marked[0] == marked[1]


# ---- state ------------------------------------------------------------------------------------------

def test_save_validate_restore(mem) -> None:
    drv, q = queue(mem, event_idx=True)
    for _ in range(3):
        drv.add([(DATA, 1)], [])
    q.push(q.pop(), 0)
    q.should_notify()
    state = q.save()
    q2 = SplitQueue(mem, 256)
    before = q2.save()
    q2.validate(state)
    assert q2.save() == before  # validate changes nothing
    q2.restore(state)
    assert q2.save() == state
    assert [q2.pop().head, q2.pop().head, q2.pop()] == [1, 2, None]


@pytest.mark.parametrize("change", [{"size": 24}, {"desc_addr": RING + 8}, {"next_avail": 65536},
                                    {"ready": 1}, {"used_addr": -4}, {"extra": 0}, {"size": 512}])
def test_restore_refuses_bad_state_and_changes_nothing(mem, change) -> None:
    _, q = queue(mem)
    state = {**q.save(), **change}
    before = q.save()
    with pytest.raises(DeviceStateError):
        q.restore(state)
    assert q.save() == before


# ---- fuzz --------------------------------------------------------------------------------------------

FUZZ_RAM = 64 * 1024


def test_fuzz_random_rings_never_escape_or_write_outside_the_drivers_buffers() -> None:
    """Random descriptor tables, indirect tables and avail rings: only VirtQueueError escapes, and the
    device writes nothing but the used ring and buffers some descriptor marked writable."""
    mem, ram = guest_memory(FUZZ_RAM, FUZZ_RAM, 4096)
    rng = random.Random(0x5EED)
    outcomes = {"chains": 0, "errors": 0}

    def rand_addr() -> int:
        r = rng.random()
        if r < 0.85:
            return rng.randrange(FUZZ_RAM)
        if r < 0.92:
            return FUZZ_RAM + rng.randrange(4096)           # read-only
        return rng.choice([FUZZ_RAM + 4096, 1 << 40, (1 << 64) - rng.randrange(1, 64), rng.randrange(1 << 64)])

    def rand_len() -> int:
        r = rng.random()
        return rng.randrange(64) if r < 0.8 else rng.choice([0, 4096, FUZZ_RAM, 1 << 31, (1 << 32) - 1])

    def rand_desc(entries: int) -> tuple[int, int, int, int]:
        flags = rng.choice([0, DESC_F_NEXT, DESC_F_WRITE, DESC_F_WRITE | DESC_F_NEXT] * 4
                           + [DESC_F_INDIRECT, DESC_F_INDIRECT | DESC_F_NEXT, rng.randrange(1 << 16)])
        nxt = rng.randrange(entries + 2) if rng.random() < 0.95 else rng.randrange(1 << 16)
        return rand_addr(), rand_len(), flags, nxt

    for case in range(5000):
        ram.array[:] = np.frombuffer(rng.randbytes(FUZZ_RAM), np.uint8)  # random garbage everywhere
        size = rng.choice([1, 2, 4, 8, 16])
        desc, avail, used = 0x0, 0x400, 0x800
        q = SplitQueue(mem, 16)
        q.size, q.desc_addr, q.avail_addr, q.used_addr = size, desc, avail, used
        if rng.random() < 0.05:
            q.size = rng.randrange(1 << 16)
        writable: list[tuple[int, int]] = [(used, 6 + 8 * size)]
        descs = [rand_desc(size) for _ in range(size)]
        tables = []
        for _ in range(rng.randrange(3)):  # indirect tables at random places in RAM
            at = rng.randrange(0x1000, FUZZ_RAM - 512) & ~15
            entries = [rand_desc(rng.randrange(1, 16)) for _ in range(rng.randrange(1, 16))]
            tables.append((at, entries))
            if rng.random() < 0.8:
                i = rng.randrange(size)
                descs[i] = (at, 16 * len(entries), DESC_F_INDIRECT | rng.choice([0, 0, 0, DESC_F_WRITE]), 0)
        for at, entries in tables:
            mem.write(at, b"".join(struct.pack("<QIHH", *d) for d in entries))
            writable += [(a, n) for a, n, f, _ in entries if f & DESC_F_WRITE]
        mem.write(desc, b"".join(struct.pack("<QIHH", *d) for d in descs))
        writable += [(a, n) for a, n, f, _ in descs if f & DESC_F_WRITE]
        ahead = rng.randrange(size + 1) if rng.random() < 0.9 else rng.randrange(1 << 16)
        heads = [rng.randrange(size) if rng.random() < 0.95 else rng.randrange(1 << 16) for _ in range(size)]
        mem.write(avail, struct.pack(f"<HH{size}HH", rng.randrange(2), ahead, *heads, rng.randrange(1 << 16)))
        before = ram.array.copy()
        try:
            q.activate(event_idx=rng.random() < 0.5, indirect=rng.random() < 0.8)
            for _ in range(size + 2):
                try:
                    chain = q.pop()
                except VirtQueueError as exc:
                    outcomes["errors"] += 1
                    if exc.head is not None:
                        q.push_failed(exc.head)
                    continue
                if chain is None:
                    break
                outcomes["chains"] += 1
                q.read(chain, rng.randrange(64), rng.randrange(4096))
                n = q.write(chain, rng.randbytes(rng.randrange(256)), rng.randrange(32))
                q.push(chain, min(n, chain.writable_len))
                q.should_notify()
            q.set_notification(rng.random() < 0.5)
            q.has_available()
        except VirtQueueError:
            outcomes["errors"] += 1
        allowed = np.zeros(FUZZ_RAM, bool)
        for a, n in writable:
            if a < FUZZ_RAM:
                allowed[a:min(FUZZ_RAM, a + n)] = True
        changed = np.flatnonzero((ram.array != before) & ~allowed)
        assert changed.size == 0, f"case {case}: wrote outside the driver's writable buffers at {changed[:8]}"
    assert outcomes["chains"] > 1000 and outcomes["errors"] > 1000, outcomes  # both paths were exercised
