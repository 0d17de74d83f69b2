"""SiFive CLINT (core-local interruptor): msip, mtimecmp and mtime for one hart.

Register layout (QEMU/SiFive facts): msip at 0x0, mtimecmp at 0x4000, mtime at
0xbff8; 32- and 64-bit accesses.  Time is the hart's ``mtime`` (10 MHz: real time, or
counted instructions under -icount).
"""

from __future__ import annotations

from typing import Any, Callable

MSIP_OFF = 0x0
MTIMECMP_OFF = 0x4000
MTIME_OFF = 0xBFF8
SIZE = 0x10000
MASK64 = (1 << 64) - 1


class Clint:
    def __init__(self, get_time: Callable[[], int], set_time: Callable[[int], None],
                 set_msip: Callable[[bool], None], set_mtip: Callable[[bool], None]) -> None:
        self.get_time = get_time
        self.set_time = set_time
        self.set_msip = set_msip
        self.set_mtip = set_mtip
        self.msip = 0
        self.mtimecmp = 0          # QEMU resets it to 0: MTIP is pending at boot

    @staticmethod
    def _slice(value: int, offset: int, size: int) -> int:
        return (value >> (8 * offset)) & ((1 << (8 * size)) - 1)

    @staticmethod
    def _merge(old: int, offset: int, size: int, value: int) -> int:
        mask = ((1 << (8 * size)) - 1) << (8 * offset)
        return (old & ~mask) | ((value << (8 * offset)) & mask)

    def read(self, offset: int, size: int) -> int:
        if offset < 4:
            return self._slice(self.msip, offset, size)
        if MTIMECMP_OFF <= offset < MTIMECMP_OFF + 8:
            return self._slice(self.mtimecmp, offset - MTIMECMP_OFF, size)
        if MTIME_OFF <= offset < MTIME_OFF + 8:
            return self._slice(self.get_time(), offset - MTIME_OFF, size)
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        if offset < 4:
            self.msip = self._merge(self.msip, offset, size, value) & 1
            self.set_msip(bool(self.msip))
        elif MTIMECMP_OFF <= offset < MTIMECMP_OFF + 8:
            self.mtimecmp = self._merge(self.mtimecmp, offset - MTIMECMP_OFF, size, value) & MASK64
            self.update()
        elif MTIME_OFF <= offset < MTIME_OFF + 8:
            self.set_time(self._merge(self.get_time(), offset - MTIME_OFF, size, value) & MASK64)
            self.update()

    def update(self) -> None:
        self.set_mtip(self.get_time() >= self.mtimecmp)

    # ---- device protocol -------------------------------------------------
    def reset(self) -> None:
        """Power-on state: no software interrupt, mtimecmp 0 (so MTIP is pending at boot, as in QEMU)."""
        self.msip = 0
        self.mtimecmp = 0
        self.set_msip(False)
        self.update()

    def save(self) -> dict[str, Any]:
        return {"msip": self.msip, "mtimecmp": self.mtimecmp}

    def restore(self, state: dict[str, Any]) -> None:
        msip, mtimecmp = int(state["msip"]), int(state["mtimecmp"])
        if msip not in (0, 1) or not 0 <= mtimecmp <= MASK64:
            raise ValueError(f"clint: bad state msip={msip} mtimecmp={mtimecmp:#x}")
        self.msip, self.mtimecmp = msip, mtimecmp
        self.set_msip(bool(msip))
        self.update()
