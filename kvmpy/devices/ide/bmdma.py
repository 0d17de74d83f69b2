"""One channel's bus-master DMA registers (BAR4) and its physical region descriptor (PRD) table walk.

Registers (offsets within the channel's 8 bytes): 0 command (bit 0 start, bit 3 direction:
set = the device writes guest memory), 2 status (bit 0 active, bits 1 error and 2 interrupt
cleared by writing 1, bits 5-6 "drive DMA capable" kept as written), 4-7 the PRD table address
(dword aligned). A PRD is 8 bytes: a buffer address, a byte count (0 means 64 KiB; bit 0
ignored) and, in bit 31 of the second dword, end of table. As on QEMU the walk never leaves
the 4 KiB the table starts in (at most 512 entries), and every buffer must be guest RAM:
``segments`` raises ``PrdError`` otherwise, which fails the one command, never the VMM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from kvmpy.devices.device import check_keys, int_field

BM_CMD, BM_STATUS, BM_PRD = 0, 2, 4
CMD_START, CMD_TO_MEMORY = 0x01, 0x08
ST_ACTIVE, ST_ERROR, ST_INTR, ST_CAPABLE = 0x01, 0x02, 0x04, 0x60
TABLE_WINDOW = 4096
PRD_SIZE = 8
PRD_EOT = 1 << 31
MAX_SEGMENT = 0x10000


class PrdError(Exception):
    """The PRD table or one of its buffers is not guest RAM."""


class DmaMemory(Protocol):
    """What DMA needs of guest memory (kvmpy.memory.guest_memory.GuestMemory)."""

    def read(self, gpa: int, length: int) -> bytes: ...

    def check(self, gpa: int, length: int, write: bool = False) -> None: ...


@dataclass
class Segments:
    """Where a transfer's bytes go: (address, length) pairs, and whether the table ended with them."""

    parts: list[tuple[int, int]]
    total: int
    table_exhausted: bool  # the EOT entry was consumed (or the 4 KiB window ran out)


class BusMaster:
    """The registers; the channel asks ``segments`` for a transfer's buffers."""

    def __init__(self) -> None:
        self.cmd = 0
        self.status = 0
        self.prd = 0

    def reset(self) -> None:
        self.cmd = self.status = self.prd = 0

    @property
    def started(self) -> bool:
        return bool(self.cmd & CMD_START)

    @property
    def to_memory(self) -> bool:
        return bool(self.cmd & CMD_TO_MEMORY)

    def read(self, offset: int, size: int) -> int:
        regs = bytes((self.cmd, 0, self.status, 0)) + self.prd.to_bytes(4, "little")
        out = 0
        for i in range(size):
            if offset + i < len(regs):
                out |= regs[offset + i] << (8 * i)
        return out

    def write_status(self, value: int) -> None:
        self.status = (self.status & ST_ACTIVE) | (value & ST_CAPABLE) | \
            (self.status & (ST_ERROR | ST_INTR) & ~value)

    def write_prd(self, offset: int, size: int, value: int) -> None:
        raw = bytearray(self.prd.to_bytes(4, "little"))
        for i in range(size):
            if 0 <= offset - BM_PRD + i < 4:
                raw[offset - BM_PRD + i] = (value >> (8 * i)) & 0xFF
        self.prd = int.from_bytes(raw, "little") & ~3

    def segments(self, memory: DmaMemory, nbytes: int) -> Segments:
        """The buffers for ``nbytes`` (fewer when the table runs out first), each checked against RAM."""
        parts: list[tuple[int, int]] = []
        total = 0
        addr = self.prd
        exhausted = False
        while total < nbytes:
            if addr - self.prd >= TABLE_WINDOW:
                exhausted = True
                break
            try:
                entry = memory.read(addr, PRD_SIZE)
            except ValueError as exc:
                raise PrdError(f"PRD table entry at {addr:#x} is not guest RAM") from exc
            addr += PRD_SIZE
            base = int.from_bytes(entry[0:4], "little")
            flags = int.from_bytes(entry[4:8], "little")
            length = (flags & 0xFFFE) or MAX_SEGMENT
            take = min(length, nbytes - total)
            try:
                memory.check(base, take, write=self.to_memory)
            except ValueError as exc:
                raise PrdError(f"PRD buffer [{base:#x}, +{take:#x}) is not guest RAM") from exc
            parts.append((base, take))
            total += take
            if flags & PRD_EOT:
                exhausted = take == length
                break
        else:
            exhausted = False
        return Segments(parts, total, exhausted)

    def save(self) -> dict[str, Any]:
        return {"cmd": self.cmd, "status": self.status, "prd": self.prd}

    @staticmethod
    def validate(state: Any) -> dict[str, int]:
        check_keys(state, {"cmd", "status", "prd"})
        return {"cmd": int_field(state, "cmd", 0, CMD_START | CMD_TO_MEMORY),
                "status": int_field(state, "status", 0, ST_ACTIVE | ST_ERROR | ST_INTR | ST_CAPABLE),
                "prd": int_field(state, "prd", 0, 0xFFFFFFFC)}

    def restore(self, state: dict[str, int]) -> None:
        self.cmd, self.status, self.prd = state["cmd"], state["status"], state["prd"]
