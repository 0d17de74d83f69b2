"""The split virtqueue (virtio 1.2, 2.7) as a device sees it, with a hostile driver in mind.

A ``SplitQueue`` owns one queue's registers (written by the transport from
the driver's common-configuration accesses), the device's ring cursors
(``next_avail``, ``next_used``) and the interrupt-suppression state. It turns
the driver's descriptor chains into validated ``Chain`` objects and gives
used buffers back.

Guest layout (all little-endian):
- descriptor table at ``desc_addr``, 16-byte aligned, ``size`` entries of
  (u64 addr, u32 len, u16 flags, u16 next), flags NEXT=1, WRITE=2, INDIRECT=4;
- available ring at ``avail_addr``, 2-byte aligned: u16 flags, u16 idx,
  u16 ring[size], u16 used_event;
- used ring at ``used_addr``, 4-byte aligned: u16 flags, u16 idx,
  (u32 id, u32 len) ring[size], u16 avail_event.

Everything the driver controls is checked before it is used, and read once
(no value is fetched twice, so a driver rewriting its rings mid-way cannot
make the device act on something it did not check): the size is a power of
two no larger than the device's maximum; the rings are aligned and lie in
guest RAM; the available index runs ahead of the device by at most ``size``;
every head and ``next`` index is inside its table; a chain visits at most as
many descriptors as its table holds (so loops end); an INDIRECT descriptor
needs the negotiated feature, has no NEXT, is not inside an indirect table,
and names a table of whole descriptors (at most ``MAX_INDIRECT``) in RAM;
no readable buffer follows a writable one; every buffer lies in RAM (writable
ones in writable RAM) with no 64-bit wrap-around; a chain carries at most
2**32 bytes in all (the spec's limit). A violation raises ``VirtQueueError``
(a ValueError); guest-memory errors met later (RAM unplugged under a chain)
are turned into it too, so a device catches one exception type.

Speed: the per-request path touches guest RAM through memoryviews, not
through a guest-memory lookup per access. The three rings are resolved once
into views of their RAM blocks (again whenever the address space commits a
new FlatView, so RAM unplugged under a queue is noticed), and buffers are
checked and viewed against the last RAM range that held one. The checks are
the same ones; anything the fast path cannot settle (a ring or buffer across
two RAM ranges, or not in RAM at all) takes the guest-memory path, which
accepts it or gives the error. A long indirect table laid out as Linux lays
them out (entry i links to i+1, readable entries first) is checked with
whole-table numpy operations and its chain keeps the buffers as arrays
(``Chain.vec``): pieces of it are cut, joined, dirty-marked and handed out as
a host iovec (``host_iov``) without a Python step per buffer; any other
shape is walked entry by entry.

Kicks: with EVENT_IDX the driver kicks only when its avail idx passes the
device's avail_event, so whenever ``pop`` (or ``has_available``) finds the ring
drained it publishes avail_event = ``next_avail`` and looks once more; a device
never has to manage kicks itself (``set_notification`` turns them off for a
batch and back on). Without EVENT_IDX the used ring's NO_NOTIFY flag does it.

Threads: a queue is driven by one device thread at a time (the transport
touches the registers only while the queue is not active, or with the device
stopped); the object itself takes no locks. The two places where the device
and the driver each store one word and then load the other's
(``set_notification`` before re-checking ``has_available``, and ``push``
before ``should_notify`` reads ``used_event``) need a full memory barrier;
it is made by acquiring and releasing a lock, an atomic read-modify-write
on every platform CPython runs on. Stores to the used ring are issued in
program order (the element, then the index), which x86's TSO keeps.
"""

from __future__ import annotations

import struct
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Protocol

from kvmpy.devices.device import DeviceStateError, bool_field, check_keys, int_field
from kvmpy.memory.ramblock import PAGE_SHIFT

if TYPE_CHECKING:
    from kvmpy.memory.address_space import AddressSpace

DESC_F_NEXT = 1
DESC_F_WRITE = 2
DESC_F_INDIRECT = 4
AVAIL_F_NO_INTERRUPT = 1
USED_F_NO_NOTIFY = 1

MAX_QUEUE_SIZE = 32768   # virtio 1.2: Queue Size is at most 32768
MAX_INDIRECT = 65536     # entries in one indirect table (its ``next`` fields are u16)
MAX_CHAIN_BYTES = 1 << 32  # "Drivers MUST NOT add a descriptor chain longer than 2^32 bytes in total"
ADDR_LIMIT = 1 << 64
LINEAR_MIN = 8  # indirect tables longer than this try the whole-table check first (shorter: the walk is as quick)

DESC = struct.Struct("<QIHH")
DESC_DTYPE = [("addr", "<u8"), ("len", "<u4"), ("flags", "<u2"), ("next", "<u2")]  # numpy's view of DESC
USED_ELEM = struct.Struct("<II")
U16 = struct.Struct("<H")
_STATE_KEYS = {"size", "desc_addr", "avail_addr", "used_addr", "ready", "active", "event_idx", "indirect",
               "next_avail", "next_used", "signalled_used", "signalled_valid"}


class VirtQueueError(ValueError):
    """The driver broke the virtqueue rules; ``head`` is the chain's head when it can be given back."""

    def __init__(self, message: str, head: int | None = None) -> None:
        super().__init__(message)
        self.head = head


