"""The records the ``script`` guest runs (tests/guests/script.S): a test composes them here and
passes the bytes as the guest's multiboot module (``-initrd FILE``)."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

RECORD = struct.Struct("<4I")
CF8, CFC = 0xCF8, 0xCFC


@dataclass
class Script:
    """Records in order; each method appends one (or a few) and returns nothing."""

    records: list[tuple[int, int, int, int]] = field(default_factory=list)

    def _op(self, op: int, a: int = 0, b: int = 0, c: int = 0) -> None:
        self.records.append((op, a & 0xFFFFFFFF, b & 0xFFFFFFFF, c & 0xFFFFFFFF))

    def store32(self, addr: int, value: int) -> None:
        self._op(1, addr, value)

    def store64(self, addr: int, value: int) -> None:
        self.store32(addr, value)
        self.store32(addr + 4, value >> 32)

    def store16(self, addr: int, value: int) -> None:
        self._op(2, addr, value)

    def store8(self, addr: int, value: int) -> None:
        self._op(3, addr, value)

    def load32(self, addr: int) -> None:
        self._op(4, addr)

    def load16(self, addr: int) -> None:
        self._op(14, addr)

    def load8(self, addr: int) -> None:
        self._op(13, addr)

    def outl(self, port: int, value: int) -> None:
        self._op(5, port, value)

    def inl(self, port: int) -> None:
        self._op(6, port)

    def wait16(self, addr: int, value: int, spins_k: int = 0) -> None:
        """Spin until the u16 at ``addr`` equals ``value`` (``spins_k`` thousand spins at most)."""
        self._op(7, addr, value, spins_k)

    def fill(self, addr: int, length: int, byte: int) -> None:
        self._op(8, addr, length, byte)

    def check(self, addr: int, length: int, byte: int) -> None:
        self._op(9, addr, length, byte)

    def mark(self, value: int) -> None:
        self._op(10, value)

    def write(self, addr: int, data: bytes) -> None:
        """Plain stores of ``data`` (RAM set-up such as descriptor tables), four bytes at a time."""
        data = data + bytes(-len(data) % 4)
        for off in range(0, len(data), 4):
            self.store32(addr + off, int.from_bytes(data[off:off + 4], "little"))

    def pci_write32(self, devfn: int, reg: int, value: int) -> None:
        self.outl(CF8, 0x80000000 | devfn << 8 | reg & 0xFC)
        self.outl(CFC, value)

    def pci_read32(self, devfn: int, reg: int) -> None:
        self.outl(CF8, 0x80000000 | devfn << 8 | reg & 0xFC)
        self.inl(CFC)

    def to_bytes(self) -> bytes:
        return b"".join(RECORD.pack(*r) for r in self.records)
