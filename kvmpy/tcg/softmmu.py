"""Software MMU: guest RAM, the data TLBs used by translated code, and the slow paths.

Translated code does a load as ``view[(addr + _tr[addr & keymask]) >> shift]``,
a typed memoryview of RAM indexed through the TLB dict, and takes the slow path
on ``KeyError``.  The TLB maps a virtual page address
to ``ram_offset - vaddr``; the key mask keeps the low alignment bits, so a
misaligned access misses and takes the slow path.  Everything else (page walks,
MMIO, misaligned accesses, pages holding translated code, watched pages such as
HTIF's tohost) goes through ``load``/``store`` here.

The architecture supplies ``translate(vaddr, access) -> (paddr, cacheable)``
raising ``GuestTrap`` on faults, and the cause numbers for access faults.
Self-modifying code: pages that hold translated code never get a write-TLB entry;
a slow-path store to one calls ``on_code_write(page)`` first.

Watchpoints (the target's data triggers): ``set_watchpoints`` names the virtual
pages to watch; they never get a TLB entry, so every access to them (from the
Python tier's and the native tier's inline fast paths alike) comes here, where
``check(vaddr, size, access)`` runs after translation and before the access and
may raise ``GuestTrap``.  Without watchpoints the slow paths pay one test.

Several CPUs share one RAM: each has its own ``SoftMmu`` (its own TLBs and
translate), all built on the same ``ram`` and the same ``code_pages`` set, so a
store by any CPU to a page any of them translated code from takes the slow path.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Callable

from kvmpy.devices.bus import Bus
from kvmpy.tcg.errors import GuestTrap, MachineExit

log = logging.getLogger(__name__)

READ, WRITE, EXEC = 0, 1, 2
PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
MASK64 = (1 << 64) - 1
TLB_LIMIT = 8192

if sys.byteorder != "little":    # the typed views below assume a little-endian host
    raise ImportError("the TCG fallback needs a little-endian host")


@dataclass(frozen=True)
class AccessFaults:
    """Cause numbers the architecture uses for (read, write, exec) access faults."""

    read: int
    write: int
    fetch: int

    def for_access(self, access: int) -> int:
        return (self.read, self.write, self.fetch)[access]


class SoftMmu:
    def __init__(self, ram_base: int, ram_size: int, bus: Bus, faults: AccessFaults,
                 ram: bytearray | None = None, code_pages: set[int] | None = None) -> None:
        """``ram`` and ``code_pages``: another CPU's, to share them (default: new ones)."""
        self.ram_base = ram_base
        self.ram_size = ram_size
        self.ram = bytearray(ram_size) if ram is None else ram
        if len(self.ram) != ram_size:
            raise ValueError(f"softmmu: RAM of {len(self.ram)} bytes for a size of {ram_size}")
        mv = memoryview(self.ram)
        self.views = {
            "_B": mv, "_H": mv.cast("H"), "_I": mv.cast("I"), "_Q": mv.cast("Q"),
            "_b": mv.cast("b"), "_h": mv.cast("h"), "_i": mv.cast("i"), "_q": mv.cast("q"),
        }
        self.bus = bus
        self.faults = faults
        self.tlb_read: dict[int, int] = {}
        self.tlb_write: dict[int, int] = {}
        self.code_pages: set[int] = set() if code_pages is None else code_pages
        self.watched: dict[int, Callable[[int, int, int], None]] = {}  # ppage -> fn(paddr, size, value)
        self.translate: Callable[[int, int], tuple[int, bool]] = lambda v, a: (v, True)
        self.on_code_write: Callable[[int], None] = lambda page: None
        self.watch_vpages: frozenset[int] = frozenset()       # virtual page numbers
        self.watch_check: Callable[[int, int, int], None] = lambda vaddr, size, access: None
        self.stats_slow = 0

    # ---- namespace for generated code ----------------------------------
    def namespace(self) -> dict:
        ns = dict(self.views)
        ns["_tr"] = self.tlb_read          # mutated in place, never rebound
        ns["_tw"] = self.tlb_write
        ns["_ld"] = self.load
        ns["_st"] = self.store
        return ns

    def flush(self) -> None:
        self.tlb_read.clear()
        self.tlb_write.clear()

    # ---- physical access -----------------------------------------------
    def in_ram(self, paddr: int, size: int) -> bool:
        off = paddr - self.ram_base
        return 0 <= off and off + size <= self.ram_size

    def phys_read(self, paddr: int, size: int, access: int = READ) -> int:
        off = paddr - self.ram_base
        if 0 <= off and off + size <= self.ram_size:
            return int.from_bytes(self.ram[off:off + size], "little")
        if self.bus.find(paddr) is None:
            raise GuestTrap(self.faults.for_access(access), paddr)
        return self.bus.read(paddr, size) & ((1 << (8 * size)) - 1)

    def phys_write(self, paddr: int, size: int, value: int) -> None:
        off = paddr - self.ram_base
        if 0 <= off and off + size <= self.ram_size:
            page = paddr >> PAGE_SHIFT
            if page in self.code_pages:
                self.on_code_write(page)
            self.ram[off:off + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
            hook = self.watched.get(page)
            if hook is not None:
                hook(paddr, size, value)
            return
        if self.bus.find(paddr) is None:
            raise GuestTrap(self.faults.write, paddr)
        self.bus.write(paddr, size, value)

    # ---- slow paths called from translated code --------------------------
    def load(self, vaddr: int, size: int, signed: bool, pc: int, back: int) -> int:
        vaddr &= MASK64
        self.stats_slow += 1
        try:
            if vaddr & (size - 1):
                value = self._load_bytes(vaddr, size)
            else:
                paddr, cacheable = self.translate(vaddr, READ)
                if self.watch_vpages:
                    self._watch(vaddr, size, READ)
                value = self.phys_read(paddr, size)
                if cacheable and self.in_ram(paddr, size):
                    self._fill(self.tlb_read, vaddr, paddr)
        except GuestTrap as e:
            e.pc, e.back = pc, back
            raise
        except MachineExit as e:
            e.back = back - 1
            raise
        if signed and value >> (8 * size - 1):
            value = (value - (1 << (8 * size))) & MASK64
        return value

    def store(self, vaddr: int, size: int, value: int, pc: int, back: int) -> None:
        vaddr &= MASK64
        self.stats_slow += 1
        try:
            if vaddr & (size - 1):
                self._store_bytes(vaddr, size, value)
                return
            paddr, cacheable = self.translate(vaddr, WRITE)
            if self.watch_vpages:
                self._watch(vaddr, size, WRITE)
            self.phys_write(paddr, size, value)
            page = paddr >> PAGE_SHIFT
            if (cacheable and self.in_ram(paddr, size) and page not in self.code_pages
                    and page not in self.watched):
                self._fill(self.tlb_write, vaddr, paddr)
        except GuestTrap as e:
            e.pc, e.back = pc, back
            raise
        except MachineExit as e:
            e.back = back - 1          # the store itself completed
            raise

    def _load_bytes(self, vaddr: int, size: int) -> int:
        # Translate every byte first so a fault leaves no partial effect.
        paddrs = [self.translate((vaddr + i) & MASK64, READ)[0] for i in range(size)]
        if self.watch_vpages:
            self._watch(vaddr, size, READ)
        return sum(self.phys_read(p, 1) << (8 * i) for i, p in enumerate(paddrs))

    def _store_bytes(self, vaddr: int, size: int, value: int) -> None:
        paddrs = [self.translate((vaddr + i) & MASK64, WRITE)[0] for i in range(size)]
        if self.watch_vpages:
            self._watch(vaddr, size, WRITE)
        for i, p in enumerate(paddrs):
            self.phys_write(p, 1, value >> (8 * i))

    def _fill(self, tlb: dict[int, int], vaddr: int, paddr: int) -> None:
        if vaddr >> PAGE_SHIFT in self.watch_vpages:
            return
        if len(tlb) >= TLB_LIMIT:
            tlb.clear()
        vpage = vaddr & ~(PAGE_SIZE - 1)
        tlb[vpage] = (paddr & ~(PAGE_SIZE - 1)) - self.ram_base - vpage

    # ---- watchpoints -------------------------------------------------------
    def set_watchpoints(self, ranges: list[tuple[int, int]],
                        check: Callable[[int, int, int], None]) -> None:
        """Send accesses touching the virtual ranges (start, length) to ``check`` (empty: none)."""
        pages: set[int] = set()
        for start, length in ranges:
            pages.update(range(start >> PAGE_SHIFT, ((start + length - 1) >> PAGE_SHIFT) + 1))
        self.watch_vpages = frozenset(pages)
        self.watch_check = check
        self.flush()

    def _watch(self, vaddr: int, size: int, access: int) -> None:
        last = (vaddr + size - 1) & MASK64
        if vaddr >> PAGE_SHIFT in self.watch_vpages or last >> PAGE_SHIFT in self.watch_vpages:
            self.watch_check(vaddr, size, access)

    # ---- code pages ------------------------------------------------------
    def mark_code_page(self, page: int) -> None:
        """Page ``page`` (physical page number) now holds translated code."""
        if page in self.code_pages:
            return
        self.code_pages.add(page)
        self.drop_write_page(page)

    def drop_write_page(self, page: int) -> None:
        """Forget the write-TLB entries onto physical page ``page`` (another CPU translated code there)."""
        target = (page << PAGE_SHIFT) - self.ram_base
        stale = [v for v, d in self.tlb_write.items() if v + d == target]
        for v in stale:
            del self.tlb_write[v]

    def watch_page(self, page: int, hook: Callable[[int, int, int], None]) -> None:
        self.watched[page] = hook
        self.tlb_write.clear()

    def fetch(self, vaddr: int, size: int) -> tuple[int, int]:
        """Instruction fetch of ``size`` bytes: returns (value, physical address)."""
        paddr, _ = self.translate(vaddr & MASK64, EXEC)
        if not self.in_ram(paddr, size):
            raise GuestTrap(self.faults.fetch, vaddr)
        off = paddr - self.ram_base
        return int.from_bytes(self.ram[off:off + size], "little"), paddr