class GuestRam(Protocol):
    """Guest-physical memory as the queue needs it (``kvmpy.memory.guest_memory.GuestMemory`` is one).

    Each method raises a ValueError for a range that is not (writable) RAM. ``address_space``
    gives the current FlatView, which the fast path maps RAM with.
    """

    address_space: "AddressSpace"

    def read(self, gpa: int, length: int) -> bytes: ...

    def write(self, gpa: int, data: Any) -> None: ...

    def check(self, gpa: int, length: int, write: bool = False) -> None: ...

    def buffers(self, gpa: int, length: int, write: bool = False) -> list[memoryview]: ...

    def mark_dirty(self, gpa: int, length: int) -> None: ...


class Chain:
    """One validated descriptor chain: the driver's buffers, readable ones first.

    ``readable`` and ``writable`` list them as (gpa, len), driver -> device and device -> driver.
    ``ram`` is (FlatView, RAM range) when every buffer lay in that one range as the chain was
    checked: the queue's fast path for buffer views, while that FlatView is the address space's.
    ``vec`` holds a Linux-shaped indirect table's buffers as numpy int64 arrays (addresses,
    lengths, and how many of them, from the first, are readable), for whole-array work on
    hundreds of buffers; the lists are then made from it only when someone asks for them.
    """

    __slots__ = ("head", "_readable", "_writable", "readable_len", "writable_len", "ram", "vec", "_runs")

    def __init__(self, head: int, readable: list[tuple[int, int]] | None = None,
                 writable: list[tuple[int, int]] | None = None, readable_len: int = 0, writable_len: int = 0,
                 ram: tuple[Any, Any] | None = None, vec: tuple[Any, Any, int] | None = None) -> None:
        self.head = head
        self._readable = [] if readable is None and vec is None else readable
        self._writable = [] if writable is None and vec is None else writable
        self.readable_len, self.writable_len = readable_len, writable_len
        self.ram, self.vec = ram, vec
        self._runs: tuple[tuple[bool, int, int, int], tuple[Any, Any]] | None = None

    def runs(self, write: bool, offset: int, end: int, delta: int) -> tuple[Any, Any]:
        """``_vec_runs`` of this chain's ``vec``, the last answer kept: a read's data is viewed (or handed out
        as an iovec) and then marked dirty, the same piece twice. The arrays are shared: do not change them."""
        key = (write, offset, end, delta)
        last = self._runs
        if last is not None and last[0] == key:
            return last[1]
        have = self.writable_len if write else self.readable_len
        runs = _vec_runs(self.vec, write, offset, end, have, delta)  # type: ignore[arg-type]
        self._runs = (key, runs)
        return runs

    def set_vec(self, addrs: Any, lens: Any, n_readable: int) -> None:
        """Hold the buffers as arrays (``vec``); the lists are made from them when asked for."""
        self.vec = (addrs, lens, n_readable)
        self._readable = self._writable = None
        self._runs = None

    def _side(self, write: bool) -> list[tuple[int, int]]:
        addrs, lens, nr = self.vec  # type: ignore[misc]
        part = slice(nr, None) if write else slice(0, nr)
        bufs = list(zip(addrs[part].tolist(), lens[part].tolist()))
        if write:
            self._writable = bufs
        else:
            self._readable = bufs
        return bufs

    @property
    def readable(self) -> list[tuple[int, int]]:
        return self._side(False) if self._readable is None else self._readable

    @property
    def writable(self) -> list[tuple[int, int]]:
        return self._side(True) if self._writable is None else self._writable

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Chain):
            return NotImplemented
        return (self.head, self.readable, self.writable, self.readable_len, self.writable_len) == \
            (other.head, other.readable, other.writable, other.readable_len, other.writable_len)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"Chain(head={self.head}, readable={self.readable}, writable={self.writable}, "
                f"readable_len={self.readable_len}, writable_len={self.writable_len})")


def need_event(event: int, new: int, old: int) -> bool:
    """virtio's vring_need_event: did the index moving from ``old`` to ``new`` pass ``event``? (mod 2**16)."""
    return (new - event - 1) & 0xFFFF < (new - old) & 0xFFFF


def _find(bufs: list[tuple[int, int]], total: int, pos: int) -> tuple[int, int]:
    """(i, start): buffer ``i`` of ``bufs`` (``total`` bytes, none empty) holds byte ``pos`` and begins at byte
    ``start``; walks from whichever end of the list is nearer, so a byte near either end costs little."""
    if 2 * pos < total:
        i, start = 0, 0
        while start + bufs[i][1] <= pos:
            start += bufs[i][1]
            i += 1
        return i, start
    i, start = len(bufs) - 1, total - bufs[-1][1]
    while start > pos:
        i -= 1
        start -= bufs[i][1]
    return i, start


def _cut(bufs: list[tuple[int, int]], total: int, offset: int, end: int) -> list[tuple[int, int]]:
    """``bufs`` (``total`` bytes, no empty one) trimmed to bytes [offset, end) of their concatenation,
    0 <= offset, end <= total.

    Costs the buffers between each cut and the nearer end of the list, not the ones kept whole: a
    request's header read from the front, its status byte at the back, or its data between the two.
    """
    if offset >= end:
        return []
    if offset == 0 and end == total:
        return bufs
    i, si = _find(bufs, total, offset)
    j, sj = _find(bufs, total, end - 1)
    if i == j:
        return [(bufs[i][0] + offset - si, end - offset)]
    out = bufs[i:j + 1]
    if offset > si:
        gpa, n = out[0]
        out[0] = (gpa + offset - si, n - (offset - si))
    gpa, n = out[-1]
    if end - sj < n:
        out[-1] = (gpa, end - sj)
    return out


