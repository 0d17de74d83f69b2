"""A guest-side driver for the PIIX IDE function in tests: real drives, real guest memory, port I/O as a guest does it.

``IdeHost`` builds a ``PiixIde`` over a GuestMemory (RAM at 0) and images under a
temporary directory, and speaks to it through the same port windows the board maps,
so the tests exercise exactly what a vCPU's IN/OUT reaches.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

from kvmpy.block.drive import Drive, open_drive
from kvmpy.devices.ide import regs as r
from kvmpy.devices.ide.piix import PiixIde
from kvmpy.devices.pci.device import CMD_IO, CMD_MASTER, COMMAND
from kvmpy.memory.address_space import AddressSpace
from kvmpy.memory.guest_memory import GuestMemory
from kvmpy.memory.ramblock import RAMBlock
from kvmpy.memory.region import MemoryRegion

RAM_SIZE = 4 << 20


@dataclass
class RecordingLine:
    """An IrqLine that remembers its level (what the board's KVM line would be told)."""

    level: bool = False
    edges: list[bool] = field(default_factory=list)

    def set_level(self, level: bool) -> None:
        self.level = level
        self.edges.append(level)


def guest_memory() -> GuestMemory:
    root = MemoryRegion.container("sys", 1 << 40)
    root.add_subregion(0, MemoryRegion.ram_region("ram", RAMBlock.allocate("ram", RAM_SIZE)))
    space = AddressSpace("sys", root)
    space.commit()
    return GuestMemory(space)


def make_image(path: Path, size: int, pattern: bool = True) -> Path:
    """A raw image whose sector n starts with n (8 bytes) and is filled with n's low byte."""
    with open(path, "wb") as f:
        f.truncate(size)
        if pattern:
            for n in range(min(size // 512, 2048)):
                f.seek(n * 512)
                f.write(struct.pack("<Q", n) + bytes([n & 0xFF]) * 504)
    return path


class IdeHost:
    def __init__(self) -> None:
        self.memory = guest_memory()
        self.lines = {14: RecordingLine(), 15: RecordingLine()}
        self.ide = PiixIde(self.memory, lambda irq: self.lines[irq])
        self.ports = {}
        for base, size, dev, _ in self.ide.legacy_windows():
            for i in range(size):
                self.ports[base + i] = (dev, i)
        self.ide.config_write(COMMAND, 2, CMD_IO | CMD_MASTER)
        self.drives: list[Drive] = []

    def open(self, path: Path, fmt: str = "raw", readonly: bool = False) -> Drive:
        d = open_drive(path, fmt, id=f"d{len(self.drives)}", readonly=readonly, locking=False)
        self.drives.append(d)
        return d

    def close(self) -> None:
        for d in self.drives:
            d.close()

    # port I/O
    def inb(self, port: int, size: int = 1) -> int:
        dev, off = self.ports[port]
        return dev.read(off, size)

    def outb(self, port: int, value: int, size: int = 1) -> None:
        dev, off = self.ports[port]
        dev.write(off, size, value)

    def bm_out(self, offset: int, value: int, size: int = 1) -> None:
        self.ide.bm_ports.write(offset, size, value)

    def bm_in(self, offset: int, size: int = 1) -> int:
        return self.ide.bm_ports.read(offset, size)

    # ATA helpers on channel 0 (base 0x1F0) or 1 (0x170)
    @staticmethod
    def base(ch: int) -> int:
        return 0x1F0 if ch == 0 else 0x170

    def status(self, ch: int = 0) -> int:
        return self.inb(self.base(ch) + 7)

    def select(self, unit: int, ch: int = 0, lba: bool = True) -> None:
        self.outb(self.base(ch) + 6, 0xA0 | (0x40 if lba else 0) | (unit << 4))

    def lba28(self, cmd: int, lba: int, count: int, ch: int = 0, unit: int = 0) -> None:
        b = self.base(ch)
        self.outb(b + 6, 0xE0 | (unit << 4) | ((lba >> 24) & 0xF))
        self.outb(b + 2, count & 0xFF)
        self.outb(b + 3, lba & 0xFF)
        self.outb(b + 4, (lba >> 8) & 0xFF)
        self.outb(b + 5, (lba >> 16) & 0xFF)
        self.outb(b + 7, cmd)

    def lba48(self, cmd: int, lba: int, count: int, ch: int = 0, unit: int = 0) -> None:
        b = self.base(ch)
        self.outb(b + 6, 0x40 | (unit << 4))
        for c, lo, mid, hi in ((count >> 8, lba >> 24, lba >> 32, lba >> 40), (count, lba, lba >> 8, lba >> 16)):
            self.outb(b + 2, c & 0xFF)
            self.outb(b + 3, lo & 0xFF)
            self.outb(b + 4, mid & 0xFF)
            self.outb(b + 5, hi & 0xFF)
        self.outb(b + 7, cmd)

    def pio_in(self, nbytes: int, ch: int = 0) -> bytes:
        out = bytearray()
        for _ in range(nbytes // 2):
            out += self.inb(self.base(ch), 2).to_bytes(2, "little")
        return bytes(out)

    def pio_out(self, data: bytes, ch: int = 0) -> None:
        for i in range(0, len(data), 2):
            self.outb(self.base(ch), int.from_bytes(data[i:i + 2], "little"), 2)

    def prd_table(self, table: int, entries: list[tuple[int, int, bool]]) -> None:
        raw = b"".join(struct.pack("<IHH", a, n & 0xFFFF, 0x8000 if eot else 0) for a, n, eot in entries)
        self.memory.write(table, raw)

    def dma(self, ch: int, table: int, to_memory: bool) -> None:
        off = 8 * ch
        self.bm_out(off + 2, 0x06)  # clear error and interrupt
        self.bm_out(off + 4, table, 4)
        self.bm_out(off, 0x09 if to_memory else 0x01)

    def packet(self, cdb: bytes, limit: int = 0xFFFE, dma: bool = False, ch: int = 1, unit: int = 0) -> None:
        b = self.base(ch)
        self.select(unit, ch)
        self.outb(b + 1, 1 if dma else 0)
        self.outb(b + 4, limit & 0xFF)
        self.outb(b + 5, limit >> 8)
        self.outb(b + 7, r.CMD_PACKET)
        assert self.status(ch) & r.ST_DRQ
        self.pio_out(cdb.ljust(12, b"\0"), ch)

    def atapi_read_all(self, ch: int = 1) -> bytes:
        """Collect a PIO data-in reply, DRQ block by DRQ block."""
        b = self.base(ch)
        out = bytearray()
        while self.status(ch) & r.ST_DRQ:
            n = self.inb(b + 4) | (self.inb(b + 5) << 8)
            out += self.pio_in(n, ch)
        return bytes(out)