def _vec_edge(vec: tuple[Any, Any, int], write: bool, offset: int, end: int, have: int) -> tuple[int, int] | None:
    """[start, end) guest addresses of bytes [offset, end) (offset < end) of the readable or writable buffers
    in ``vec`` (``have`` bytes in all) when they lie in its first or its last buffer, else None."""
    addrs, lens, nr = vec
    first, last = (nr, len(addrs) - 1) if write else (0, nr - 1)
    n = int(lens[first])
    if end <= n:
        gpa = int(addrs[first])
        return gpa + offset, gpa + end
    n = int(lens[last])
    if offset >= have - n:
        gpa = int(addrs[last]) - (have - n)
        return gpa + offset, gpa + end
    return None


def _vec_runs(vec: tuple[Any, Any, int], write: bool, offset: int, end: int, have: int,
              delta: int) -> tuple[Any, Any]:
    """Bytes [offset, end) (offset < end) of the readable or writable (``write``) buffers in ``vec`` (see
    ``Chain``; ``have`` bytes in all), as the numpy arrays (starts, ends) of their runs in a RAM block:
    each address plus ``delta``, neighbours in the block joined into one run."""
    import numpy as np

    addrs, lens, nr = vec
    a, n = (addrs[nr:], lens[nr:]) if write else (addrs[:nr], lens[:nr])
    if offset or end < have:  # a piece: cut at the buffers holding its first and last byte
        cum = np.cumsum(n)
        i, j = np.searchsorted(cum, (offset, end - 1), side="right").tolist()
        a, n = a[i:j + 1] + delta, n[i:j + 1].copy()
        skip, drop = offset - (int(cum[i]) - int(n[0])), int(cum[j]) - end
        a[0] += skip
        n[0] -= skip
        n[-1] -= drop
    else:
        a = a + delta
    e = a + n
    if len(a) > 1:
        joined = np.flatnonzero(a[1:] == e[:-1])
        if len(joined):
            keep = np.ones(len(a), dtype=bool)
            keep[joined + 1] = False  # a run goes on where one buffer starts at the previous one's end
            a, e = a[keep], e[np.append(keep[1:], True)]
    return a, e


def _is_pow2(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _spans(bufs: list[tuple[int, int]], offset: int, end: int) -> Iterator[tuple[int, int]]:
    """The (gpa, len) pieces of ``bufs`` that hold bytes [offset, end) of their concatenation."""
    pos = 0
    for gpa, n in bufs:
        if pos >= end:
            return
        if pos + n > offset:
            lo = max(offset - pos, 0)
            yield gpa + lo, min(n, end - pos) - lo
        pos += n


@dataclass(slots=True)
class _Span:
    """One RAM range of a FlatView as the fast path uses it: [lo, hi) maps to ``block.mv[gpa + delta]``."""

    lo: int
    hi: int
    readonly: bool
    block: Any  # kvmpy.memory.ramblock.RAMBlock
    delta: int
    dirty: Any = None  # the block's VMM dirty bitmap (a byte per page) as a numpy array, once one is wanted

    def dirty_pages(self) -> Any:
        if self.dirty is None:
            import numpy as np

            self.dirty = np.frombuffer(self.block.vmm_dirty, dtype=np.uint8)
        return self.dirty


class RamMap:
    """Views of guest RAM for one queue, valid for one FlatView of its address space.

    ``view`` gives a memoryview of [gpa, gpa+n) when that lies in one RAM range (and,
    with ``write``, a writable one), or None: the caller then takes the guest-memory
    path. It remembers the last range that answered, so a chain's buffers (which lie
    in one big RAM range nearly always) cost a comparison each, not a lookup.
    ``flatview`` is the FlatView it maps; its owner calls ``refresh`` once the
    address space's ``flatview`` is another (a commit changed the memory map).
    """

    def __init__(self, memory: GuestRam) -> None:
        self.space = memory.address_space
        self.flatview: Any = None
        self._last: _Span | None = None

    def refresh(self) -> None:
        self.flatview = self.space.flatview
        self._last = None

    def span(self, gpa: int, n: int) -> _Span | None:
        s = self._last
        if s is not None and s.lo <= gpa and gpa + n <= s.hi:
            return s
        r = self.flatview.lookup(gpa) if gpa >= 0 and n >= 0 else None
        if r is None or not r.is_ram or gpa + n > r.end:
            return None
        s = self._last = _Span(r.addr, r.end, r.region.readonly, r.region.ram, r.ram_offset - r.addr)
        return s

    def view(self, gpa: int, n: int, write: bool) -> memoryview | None:
        s = self.span(gpa, n)
        if s is None or write and s.readonly:
            return None
        off = gpa + s.delta
        return s.block.mv[off:off + n]


class SplitQueue:
    """One split virtqueue; see the module docstring for the rules it enforces."""

    def __init__(self, memory: GuestRam, max_size: int) -> None:
        if not _is_pow2(max_size) or max_size > MAX_QUEUE_SIZE:
            raise ValueError(f"queue max size must be a power of two <= {MAX_QUEUE_SIZE}, not {max_size}")
        self.memory = memory
        self.max_size = max_size
        self._fence = threading.Lock()
        self._ram = RamMap(memory)
        self.reset()

    # ---- life cycle -------------------------------------------------------------------------

    def reset(self) -> None:
        """Registers and cursors back to their power-on values (the driver wrote status 0)."""
        self.size = self.max_size
        self.desc_addr = 0
        self.avail_addr = 0
        self.used_addr = 0
        self.ready = False
        self.active = False
        self.event_idx = False
        self.indirect = False
        self.next_avail = 0
        self.next_used = 0
        self.signalled_used = 0
        self.signalled_valid = False
        self.notify = True  # the device wants kicks (set_notification)
        self._forget_avail()
        self._unmap_rings()

    def _unmap_rings(self) -> None:
        """Forget the ring views (and the FlatView they were made for): the next access maps them again."""
        self._ram.flatview = None
        self._avail_event: int | None = None  # the avail_event we last stored and fenced (None: not known)
        self._desc_v: memoryview | None = None
        self._avail_v: memoryview | None = None
        self._used16: memoryview | None = None  # the used ring as u16s, and (its first 4 + 8*size bytes) as u32s
        self._used32: memoryview | None = None
        self._used_dirty: tuple[Any, int, int] | None = None  # (RAM block, offset, length) of the used ring

    def _forget_avail(self) -> None:
        self._avail_idx = self.next_avail   # the driver's avail idx as last read
        self._heads: list[int] = []         # avail ring entries read ahead, from _heads_base on
        self._heads_base = self.next_avail

    def activate(self, event_idx: bool, indirect: bool) -> None:
        """Check the registers the driver wrote and start the queue (cursors are left as they are)."""
        self._check_layout(self.size, self.desc_addr, self.avail_addr, self.used_addr)
        size = self.size
        try:
            self.memory.check(self.desc_addr, 16 * size)
            self.memory.check(self.avail_addr, 6 + 2 * size)
            self.memory.check(self.used_addr, 6 + 8 * size, write=True)
        except ValueError as exc:
            raise VirtQueueError(f"virtqueue rings are not in guest RAM: {exc}") from exc
        self.event_idx = event_idx
        self.indirect = indirect
        self.active = True
        self._forget_avail()
        self._unmap_rings()

    def _rings(self) -> None:
        """Map the rings again if the memory map changed since they were (views None: not in one RAM range)."""
        ram = self._ram
        if ram.flatview is ram.space.flatview:  # still the address space's (runs a dozen times a request)
            return
        ram.refresh()
        self._avail_event = None  # stored in RAM that may not be there any more
        size = self.size
        self._desc_v = ram.view(self.desc_addr, 16 * size, False)
        self._avail_v = ram.view(self.avail_addr, 6 + 2 * size, False)
        n = 6 + 8 * size
        used_v = ram.view(self.used_addr, n, True) if sys.byteorder == "little" else None
        # Typed views: an item assignment is one store of the item's width. (struct.pack_into clears its
        # target before it writes the fields, so the used index would read 0 for a moment: a driver that
        # looked then took every slot up to its last index as new — Linux said "id N is not a head!" — and
        # an avail_event read as 0 cost a kick, stalling the queue.)
        self._used16 = None if used_v is None else used_v.cast("H")
        self._used32 = None if used_v is None else used_v[:n - 2].cast("I")
        s = ram.span(self.used_addr, n) if used_v is not None else None
        self._used_dirty = None if s is None else (s.block, self.used_addr + s.delta, n)

    def _check_layout(self, size: int, desc: int, avail: int, used: int) -> None:
        if not _is_pow2(size) or size > self.max_size:
            raise VirtQueueError(f"queue size {size} is not a power of two <= {self.max_size}")
        if desc % 16 or avail % 2 or used % 4:
            raise VirtQueueError(f"virtqueue rings misaligned (desc {desc:#x}/16, avail {avail:#x}/2, "
                                 f"used {used:#x}/4)")
        for what, addr, n in (("descriptor table", desc, 16 * size), ("available ring", avail, 6 + 2 * size),
                              ("used ring", used, 6 + 8 * size)):
            if not 0 <= addr <= ADDR_LIMIT - n:
                raise VirtQueueError(f"{what} at {addr:#x} wraps the address space")

    # ---- guest memory, errors converted -----------------------------------------------------

    def _read(self, gpa: int, length: int, what: str) -> bytes:
        try:
            return self.memory.read(gpa, length)
        except VirtQueueError:
            raise
        except ValueError as exc:
            raise VirtQueueError(f"{what}: {exc}") from exc

    def _write(self, gpa: int, data: Any, what: str) -> None:
        try:
            self.memory.write(gpa, data)
        except VirtQueueError:
            raise
        except ValueError as exc:
            raise VirtQueueError(f"{what}: {exc}") from exc

    def _avail_u16(self, off: int) -> int:
        """The u16 at ``off`` in the available ring (flags 0, idx 2, ring 4.., used_event at the end)."""
        self._rings()
        v = self._avail_v
        if v is not None:
            return U16.unpack_from(v, off)[0]
        return U16.unpack(self._read(self.avail_addr + off, 2, "available ring"))[0]

    def _put_used16(self, off: int, value: int) -> None:
        """Store the u16 ``value`` at ``off`` (even) in the used ring (flags 0, idx 2, avail_event at the end) with
        one store, as the driver loads it; the guest-memory path when the ring is not in one RAM range."""
        self._rings()
        w = self._used16
        if w is None:
            self._write(self.used_addr + off, U16.pack(value), "used ring")
            return
        w[off >> 1] = value
        block, start, n = self._used_dirty  # type: ignore[misc]
        block.mark_dirty(start, n)  # the whole used ring: a page or three, one store

    def _read_avail_idx(self) -> int:
        return self._avail_u16(2)

    def _barrier(self) -> None:
        with self._fence:  # an atomic RMW: orders our earlier stores before our later loads
            pass

    # ---- the available side -----------------------------------------------------------------

    def has_available(self) -> bool:
        """True when the driver has made a chain available that ``pop`` has not taken (or broke the ring)."""
        return self._avail_idx != self.next_avail or self._refresh_avail()

    def _refresh_avail(self) -> bool:
        """Read the driver's avail idx; when nothing is pending, ask for a kick at the next chain first.

        With EVENT_IDX the driver kicks only when its avail idx passes our avail_event,
        so a device that has drained the ring publishes avail_event = next_avail, as
        QEMU does at each pop, then reads the idx again: a chain published in between
        (whose driver saw the old avail_event and did not kick) is found here.
        """
        self._avail_idx = self._read_avail_idx()
        if self._avail_idx == self.next_avail and self.event_idx and self.notify \
                and self._avail_event != self.next_avail:  # (already published and fenced: the read stands)
            self._publish_avail_event(self.next_avail)
            self._avail_idx = self._read_avail_idx()
        return self._avail_idx != self.next_avail

    def _publish_avail_event(self, idx: int) -> None:
        """Store avail_event = ``idx`` (kick me when your idx passes it), then fence before the caller's next load."""
        self._put_used16(4 + 8 * self.size, idx)
        self._avail_event = idx
        self._barrier()

    def pop(self) -> Chain | None:
        """The next available chain, fully checked, or None; VirtQueueError for a broken ring or chain.

        A bad chain is consumed (the ring moves past it); when its head is a valid
        index the error carries it, so the device may give it back with
        ``push_failed`` (or mark itself NEEDS_RESET, as QEMU does).
        """
        pending = (self._avail_idx - self.next_avail) & 0xFFFF
        if pending == 0:
            if not self._refresh_avail():
                return None
            pending = (self._avail_idx - self.next_avail) & 0xFFFF
        if pending > self.size:
            raise VirtQueueError(f"available index {self._avail_idx} is {pending} entries ahead of the device "
                                 f"({self.next_avail}), more than the queue size {self.size}")
        off = (self.next_avail - self._heads_base) & 0xFFFF
        if off >= len(self._heads):
            self._fetch_heads(pending)
            off = 0
        head = self._heads[off]
        self.next_avail = (self.next_avail + 1) & 0xFFFF
        return self._walk(head)

    def _fetch_heads(self, count: int) -> None:
        """Read ``count`` avail ring entries from ``next_avail`` on (one read, two when the ring wraps)."""
        size = self.size
        start = self.next_avail & (size - 1)
        first = min(count, size - start)
        self._rings()
        v = self._avail_v
        if v is not None:
            raw = bytes(v[4 + 2 * start:4 + 2 * (start + first)])
            if first < count:
                raw += bytes(v[4:4 + 2 * (count - first)])
        else:
            ring = self.avail_addr + 4
            raw = self._read(ring + 2 * start, 2 * first, "available ring")
            if first < count:
                raw += self._read(ring, 2 * (count - first), "available ring")
        self._heads = list(struct.unpack(f"<{count}H", raw))
        self._heads_base = self.next_avail

    def undo_pop(self) -> None:
        """Put the most recently popped chain back: the next ``pop`` returns it again."""
        self.next_avail = (self.next_avail - 1) & 0xFFFF
        self._forget_avail()

    def _walk(self, head: int) -> Chain:
        size = self.size
        if head >= size:
            raise VirtQueueError(f"available ring names descriptor {head}, queue size is {size}")
        self._rings()
        ram = self._ram
        desc = self._desc_v
        chain = Chain(head)
        readable, writable = chain.readable, chain.writable
        total = r_len = w_len = 0
        seen_write = False
        one: Any = None     # the RAM range all buffers so far lie in (False: not one)
        lo = hi = 0         # its bounds (an empty range until the first buffer)
        ro = True           # and whether it is read-only
        table: Any = None   # the indirect table (a view of guest RAM, or its bytes) once we are in one
        limit = size        # entries in the current table: both the index bound and the TTL
        visited = 0
        idx = head
        while True:
            if visited == limit:
                raise VirtQueueError(f"descriptor chain from {head} is longer than its table ({limit}): a loop?",
                                     head)
            visited += 1
            if table is not None:
                addr, length, flags, nxt = DESC.unpack_from(table, idx * 16)
            elif desc is not None:
                addr, length, flags, nxt = DESC.unpack_from(desc, idx * 16)
            else:
                addr, length, flags, nxt = DESC.unpack(self._read(self.desc_addr + 16 * idx, 16, "descriptor table"))
            if flags & DESC_F_INDIRECT:
                if not self.indirect:
                    raise VirtQueueError("INDIRECT descriptor without the negotiated INDIRECT_DESC feature", head)
                if table is not None:
                    raise VirtQueueError("nested indirect descriptor table", head)
                if flags & DESC_F_NEXT:
                    raise VirtQueueError("INDIRECT descriptor with NEXT set", head)
                if length == 0 or length % 16 or length > 16 * MAX_INDIRECT:
                    raise VirtQueueError(f"indirect table length {length} is not a multiple of 16 "
                                         f"in [16, {16 * MAX_INDIRECT}]", head)
                if addr + length > ADDR_LIMIT:
                    raise VirtQueueError(f"indirect table at {addr:#x} wraps the address space", head)
                table = ram.view(addr, length, False)
                if table is None:
                    table = self._read(addr, length, "indirect descriptor table")
                limit, visited, idx = length // 16, 0, 0
                if limit > LINEAR_MIN and total == 0 and not seen_write and self._linear_table(chain, table, limit):
                    return chain
                continue
            if flags & DESC_F_WRITE:
                seen_write = True
            elif seen_write:
                raise VirtQueueError("readable descriptor after a writable one", head)
            if length:
                end = addr + length
                if end > ADDR_LIMIT:
                    raise VirtQueueError(f"buffer at {addr:#x}+{length:#x} wraps the address space", head)
                total += length
                if total > MAX_CHAIN_BYTES:
                    raise VirtQueueError(f"descriptor chain from {head} holds more than 2**32 bytes", head)
                if not (lo <= addr and end <= hi and not (seen_write and ro)):  # else: in the range before
                    span = ram.span(addr, length)
                    if span is None or seen_write and span.readonly:
                        try:  # across RAM ranges (fine) or not RAM at all (the error)
                            self.memory.check(addr, length, seen_write)
                        except ValueError as exc:
                            raise VirtQueueError(f"buffer [{addr:#x}, +{length:#x}): {exc}", head) from exc
                        one, lo, hi = False, 0, 0
                    else:
                        one = span if one is None or one is span else False
                        lo, hi, ro = span.lo, span.hi, span.readonly
                if seen_write:
                    writable.append((addr, length))
                    w_len += length
                else:
                    readable.append((addr, length))
                    r_len += length
            if not flags & DESC_F_NEXT:
                chain.readable_len, chain.writable_len = r_len, w_len
                if one:
                    chain.ram = (ram.flatview, one)
                return chain
            if nxt >= limit:
                raise VirtQueueError(f"descriptor {idx} links to {nxt}, its table holds {limit}", head)
            idx = nxt

    def _linear_table(self, chain: Chain, table: Any, n: int) -> bool:
        """Fill ``chain`` from an indirect table of ``n`` entries laid out as Linux lays them out, or return
        False and leave it alone (the walk then goes entry by entry and finds any error).

        Linux's layout: entry i links to i+1, every entry but the last has NEXT, readable ones come first,
        no length is zero, none is INDIRECT. When the table is that and every buffer lies in one RAM range
        (writable if any buffer is written), the walk would accept the same buffers in the same order; this
        checks it with whole-array (numpy) operations on one copy of the table instead of a Python step
        per entry.
        """
        import numpy as np

        # (count_nonzero is the cheapest whole-array test numpy has: several times quicker than any/all)
        cnz = np.count_nonzero
        t = np.frombuffer(bytes(table), dtype=DESC_DTYPE, count=n)  # read once: the driver may rewrite it
        if n > 1 and cnz(t["next"][:-1] != np.arange(1, n, dtype=np.uint16)):
            return False
        flags = t["flags"]
        last = int(flags[-1])
        if last not in (0, DESC_F_WRITE):
            return False
        body = flags[:-1]
        k = cnz(body == DESC_F_NEXT)  # readable entries before the last: they must be the first k
        if cnz(body[:k] == DESC_F_NEXT) != k or cnz(body == DESC_F_NEXT | DESC_F_WRITE) != n - 1 - k \
                or k < n - 1 and not last:  # (then writable ones, up to the last one, which is too)
            return False
        lens = t["len"].astype(np.uint64)
        if cnz(lens) != n:
            return False
        total = int(lens.sum())  # at most 65536 * (2**32 - 1): no uint64 overflow
        if total > MAX_CHAIN_BYTES:
            return False
        addrs = t["addr"]
        ends = addrs + lens
        if cnz(ends < addrs):  # past 2**64 (uint64 wraps): the walk gives the error
            return False
        lo = int(np.minimum.reduce(addrs))
        span = self._ram.span(lo, int(np.maximum.reduce(ends)) - lo)
        if span is None or last == DESC_F_WRITE and span.readonly:
            return False
        nr = n if last == 0 else k
        lens = lens.view(np.int64)  # every buffer is inside a RAM range now: well below 2**63
        chain.readable_len = r_len = int(lens[:nr].sum())
        chain.writable_len = total - r_len
        chain.ram = (self._ram.flatview, span)
        chain.set_vec(addrs.astype(np.int64), lens, nr)
        return True

    # ---- buffers ----------------------------------------------------------------------------

    def buffers(self, chain: Chain, write: bool, offset: int = 0, length: int | None = None) -> list[memoryview]:
        """Views of guest RAM holding bytes [offset, offset+length) of the chain's writable (``write``) or
        readable buffers, for preadv/pwritev straight to or from the guest (guest-contiguous buffers
        joined, except on the fast path). Writers call ``mark_written`` afterwards. VirtQueueError if
        RAM went away."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("offset and length must not be negative")
        have = chain.writable_len if write else chain.readable_len
        end = have if length is None else min(have, offset + length)
        span = self._chain_span(chain)
        if span is not None and chain.vec is not None:  # hundreds of buffers: sliced and joined as arrays
            if offset >= end:
                return []
            mv, d = span.block.mv, span.delta
            one = _vec_edge(chain.vec, write, offset, end, have)
            if one is not None:  # a header or a status byte: in the first or the last buffer
                return [mv[one[0] + d:one[1] + d]]
            starts, ends = chain.runs(write, offset, end, d)
            return [mv[s:e] for s, e in zip(starts.tolist(), ends.tolist())]
        bufs = _cut(chain.writable if write else chain.readable, have, min(offset, end), end)
        if span is not None:  # every buffer in one RAM range, checked in this FlatView: just slice
            mv, d = span.block.mv, span.delta
            return [mv[gpa + d:gpa + d + n] for gpa, n in bufs]
        ram = self._ram
        out: list[memoryview] = []
        run: tuple[Any, int, int] | None = None  # (block, start, end) of the views being joined
        for gpa, n in bufs:
            s = ram.span(gpa, n)
            if s is not None and not (write and s.readonly):
                off = gpa + s.delta
                if run is not None and run[0] is s.block and run[2] == off:
                    run = (run[0], run[1], off + n)
                    continue
                if run is not None:
                    out.append(run[0].mv[run[1]:run[2]])
                run = (s.block, off, off + n)
                continue
            if run is not None:
                out.append(run[0].mv[run[1]:run[2]])
                run = None
            try:
                out.extend(self.memory.buffers(gpa, n, write))
            except ValueError as exc:
                raise VirtQueueError(f"{'writable' if write else 'readable'} buffer: {exc}") from exc
        if run is not None:
            out.append(run[0].mv[run[1]:run[2]])
        return out

    def host_iov(self, chain: Chain, write: bool, offset: int, end: int) -> tuple[Any, memoryview] | None:
        """Bytes [offset, end) (offset < end <= the side's length) of the chain's writable (``write``) or
        readable buffers as host memory, for a preadv/pwritev without a Python object per buffer:
        (a C-contiguous numpy uint64 array of (host address, length) rows, neighbours joined; a view of
        the RAM block that keeps it mapped: hold it until the I/O is over). None unless the chain came
        from a whole-table check (``vec``) in the current memory map; use ``buffers`` then. Writers call
        ``mark_written`` afterwards."""
        span = self._chain_span(chain)
        if span is None or chain.vec is None:
            return None
        import numpy as np

        have = chain.writable_len if write else chain.readable_len
        if not 0 <= offset < end <= have:
            raise ValueError(f"bytes [{offset}, {end}) are not within the chain's {have}")
        block = span.block
        try:
            pin = block.mv[0:0]  # the block's mapping stays while this lives (mmap refuses to close)
        except ValueError as exc:  # released: the RAM went away
            raise VirtQueueError(f"{'writable' if write else 'readable'} buffer: {exc}") from exc
        starts, ends = chain.runs(write, offset, end, span.delta)
        iov = np.empty((len(starts), 2), dtype=np.uint64)
        iov[:, 0] = starts
        iov[:, 0] += block.host_addr
        iov[:, 1] = ends - starts
        return iov, pin

    def _chain_span(self, chain: Chain) -> Any:
        """The RAM range holding all of ``chain``'s buffers if the memory map is still the one it was
        checked in (map the rings again otherwise), else None."""
        self._rings()
        ram = chain.ram
        return ram[1] if ram is not None and ram[0] is self._ram.flatview else None

    def mark_written(self, chain: Chain, length: int, offset: int = 0) -> None:
        """Record (for migration's dirty tracking) that ``length`` writable bytes from ``offset`` were written
        through ``buffers`` views; call it after the writes."""
        have = chain.writable_len
        end = min(have, offset + max(length, 0))
        offset = min(max(offset, 0), end)
        span = self._chain_span(chain)
        if span is not None and chain.vec is not None:  # hundreds of buffers: their pages marked as arrays
            if offset >= end:
                return
            one = _vec_edge(chain.vec, True, offset, end, have)
            if one is not None:  # a status byte: the last buffer
                span.block.mark_dirty(one[0] + span.delta, one[1] - one[0])
                return
            starts, ends = chain.runs(True, offset, end, span.delta)
            first, last = starts >> PAGE_SHIFT, (ends - 1) >> PAGE_SHIFT
            dirty = span.dirty_pages()
            dirty[first] = 1
            longer = first < last  # runs of more than one page (joined ones, or one across a page boundary)
            if longer.any():
                for f, la in zip(first[longer].tolist(), last[longer].tolist()):
                    dirty[f:la + 1] = 1
            return
        bufs = _cut(chain.writable, have, offset, end)
        if span is not None:  # RAMBlock.mark_dirty inlined: a byte per page, a store per one-page buffer
            dirty, d = span.block.vmm_dirty, span.delta
            for gpa, n in bufs:
                first, last = (gpa + d) >> PAGE_SHIFT, (gpa + d + n - 1) >> PAGE_SHIFT
                if first == last:
                    dirty[first] = 1
                else:
                    dirty[first:last + 1] = b"\x01" * (last + 1 - first)
            return
        ram = self._ram
        for gpa, n in bufs:
            s = ram.span(gpa, n)
            if s is not None:
                s.block.mark_dirty(gpa + s.delta, n)
                continue
            try:
                self.memory.mark_dirty(gpa, n)
            except ValueError as exc:
                raise VirtQueueError(f"writable buffer: {exc}") from exc

    def read(self, chain: Chain, offset: int = 0, length: int | None = None) -> bytes:
        """Gather up to ``length`` bytes (default: all) of the readable buffers from ``offset``; shorter at the end."""
        parts = self.buffers(chain, False, offset, length)
        return bytes(parts[0]) if len(parts) == 1 else b"".join(parts)

    def write(self, chain: Chain, data: bytes | bytearray | memoryview, offset: int = 0) -> int:
        """Scatter ``data`` into the writable buffers from ``offset``; returns the bytes written (truncated at the end)."""
        if offset < 0:
            raise ValueError("offset must not be negative")
        src = memoryview(data).cast("B")
        done = 0
        for view in self.buffers(chain, True, offset, len(src)):  # all checked before anything is written
            n = len(view)
            view[:] = src[done:done + n]
            done += n
        self.mark_written(chain, done, offset)
        return done

    # ---- the used side ----------------------------------------------------------------------

    def push(self, chain: Chain, written: int) -> None:
        """Give ``chain`` back to the driver, saying the device wrote ``written`` bytes into it."""
        if not 0 <= written <= chain.writable_len:
            raise ValueError(f"written ({written}) must be within the chain's writable length {chain.writable_len}")
        self.push_failed(chain.head, written)

    def push_many(self, parts: "list[tuple[Chain, int]]") -> None:
        """Give several chains back, each with the bytes written into it, behind one used-index update.

        A driver that reads the index then sees all of them or none: a receive frame spread over
        several buffers must arrive whole (Linux reads ``num_buffers`` from the first and takes the
        rest at once, dropping the frame if they are not there yet).
        """
        for chain, written in parts:
            if not 0 <= written <= chain.writable_len:
                raise ValueError(f"written ({written}) must be within the chain's writable length "
                                 f"{chain.writable_len}")
        self._publish([(chain.head, written) for chain, written in parts])

    def push_failed(self, head: int, written: int = 0) -> None:
        """Give back the chain starting at descriptor ``head`` (e.g. ``VirtQueueError.head``)."""
        if not 0 <= head < self.size:
            raise ValueError(f"head {head} is outside the queue")
        self._publish([(head, written)])

    def _publish(self, elems: list[tuple[int, int]]) -> None:
        """Store used elements (head, written), then the used index once, after them (program order, which
        x86 keeps); every field is one aligned store of its width, and nothing else is stored (see ``_rings``)."""
        used, mask = self.next_used, self.size - 1
        self._rings()
        w32, w16 = self._used32, self._used16
        if w32 is not None and w16 is not None:  # the ring in one RAM range: typed stores into it, one dirty mark
            for head, written in elems:
                i = 1 + 2 * (used & mask)  # the element's u32 index: id, then len
                w32[i] = head
                w32[i + 1] = written
                used = (used + 1) & 0xFFFF
            w16[1] = used
            block, start, n = self._used_dirty  # type: ignore[misc]
            block.mark_dirty(start, n)
        else:
            for head, written in elems:
                self._write(self.used_addr + 4 + 8 * (used & mask), USED_ELEM.pack(head, written), "used ring")
                used = (used + 1) & 0xFFFF
            self._put_used16(2, used)
        self.next_used = used

    def should_notify(self) -> bool:
        """After pushes: does the driver want an interrupt (EVENT_IDX's used_event, or NO_INTERRUPT)?"""
        old, valid = self.signalled_used, self.signalled_valid
        new = self.next_used
        if valid and old == new:
            return False
        self.signalled_used, self.signalled_valid = new, True
        self._barrier()  # our used idx store must be visible before we load the driver's event
        if self.event_idx:
            event = self._avail_u16(4 + 2 * self.size)
            return not valid or need_event(event, new, old)
        return not self._avail_u16(0) & AVAIL_F_NO_INTERRUPT

    def set_notification(self, enabled: bool) -> None:
        """Ask the driver to kick (or not) when it adds buffers; re-check ``has_available`` after enabling.

        Kicks are wanted from activation on; a device that turns them off while it
        works through a batch turns them on again before it waits.
        """
        self.notify = enabled
        if self.event_idx:
            if enabled:
                self._publish_avail_event(self._read_avail_idx())
            return
        self._put_used16(0, 0 if enabled else USED_F_NO_NOTIFY)
        self._barrier()  # the store above before the caller's next load of the avail idx

    # ---- state ------------------------------------------------------------------------------

    def save(self) -> dict[str, Any]:
        return {"size": self.size, "desc_addr": self.desc_addr, "avail_addr": self.avail_addr,
                "used_addr": self.used_addr, "ready": self.ready, "active": self.active,
                "event_idx": self.event_idx, "indirect": self.indirect, "next_avail": self.next_avail,
                "next_used": self.next_used, "signalled_used": self.signalled_used,
                "signalled_valid": self.signalled_valid}

    def validate(self, state: dict[str, Any]) -> dict[str, Any]:
        """Check ``save()`` data without applying it; DeviceStateError if unfit. Returns the checked fields."""
        check_keys(state, _STATE_KEYS)
        out: dict[str, Any] = {}
        for key in ("ready", "active", "event_idx", "indirect", "signalled_valid"):
            out[key] = bool_field(state, key)
        for key in ("desc_addr", "avail_addr", "used_addr"):
            out[key] = int_field(state, key, 0, ADDR_LIMIT - 1)
        for key in ("size", "next_avail", "next_used", "signalled_used"):
            out[key] = int_field(state, key, 0, 0xFFFF)
        if out["active"]:
            try:
                self._check_layout(out["size"], out["desc_addr"], out["avail_addr"], out["used_addr"])
            except VirtQueueError as exc:
                raise DeviceStateError(f"saved virtqueue: {exc}") from exc
        return out

    def restore(self, state: dict[str, Any]) -> None:
        """``validate()``, then apply; a refused state leaves the queue as it was."""
        checked = self.validate(state)
        for key, value in checked.items():
            setattr(self, key, value)
        self.notify = True
        self._forget_avail()
        self._unmap_rings()
